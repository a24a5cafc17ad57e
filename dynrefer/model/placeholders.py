"""Region placeholders in text: ``<region1>``, ``<region2>`` ... name the boxes of a question, and the model
splices each region's tokens in where its placeholder stands. The grammar belongs to the model; the conversation
readers (:mod:`dynrefer.data.conversations`) validate records against it. No PyTorch here."""
from __future__ import annotations

import re
from typing import List, Union

__all__ = ["PLACEHOLDER", "split_placeholders", "answer_text"]

PLACEHOLDER = re.compile(r"<region(\d+)>")


def split_placeholders(text: str) -> List[Union[str, int]]:
    """``"a <region2> b"`` → ``["a ", 2, " b"]``: text pieces and 1-based region numbers, in order."""
    out: List[Union[str, int]] = []
    pos = 0
    for m in PLACEHOLDER.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        out.append(int(m.group(1)))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def answer_text(answer: str) -> str:
    """An answer as the LLM learns and writes it: the model cannot emit region features, so a ``<regionK>`` in a
    gpt turn becomes the words ``region K``."""
    return PLACEHOLDER.sub(lambda m: f"region {m.group(1)}", str(answer))
