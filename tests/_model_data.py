"""Small vocabularies, batches and a builder for the tiny DynRefer model used by tests/test_model_*.py."""
import torch

CAPTIONS = ["the red car", "the white dog", "the man on a horse", "the green tree", "the blue sky", "the old bus"]
TAGS = ["car", "man", "horse", "dog", "tree", "sky", "bus", "red", "white", "green", "blue", "old"]
CLASSES = ["red car", "white dog", "man on a horse", "green tree", "blue sky", "old bus"]
ATTRIBUTES = ["color:red/reddish", "color:white", "color:green", "color:blue", "age:old/aged"]


def build_tiny(seed=0, **overrides):
    from dynrefer.model import DynReferConfig, build_dynrefer

    cfg = DynReferConfig.from_preset("tiny", **overrides)
    return build_dynrefer(cfg, texts=CAPTIONS, tag_list=TAGS, classes=CLASSES, attributes=ATTRIBUTES, seed=seed)


def tag_targets(captions=CAPTIONS):
    t = torch.zeros(len(captions), len(TAGS))
    for i, c in enumerate(captions):
        for j, tag in enumerate(TAGS):
            if tag in c.split():
                t[i, j] = 1
    return t


def batch(model, generator, regions=len(CAPTIONS)):
    """Random normalised views and boxes (a tight box in view 1, growing context in the others)."""
    cfg = model.config
    S, n = cfg.vision.image_size, cfg.num_views
    views = torch.randn(regions, n, 3, S, S, generator=generator)
    boxes = torch.empty(regions, n, 4)
    for v in range(n):
        lo = (torch.rand(regions, 2, generator=generator) * 0.3 * S) / (1 + v)
        hi = S - (torch.rand(regions, 2, generator=generator) * 0.3 * S) / (1 + v)
        boxes[:, v, :2], boxes[:, v, 2:] = lo, hi
    boxes[:, 0] = torch.tensor([0.0, 0.0, S, S])  # the tight view's box fills its frame
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(regions)]
    return {"views": views, "boxes": boxes, "text_output": caps, "tags": tag_targets(caps)}
