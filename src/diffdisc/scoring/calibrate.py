"""Scores -> probabilities and calibration metrics.

p(c | x) = softmax(-score / T). `fit_temperature` picks T by NLL on labelled data; `fit_platt_calls`
fits Clark & Jaini's confidence model sigmoid(a·log(calls) + b) for adaptive runs, where images that
needed more U-Net calls are the hard ones.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from .config import ScoreConfig


def probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
    s = -np.asarray(scores, dtype=np.float64) / temperature
    s = np.where(np.isfinite(s), s, -np.inf)
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def nll(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = probabilities(scores, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """T minimising NLL, searched on log T (scores are mean squared errors, so T is small)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    finite = np.where(np.isfinite(scores), scores, np.nan)
    spread = np.nanstd(finite) or 1.0
    res = optimize.minimize_scalar(
        lambda lt: nll(scores, labels, float(np.exp(lt))),
        bounds=(np.log(spread) - 12, np.log(spread) + 6),
        method="bounded",
    )
    return float(np.exp(res.x))


def fit_platt_calls(calls: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(a, b) of P(correct) = sigmoid(a·log(calls) + b), by logistic-regression NLL."""
    x, y = np.log(np.asarray(calls, dtype=np.float64)), np.asarray(correct, dtype=np.float64)

    def loss(ab):
        z = ab[0] * x + ab[1]
        return float(np.mean(np.logaddexp(0, z) - y * z))

    res = optimize.minimize(loss, x0=np.zeros(2), method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


ECE_BINS = 15  # torchmetrics' default; metrics.json, the report and its bootstrap all use it


def top_label_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int = ECE_BINS, idx: np.ndarray | None = None) -> np.ndarray:
    """Expected calibration error of the predicted class, vectorised over resamples `idx` [B, n] (default: one, all).

    conf = probability given to the prediction, hit = prediction correct. Binning as torchmetrics
    (bucketize right=True over n_bins equal bins; equal to its `binary_calibration_error(conf, hit)`), in
    numpy so a bootstrap costs one pass instead of a torchmetrics call per resample.
    """
    conf, hit = np.asarray(conf, dtype=np.float64), np.asarray(hit, dtype=np.float64)
    b = np.clip(np.searchsorted(np.linspace(0, 1, n_bins + 1), conf, side="right") - 1, 0, n_bins - 1)
    idx = np.arange(len(conf))[None] if idx is None else idx
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    gap = np.bincount(rows * n_bins + b[idx].ravel(), weights=(hit - conf)[idx].ravel(), minlength=len(idx) * n_bins)
    return np.abs(gap.reshape(len(idx), n_bins)).sum(1) / idx.shape[1]


def default_ranking(scores: np.ndarray) -> np.ndarray:
    """Best first by score, ties by index: the ranking of an exhaustive strategy."""
    return np.argsort(np.asarray(scores, dtype=np.float64), axis=1, kind="stable")


def classification_metrics(scores: np.ndarray, labels: np.ndarray, temperature: float,
                           ranking: np.ndarray | None = None, n_bins: int = ECE_BINS) -> dict:  # fmt: skip
    """Top-1, top-5, mean per-class accuracy and ECE, all from one ranking per image.

    `ranking` [N, M] is the strategy's decision, best first (default: by score); prediction = its first
    entry, top-k = its first k. Probabilities softmax(-score / T) only give the prediction's confidence for
    ECE; scores from `ranked_scores` are ordered like the ranking, so the two agree. Mean per-class accuracy
    averages over the classes that have labelled images.
    """
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    ranking = default_ranking(scores) if ranking is None else np.asarray(ranking, dtype=np.int64)
    pred = ranking[:, 0]
    hit = pred == y
    conf = probabilities(scores, temperature)[np.arange(len(y)), pred]
    k = min(5, scores.shape[1])
    return {
        "accuracy": float(hit.mean()),
        "top5": float((ranking[:, :k] == y[:, None]).any(1).mean()),
        "mean_per_class_accuracy": float(np.mean([hit[y == c].mean() for c in np.unique(y)])),
        "ece": float(top_label_ece(conf, hit, n_bins)[0]),
        "temperature": temperature,
    }


def cross_fitted_ece(scores: np.ndarray, labels: np.ndarray, ranking: np.ndarray | None = None, seed: int = 0) -> float:
    """ECE after temperature scaling, fitted on one half and measured on the other (and vice versa)."""
    ranking = default_ranking(scores) if ranking is None else np.asarray(ranking)
    n = len(labels)
    if n < 4:
        return float("nan")
    idx = np.random.default_rng(seed).permutation(n)
    halves = (idx[: n // 2], idx[n // 2 :])
    eces = []
    for a, b in (halves, halves[::-1]):
        T = fit_temperature(scores[a], labels[a])
        eces.append(classification_metrics(scores[b], labels[b], T, ranking[b])["ece"] * len(b))
    return float(sum(eces) / n)


def temperature_key(score, contrastive: bool = False) -> str:
    """Which scores a stored temperature (or timestep-weights file) belongs to: their scale depends on
    scorer, loss and weighting, and on the value that shapes the score: `clark_rate` (clark), `min_snr_gamma`
    (min_snr), `attention_bias` (attention). Such a value joins the key only when it differs from its
    default, so keys stored before it joined (the shipped models' temperatures) still match at the default."""
    if contrastive:
        return "contrastive"
    key = f"{score.scorer} {score.loss} {score.weighting}"
    default = ScoreConfig()
    if score.scorer == "attention":
        same = score.attention_bias == default.attention_bias
        return key if same else f"{key} attention_bias={score.attention_bias}"
    for weighting, name in (("clark", "clark_rate"), ("min_snr", "min_snr_gamma")):
        if score.weighting == weighting and (v := float(getattr(score, name))) != getattr(default, name):
            key += f" {name}={v!r}"
    return key


def model_temperature(metadata: dict, key: str) -> dict | None:
    """A model's own temperature for scores of kind `key` ({value, source}), if its metadata carries one."""
    t = (metadata.get("temperature") or {}).get(key)
    if not isinstance(t, dict) or not t.get("value"):
        return None
    return {"value": float(t["value"]), "source": f"model metadata (fitted on {t.get('fitted_on', 'held-out images')})"}
