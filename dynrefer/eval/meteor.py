"""METEOR 1.5 as pycocoevalcap runs it (reported by DynRefer ×100).

Reference protocol: pycocoevalcap 1.2 ``meteor/meteor.py`` — ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en
-norm``; for each item a ``SCORE ||| ref1 ||| ... ||| hyp`` line returns its sufficient statistics, then one
``EVAL ||| stats1 ||| stats2 ...`` line returns every item's score followed by the corpus score computed from the
aggregated statistics (not the mean of the item scores). We talk to the same jar (found inside the installed
pycocoevalcap package) through the same protocol, so the numbers are the reference's.

One persistent Java process per :class:`Meteor` object (start-up loads the paraphrase table and takes seconds);
reuse the object. Without Java or pycocoevalcap, constructing it raises :class:`JavaUnavailableError`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from typing import Any, Hashable, List, Mapping, Sequence, Tuple

from ._checks import check_caption_sets
from ._resources import JavaUnavailableError, find_java, pycocoevalcap_file

__all__ = ["Meteor", "JavaUnavailableError"]

_NEWLINES = {ord(c): " " for c in "\n\r\x0b\x0c\x85\u2028\u2029"}


class Meteor:
    """``Meteor().compute_score(gts, res) -> (corpus METEOR, [per-item METEOR])`` — pycocoevalcap's interface.

    Also :meth:`segment_scores` for callers (e.g. dense captioning) that only need per-item scores.
    Use as a context manager or call :meth:`close` to stop the Java process.
    """

    def __init__(self, max_memory: str = "2G") -> None:
        java = find_java()
        jar = pycocoevalcap_file("meteor", "meteor-1.5.jar")
        # stderr goes to a file: an unread pipe could fill and block the JVM; the file explains failures.
        self._stderr = tempfile.TemporaryFile()
        self._lock = threading.Lock()
        self._proc: Any = subprocess.Popen(
            [java, "-jar", f"-Xmx{max_memory}", jar, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=os.path.dirname(jar), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    # -- protocol ------------------------------------------------------------------------------------------
    def _error(self, what: str) -> RuntimeError:
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace")[-2000:]
        code = self._proc.poll()
        return RuntimeError(f"METEOR jar {what} (exit status {code}); its stderr:\n{err}")

    def _readline(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            raise self._error("stopped answering")
        return line.decode("utf-8").strip()

    def _write(self, line: str) -> None:
        if self._proc.poll() is not None:
            raise self._error("is not running")
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()

    def _stats(self, hyp: str, refs: Sequence[str]) -> str:
        # Same sanitising as the reference (hypothesis: drop '|||', squeeze double spaces); newlines would break
        # the line protocol, so they become spaces (the reference would hang or mis-align on them).
        hyp = hyp.translate(_NEWLINES).replace("|||", "").replace("  ", " ")
        refs = [r.translate(_NEWLINES) for r in refs]
        self._write(" ||| ".join(("SCORE", " ||| ".join(refs), hyp)))
        return self._readline()

    def _run(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> Tuple[float, List[float]]:
        if not hyps:
            raise ValueError("METEOR: nothing to score")
        with self._lock:
            if self._proc is None:
                raise RuntimeError("this Meteor object has been closed")
            stats = [self._stats(h, r) for h, r in zip(hyps, refs)]
            self._write("EVAL ||| " + " ||| ".join(stats))
            per_item = [float(self._readline()) for _ in stats]
            corpus = float(self._readline())
        return corpus, per_item

    # -- public --------------------------------------------------------------------------------------------
    def method(self) -> str:
        return "METEOR"

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]
                      ) -> Tuple[float, List[float]]:
        ids = check_caption_sets(gts, res)
        return self._run([res[i][0] for i in ids], [list(gts[i]) for i in ids])

    def segment_scores(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> List[float]:
        """Per-item METEOR of ``hyps[i]`` against ``refs[i]`` (a non-empty list of reference strings)."""
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
        if not hyps:
            return []
        return self._run(list(hyps), [list(r) for r in refs])[1]

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.kill()
            proc.wait()
            proc.stdout.close()
            self._stderr.close()

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
