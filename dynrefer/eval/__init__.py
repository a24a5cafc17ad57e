"""Evaluation metrics for the DynRefer benchmarks, in pure Python/NumPy (no PyTorch).

Each metric reproduces its reference implementation (named in its module's docstring):

- :mod:`~dynrefer.eval.tokenizer`, :mod:`~dynrefer.eval.bleu`, :mod:`~dynrefer.eval.cider`,
  :mod:`~dynrefer.eval.meteor` — pycocoevalcap's PTB tokenisation, BLEU-1..4, CIDEr-D and METEOR 1.5
  (same ``compute_score(gts, res)`` interface; tokenisation and METEOR run pycocoevalcap's jars with Java);
- :mod:`~dynrefer.eval.densecap` — densecap's dense captioning mAP as DynRefer computes it, and the rules by
  which the official evaluation ranks boxes (running a model over boxes is :mod:`dynrefer.app.densecap`);
- :mod:`~dynrefer.eval.ovad` — OVAD box-oracle attribute mAP, the annotation loader, DynRefer's prompts;
- :mod:`~dynrefer.eval.recognition` — COCO region recognition accuracy and COCOeval box mAP;
- :mod:`~dynrefer.eval.api` — :func:`evaluate` for all of them and the paper-style :func:`format_report`.
"""

from ._checks import PredictionError
from ._resources import JavaUnavailableError, java_available
from .api import TASKS, caption_metrics, evaluate, format_report
from .bleu import Bleu
from .cider import Cider
from .densecap import RANK_RULES, DenseCapEvaluator, densecap_map, rank_scores
from .meteor import Meteor
from .ovad import OvadAnnotations, load_ovad, max_over_prompts, ovad_ap, ovad_ground_truth, ovad_prompts
from .recognition import coco_box_map, coco_recognition
from .tokenizer import PTBTokenizer

__all__ = [
    "evaluate", "format_report", "caption_metrics", "TASKS", "PredictionError", "JavaUnavailableError",
    "Bleu", "Cider", "Meteor", "PTBTokenizer", "DenseCapEvaluator", "densecap_map",
    "OvadAnnotations", "load_ovad", "ovad_ap", "ovad_prompts", "max_over_prompts",
    "coco_recognition", "coco_box_map",
]
__all__ += ["rank_scores", "RANK_RULES", "ovad_ground_truth", "java_available"]
