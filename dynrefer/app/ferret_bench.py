"""Ferret-Bench (referring description and referring reasoning): questions in, answers out in the format its review
reads.

Question files (apple/ml-ferret, ``ferret/eval/ferret_gpt4_data/<task>/question.jsonl``) hold one JSON object per
line: ``question_id``, ``image`` (a COCO val2017 file name), ``category`` (``refer_desc``, ``refer_reason``,
``ground_conv``) and ``text``, whose regions are written as boxes ``[x1, y1, x2, y2]`` normalised by the image's
width and height (``[0.850, 0.523, 0.898, 0.583]``), as Ferret's own evaluation reads them.

:func:`export_answers` replaces every box by a ``<regionK>`` placeholder bound to that box in pixels, answers with
:meth:`dynrefer.model.DynRefer.chat`, and writes one JSON line per question, in the question file's order (the review
script zips the question, reference-answer and model-answer files line by line)::

    {"question_id", "prompt" (the question as given), "text" (the answer), "answer_id", "model_id",
     "metadata": {"image", "category", "boxes" (pixels)}}

A question without a box is asked about the whole image (the region [0, 0, W, H]).

Scoring is not done here. Ferret-Bench's score is a GPT-4 review: ml-ferret's ``eval_gpt_review_3newclass.py`` shows
GPT-4 the image context (``context.jsonl``), the question, GPT-4's own reference answer (``answer.jsonl``) and the
model's answer with the rules of ``rule.json``, and reports the ratio of the two ratings. That needs the OpenAI API,
which this package does not call; the file written here is what that script takes as the model's entry of
``--answer-list``.
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

if TYPE_CHECKING:
    from dynrefer.model.dynrefer import DynRefer

__all__ = ["read_questions", "question_regions", "export_answers", "FerretBenchError"]

_BOX = re.compile(r"\[([^\[\]]*)\]")


class FerretBenchError(ValueError):
    """A malformed question file or question: the message names the file and the question id."""


def read_questions(path: Union[str, "os.PathLike[str]"]) -> List[Dict[str, Any]]:
    """The questions of a Ferret-Bench ``question.jsonl`` as dicts (``question_id``, ``image``, ``text``, …)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"question file not found: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise FerretBenchError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
            if not isinstance(q, dict):
                raise FerretBenchError(f"{path}: line {n}: expected an object")
            for key in ("question_id", "image", "text"):
                if key not in q:
                    raise FerretBenchError(f"{path}: line {n} (question_id {q.get('question_id')!r}): lacks {key!r}")
            if not isinstance(q["text"], str) or not isinstance(q["image"], str):
                raise FerretBenchError(f"{path}: line {n} (question_id {q['question_id']!r}): 'text' and 'image' "
                                       "must be strings")
            out.append(q)
    return out


def question_regions(text: str, width: float, height: float,
                     box_format: str = "auto") -> Tuple[str, List[List[float]]]:
    """(question with ``<regionK>`` placeholders, [[x1, y1, x2, y2] pixels]) from a Ferret-Bench question.

    ``box_format``: "normalized" (Ferret-Bench: fractions of the width and height), "pixel", or "auto"
    (normalised when all four numbers lie in [0, 1]). Bracketed text that is not four numbers is left alone.
    """
    if box_format not in ("auto", "normalized", "pixel"):
        raise ValueError(f"box_format must be 'auto', 'normalized' or 'pixel', got {box_format!r}")
    boxes: List[List[float]] = []

    def sub(m: "re.Match[str]") -> str:
        try:
            vals = [float(v) for v in m.group(1).split(",")]
        except ValueError:
            return m.group(0)
        if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
            return m.group(0)
        norm = box_format == "normalized" or (box_format == "auto" and all(0.0 <= v <= 1.0 for v in vals))
        if norm:
            vals = [vals[0] * width, vals[1] * height, vals[2] * width, vals[3] * height]
        x1, y1, x2, y2 = (min(max(v, 0.0), lim) for v, lim in zip(vals, (width, height, width, height)))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {m.group(0)} is empty inside the {width}x{height} image")
        boxes.append([x1, y1, x2, y2])
        return f"<region{len(boxes)}>"

    return _BOX.sub(sub, text), boxes


def export_answers(model: DynRefer, questions: Union[str, List[Dict[str, Any]]], image_root: str, out_path: str,
                   model_id: str = "dynrefer", box_format: str = "auto", limit: Optional[int] = None,
                   log: Optional[Callable[[str], None]] = None, **gen: Any) -> List[Dict[str, Any]]:
    """Answer Ferret-Bench questions with ``model.chat`` and write the answer file (see the module docstring).

    ``questions``: a ``question.jsonl`` path or the list :func:`read_questions` returns. ``image_root``: the folder
    of the COCO images. ``gen``: generation settings for :meth:`chat` (``max_new_tokens``, ``num_beams``, …).
    Returns the list of answer records written.
    """
    import numpy as np

    from dynrefer.data.dataset import load_image

    source = os.fspath(questions) if isinstance(questions, (str, os.PathLike)) else "<questions>"
    if isinstance(questions, (str, os.PathLike)):
        questions = read_questions(questions)
    if limit is not None:
        questions = questions[:int(limit)]
    records = []
    for q in questions:
        qid = q["question_id"]
        path = os.path.join(image_root, os.path.basename(q["image"]))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source}: question_id {qid!r}: image not found: {path}")
        image = load_image(path)
        h, w = image.shape[:2]
        try:
            text, boxes = question_regions(q["text"], w, h, box_format)
        except ValueError as e:
            raise FerretBenchError(f"{source}: question_id {qid!r}: {e}") from None
        if not boxes:
            boxes = [[0.0, 0.0, float(w), float(h)]]
        answer = model.chat(image, np.asarray(boxes, np.float32), text, **gen)
        rec = {"question_id": qid, "prompt": q["text"], "text": answer,
               "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"dynrefer/{model_id}/{qid}").hex[:22],
               "model_id": model_id,
               "metadata": {"image": q["image"], "category": q.get("category"),
                            "boxes": [[round(float(v), 2) for v in b] for b in boxes]}}
        records.append(rec)
        if log is not None:
            log(f"[{qid}] {answer}")
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    return records
