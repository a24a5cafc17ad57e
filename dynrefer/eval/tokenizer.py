"""PTB tokenisation exactly as pycocoevalcap's ``PTBTokenizer`` does it.

Reference protocol: pycocoevalcap 1.2 ``tokenizer/ptbtokenizer.py`` — Stanford CoreNLP 3.4.1's
``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` over one caption per line, then removal of
the punctuation tokens listed in :data:`PUNCTUATIONS`. We run the same jar (found inside the installed
pycocoevalcap package) so the tokens are the reference's by construction.

Two deliberate differences, both on inputs the reference mishandles: every line-breaking character (not only
``\\n``) is replaced by a space before tokenising, because the reference silently mis-aligns all later captions
when one contains e.g. ``\\r``; and the number of output lines is checked, so a mismatch is an error instead of
silently dropped captions.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Dict, Hashable, List, Mapping, Sequence, Union

from ._resources import find_java, pycocoevalcap_file

__all__ = ["PTBTokenizer", "PUNCTUATIONS"]

#: Tokens pycocoevalcap drops after PTB tokenisation.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Characters Java's PTB lexer treats as line ends (any of them would split one caption into two lines).
_LINE_BREAKS = {ord(c): " " for c in "\n\r\x0b\x0c\x85\u2028\u2029"}

Caption = Union[str, Mapping[str, str]]


def _text(c: Caption) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping) and isinstance(c.get("caption"), str):
        return c["caption"]
    raise TypeError(f"a caption must be a str or a dict with a str 'caption' entry, got {c!r}")


class PTBTokenizer:
    """Drop-in equivalent of ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``.

    ``tokenize({id: [caption, ...]})`` returns ``{id: [tokenised caption, ...]}``; a caption is a ``str`` or a
    ``{"caption": str}`` dict (the COCO form pycocoevalcap takes). All captions go through one Java process.
    Raises :class:`JavaUnavailableError` when Java or the CoreNLP jar is missing.
    """

    def __init__(self) -> None:
        self.java = find_java()
        self.jar = pycocoevalcap_file("tokenizer", "stanford-corenlp-3.4.1.jar")

    def tokenize_list(self, captions: Sequence[Caption]) -> List[str]:
        """Tokenise a flat list of captions, preserving order and length."""
        lines = [_text(c).translate(_LINE_BREAKS) for c in captions]
        if not lines:
            return []
        fd, path = tempfile.mkstemp(prefix="dynrefer_ptb_", suffix=".txt")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write("\n".join(lines).encode("utf-8"))
            cmd = [self.java, "-cp", self.jar, "edu.stanford.nlp.process.PTBTokenizer",
                   "-preserveLines", "-lowerCase", path]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        finally:
            os.remove(path)
        if proc.returncode != 0:
            raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')}")
        out = proc.stdout.decode("utf-8").split("\n")
        # The jar ends its output with a newline; pycocoevalcap zips and ignores the trailing empty entry.
        if len(out) == len(lines) + 1 and out[-1] == "":
            out = out[:-1]
        if len(out) != len(lines):
            raise RuntimeError(
                f"PTBTokenizer returned {len(out)} lines for {len(lines)} captions; refusing to mis-align captions"
            )
        return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in out]

    def tokenize(self, captions_for_image: Mapping[Hashable, Sequence[Caption]]) -> Dict[Hashable, List[str]]:
        """Tokenise ``{id: [caption, ...]}`` into ``{id: [tokenised caption, ...]}`` (same ids, same order)."""
        keys: List[Hashable] = []
        flat: List[Caption] = []
        for k, caps in captions_for_image.items():
            if isinstance(caps, (str, bytes)) or not isinstance(caps, Sequence):
                raise TypeError(f"captions for id {k!r} must be a list, got {type(caps).__name__}")
            for c in caps:
                keys.append(k)
                flat.append(c)
        toks = self.tokenize_list(flat)
        result: Dict[Hashable, List[str]] = {k: [] for k in captions_for_image}
        for k, t in zip(keys, toks):
            result[k].append(t)
        return result

