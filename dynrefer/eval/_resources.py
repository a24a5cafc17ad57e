"""Locating the external tools some captioning metrics run: a ``java`` executable and the jars that the
installed ``pycocoevalcap`` package ships (Stanford CoreNLP 3.4.1 for PTB tokenisation, METEOR 1.5).

The jars are found at run time inside the installed package; nothing is copied into this repository.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

__all__ = ["JavaUnavailableError", "find_java", "pycocoevalcap_file", "java_available"]


class JavaUnavailableError(RuntimeError):
    """Raised when a metric needs Java or a pycocoevalcap jar that this machine does not have."""


def find_java() -> str:
    """Return the path of the ``java`` executable (``$JAVA_HOME/bin/java`` first, then ``PATH``)."""
    home = os.environ.get("JAVA_HOME")
    if home:
        cand = os.path.join(home, "bin", "java")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    java = shutil.which("java")
    if java is None:
        raise JavaUnavailableError(
            "this metric runs a Java program (as pycocoevalcap does) but no `java` executable was found on "
            "PATH or in $JAVA_HOME; install a Java runtime >= 8 (e.g. `apt-get install default-jre-headless`)"
        )
    return java


def pycocoevalcap_file(*parts: str) -> str:
    """Absolute path of a file inside the installed ``pycocoevalcap`` package (e.g. ``meteor/meteor-1.5.jar``)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise JavaUnavailableError(
            "this metric uses a jar shipped by pycocoevalcap, which is not installed; "
            "`pip install pycocoevalcap` (or `pip install dynrefer[test]`)"
        )
    for root in spec.submodule_search_locations:
        path = os.path.join(root, *parts)
        if os.path.isfile(path):
            return path
    raise JavaUnavailableError(
        f"pycocoevalcap is installed but {'/'.join(parts)} is missing from it "
        f"(looked in {list(spec.submodule_search_locations)}); reinstall pycocoevalcap"
    )


def java_available(*jar: str) -> bool:
    """True when Java runs here and, if ``jar`` parts are given, that pycocoevalcap file is installed (e.g.
    ``java_available("tokenizer", "stanford-corenlp-3.4.1.jar")`` for PTB tokenisation)."""
    try:
        find_java()
        if jar:
            pycocoevalcap_file(*jar)
        return True
    except JavaUnavailableError:
        return False
