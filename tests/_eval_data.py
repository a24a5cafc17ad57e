"""Shared synthetic data for the eval tests: real-looking region captions from a small grammar."""

import random

_ADJ = ["red", "blue", "white", "black", "small", "large", "wooden", "old", "young", "striped", "shiny", "green",
        "tall", "dark", "metal", "brown", "empty", "open", "round", "yellow"]
_NOUN = ["man", "woman", "dog", "cat", "shirt", "table", "car", "tree", "window", "sign", "plate", "bus", "boy",
         "girl", "horse", "building", "street", "chair", "umbrella", "pizza", "clock", "train", "sky", "wall"]
_VERB = ["sitting on", "standing near", "holding", "walking on", "next to", "in front of", "on top of",
         "behind", "parked on", "hanging on", "wearing", "riding"]
_START = ["", "", "a ", "the ", "A ", "The ", "two ", "a pair of "]
_END = ["", "", ".", " .", "!", "...", ","]


def caption(rng: random.Random) -> str:
    kind = rng.random()
    noun = rng.choice(_NOUN)
    if kind < 0.15:
        return rng.choice(_START) + noun                      # very short region phrase
    adjs = " ".join(rng.sample(_ADJ, rng.randint(0, 2)))
    head = (rng.choice(_START) + (adjs + " " if adjs else "") + noun).strip()
    if kind < 0.4:
        return head + rng.choice(_END)
    tail = rng.choice(["a", "the"]) + " " + (rng.choice(_ADJ) + " " if rng.random() < 0.5 else "") + rng.choice(_NOUN)
    text = f"{head} {rng.choice(_VERB)} {tail}"
    if rng.random() < 0.15:
        text += ", and it's " + rng.choice(_ADJ)
    if rng.random() < 0.1:
        text = text.replace(" a ", " a (very) ", 1)
    return text + rng.choice(_END)


def caption_sets(seed: int, n_items: int = 200, max_refs: int = 5):
    """Raw ``gts = {id: [refs]}`` and ``res = {id: [hyp]}``; hypotheses often share words with references."""
    rng = random.Random(seed)
    gts, res = {}, {}
    for i in range(n_items):
        refs = [caption(rng) for _ in range(rng.randint(1, max_refs))]
        if rng.random() < 0.4:  # a near-copy of a reference
            words = rng.choice(refs).split()
            if len(words) > 2 and rng.random() < 0.5:
                del words[rng.randrange(len(words))]
            hyp = " ".join(words)
        else:
            hyp = caption(rng)
        gts[f"img{i}_{rng.randint(0, 9)}"] = refs
        res[list(gts)[-1]] = [hyp]
    return gts, res


def simple_tokenize(sets):
    """Lower-case, strip the punctuation of the grammar: a Java-free stand-in for PTB tokenisation."""
    out = {}
    for k, caps in sets.items():
        out[k] = [" ".join(w for w in c.lower().replace(",", " ").replace("(", " ").replace(")", " ")
                           .replace("!", " ").replace(".", " ").split()) for c in caps]
    return out
