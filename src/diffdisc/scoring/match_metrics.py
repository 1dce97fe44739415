"""Image-text matching metrics: Winoground text/image/group scores, retrieval R@k, bootstrap intervals.

Pure functions of score matrices S[image, caption] (lower = better), so the match task, the probes and the
report share one definition.
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffdiscError


def winoground_scores(S: np.ndarray) -> tuple[bool, bool, bool]:
    """Text, image and group correctness of one 2x2 matrix S[image, caption] (lower = better).

    text: each image prefers its own caption; image: each caption prefers its own image; group: both.
    """
    if S.shape != (2, 2):
        raise DiffdiscError(f"Winoground metrics need 2x2 groups, got {S.shape}")
    text = S[0, 0] < S[0, 1] and S[1, 1] < S[1, 0]
    image = S[0, 0] < S[1, 0] and S[1, 1] < S[0, 1]
    return bool(text), bool(image), bool(text and image)


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (groups resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(v), (n, len(v)))
    means = v[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _summary(v) -> dict:
    lo, hi = bootstrap_ci(np.asarray(v, dtype=np.float64))
    return {"mean": float(np.mean(v)), "ci95": [lo, hi]}


def match_metrics(mats: list[np.ndarray]) -> dict:
    """Winoground text/image/group scores for 2x2 groups; R@1/R@5 (caption retrieval per image and image
    retrieval per caption) for square groups larger than 2; each with a bootstrap 95% interval.

    A one-image group (1 x K: caption 0 is the image's, e.g. cue-conflict's shape vs colour caption) counts
    in the text score: correct when caption 0 scores strictly best, chance 1/K.
    """
    out: dict = {"n_groups": len(mats)}
    w = [winoground_scores(m) for m in mats if m.shape == (2, 2)]
    singles = [m for m in mats if m.shape[0] == 1 and m.shape[1] >= 2]
    if w or singles:
        text = [t for t, _, _ in w] + [bool(m[0, 0] < m[0, 1:].min()) for m in singles]
        out["text"] = _summary(np.array(text, dtype=np.float64))
    if w:
        arr = np.array(w, dtype=np.float64)
        out.update(image=_summary(arr[:, 1]), group=_summary(arr[:, 2]))
    if w or singles:
        chance = np.mean([0.25] * len(w) + [1 / m.shape[1] for m in singles])
        out["chance"] = {"text": float(chance), **({"image": 0.25, "group": 1 / 6} if w else {})}
    big = [m for m in mats if m.shape[0] == m.shape[1] and m.shape[0] > 2]
    if big:
        r = {f"{d}_R@{k}": [] for d in ("text", "image") for k in (1, 5)}
        for m in big:
            n = m.shape[0]
            rank_t = (m < m[np.arange(n), np.arange(n)][:, None]).sum(1)  # captions beating the true one
            rank_i = (m < m[np.arange(n), np.arange(n)][None, :]).sum(0)
            for k in (1, 5):
                r[f"text_R@{k}"] += list(rank_t < k)
                r[f"image_R@{k}"] += list(rank_i < k)
        out.update({k: _summary(v) for k, v in r.items()})
    return out
