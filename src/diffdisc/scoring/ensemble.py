"""Diffusion × contrastive ensemble: log-linear pooling of the two models' calibrated log-probabilities.

    log p(y | x) ∝ w · log p_diff(y | x; T_diff) + (1 − w) · log p_con(y | x; T_con)

Each model's scores (lower is better: errors, negated scaled cosines) become probabilities at its own softmax
temperature, so `w` weighs evidence, not score scales. `fit_weight` picks `w` (and, unless given, both
temperatures) on labelled *validation* scores only; the caller never hands it the images it classifies. The
pooled result is returned as scores again (−log p, normalised), so every metric reads it at T = 1.

The pooling is over the candidates the diffusion search scored: one it never scored (outside a cascade's
shortlist: score inf) keeps probability 0 at every w, so the ensemble reorders what the diffusion model looked
at, and at w = 0 the contrastive model decides among those (among all, after an exhaustive search).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import logsumexp

from .calibrate import fit_temperature

WEIGHT_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))


def log_probs(scores: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(−scores / T) per row; a non-finite score (never scored) is log-probability −inf."""
    z = -np.asarray(scores, dtype=np.float64) / temperature
    z = np.where(np.isfinite(z), z, -np.inf)
    return z - logsumexp(z, axis=-1, keepdims=True)


def pool(diff_scores, con_scores, weight: float, t_diff: float, t_con: float) -> np.ndarray:
    """Pooled, normalised log-probabilities [N, M] (`weight` 1: the diffusion model alone, 0: the contrastive one,
    both over the candidates the diffusion search scored)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble weight must be in [0, 1], got {weight}")
    ld, lc = log_probs(diff_scores, t_diff), log_probs(con_scores, t_con)
    scored = np.isfinite(ld)
    z = np.where(scored, weight * np.where(scored, ld, 0.0) + (1.0 - weight) * lc, -np.inf)
    return z - logsumexp(z, axis=-1, keepdims=True)


def pooled_scores(diff_scores, con_scores, weight: float, t_diff: float, t_con: float) -> np.ndarray:
    """`pool` as scores (−log p, lower is better): softmax(−score / 1) gives the pooled probabilities back."""
    return -pool(diff_scores, con_scores, weight, t_diff, t_con)


def ranking(scores: np.ndarray, base: list[int]) -> list[int]:
    """Candidates by pooled score, ties (the never-scored, inf) kept in the order of `base` (the search's ranking)."""
    place = {c: i for i, c in enumerate(base)}
    return sorted(range(len(scores)), key=lambda c: (scores[c], place[c]))


@dataclass(frozen=True)
class EnsembleFit:
    """The fitted pooling: `weight`, the two temperatures (and whether they were fitted here), the criterion,
    the number of validation images and every grid point's (weight, nll, accuracy)."""

    weight: float
    t_diff: float
    t_con: float
    temperatures: str
    criterion: str
    n: int
    table: tuple[tuple[float, float, float], ...]

    def record(self) -> dict:
        return asdict(self)


def fit_weight(diff_scores, con_scores, labels, t_diff: float | None = None, t_con: float | None = None,
               grid=WEIGHT_GRID, criterion: str = "nll") -> EnsembleFit:  # fmt: skip
    """The grid weight with the lowest validation NLL (`criterion` "accuracy": the highest accuracy, ties by NLL).

    Temperatures not given are fitted first, each model's own by NLL on the same validation scores, so the
    weight only trades the two calibrated models. An image whose true class the search never scored has
    probability 0 for it at every w and is left out of the NLL. Only these labels are read."""
    if criterion not in ("nll", "accuracy"):
        raise ValueError(f"criterion must be 'nll' or 'accuracy', got {criterion!r}")
    d, c, y = np.asarray(diff_scores, np.float64), np.asarray(con_scores, np.float64), np.asarray(labels, np.int64)
    how = "given" if t_diff is not None and t_con is not None else "fitted on the validation images by NLL"
    t_diff = fit_temperature(d, y) if t_diff is None else float(t_diff)
    t_con = fit_temperature(c, y) if t_con is None else float(t_con)
    rows, kept = [], np.isfinite(d[np.arange(len(y)), y])
    for w in grid:
        lp = pool(d, c, float(w), t_diff, t_con)
        nll = float(-lp[np.arange(len(y)), y][kept].mean()) if kept.any() else 0.0
        rows.append((float(w), nll, float((lp.argmax(1) == y).mean())))
    key = (lambda r: r[1]) if criterion == "nll" else (lambda r: (-r[2], r[1]))
    best = min(rows, key=key)
    return EnsembleFit(best[0], t_diff, t_con, how, criterion, len(y), tuple(rows))
