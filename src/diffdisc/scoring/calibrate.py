"""Scores -> probabilities and calibration metrics.

p(c | x) = softmax(-score / T). `fit_temperature` picks T by NLL on labelled data; `fit_platt_calls`
fits Clark & Jaini's confidence model sigmoid(a·log(calls) + b) for adaptive runs, where images that
needed more U-Net calls are the hard ones.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import optimize


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


def classification_metrics(scores: np.ndarray, labels: np.ndarray, temperature: float, n_bins: int = 15) -> dict:
    """Top-1, top-5 and ECE (torchmetrics) for labelled images; scores [N, M], lower is better."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

    scores = np.asarray(scores, dtype=np.float64)
    M = scores.shape[1]
    p = torch.from_numpy(probabilities(scores, temperature)).float()
    y = torch.from_numpy(np.asarray(labels)).long()
    acc = multiclass_accuracy(p, y, num_classes=M, average="micro").item()
    top5 = multiclass_accuracy(p, y, num_classes=M, average="micro", top_k=min(5, M)).item()
    ece = multiclass_calibration_error(p, y, num_classes=M, n_bins=n_bins, norm="l1").item()
    per_class = multiclass_accuracy(p, y, num_classes=M, average="macro").item()
    return {"accuracy": acc, "top5": top5, "mean_per_class_accuracy": per_class, "ece": ece, "temperature": temperature}


def cross_fitted_ece(scores: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """ECE after temperature scaling, fitted on one half and measured on the other (and vice versa)."""
    n = len(labels)
    if n < 4:
        return float("nan")
    idx = np.random.default_rng(seed).permutation(n)
    halves = (idx[: n // 2], idx[n // 2 :])
    eces = []
    for a, b in (halves, halves[::-1]):
        T = fit_temperature(scores[a], labels[a])
        eces.append(classification_metrics(scores[b], labels[b], T)["ece"] * len(b))
    return float(sum(eces) / n)
