"""Numbers the report shows, computed from a loaded run: metrics with bootstrap intervals, traces, mistakes.

Everything is a pure function of the run's arrays and a fixed seed, so the same run gives the same page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scoring.calibrate import (
    ECE_BINS,
    classification_metrics,
    fit_temperature,
    probabilities,
    top_label_ece,
)
from .load import Classification

N_BOOT = 2000  # bootstrap resamples (as scoring.match_metrics.bootstrap_ci)
N_BINS = ECE_BINS  # reliability-diagram bins: the same as the ECE's


def pct(v: float | None) -> str:
    """The page's one rounding rule for a fraction, in tables and figure labels alike: 0.915 -> "91.5%"."""
    return "–" if v is None or not np.isfinite(v) else f"{v:.1%}"


@dataclass
class Summary:
    """One row of the metrics table."""

    n_images: int
    n_labelled: int
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None
    top5: float | None
    ece: float | None
    ece_ci: tuple[float, float] | None
    ece_cross_fitted: float | None  # from metrics.json (temperature fitted on the other half)
    temperature: float | None
    temperature_source: str
    calls_per_image: float


def temperature(c: Classification) -> tuple[float | None, str]:
    """The softmax temperature the page uses, and where it came from (said on the page)."""
    if c.calibration and c.calibration.get("temperature"):
        return float(c.calibration["temperature"]), "calibration.json"
    if c.settings.get("temperature"):
        return float(c.settings["temperature"]), "run setting"
    if (c.settings.get("model_temperature") or {}).get("value"):
        return float(c.settings["model_temperature"]["value"]), c.settings["model_temperature"]["source"]
    lab = c.labels >= 0
    if lab.sum() >= 2 and np.isfinite(c.scores[lab]).any():
        return fit_temperature(c.scores[lab], c.labels[lab]), "fitted on this run (in-sample)"
    return None, "none (no labels)"


def summarise(c: Classification, T: float | None) -> Summary:
    lab = c.labels >= 0
    n_lab = int(lab.sum())
    calls = float(c.calls.mean()) if len(c) else 0.0  # every call: a tree's coarse nodes and a head shortlist too
    crossfit = (c.stored_metrics or {}).get("ece_temperature_scaled")
    if not n_lab or T is None:
        return Summary(len(c), n_lab, None, None, None, None, None, crossfit, T, "", calls)
    y, pred = c.labels[lab], c.preds[lab]
    m = classification_metrics(c.scores[lab], y, T, c.rankings[lab], n_bins=N_BINS)
    conf = probabilities(c.scores[lab], T)[np.arange(n_lab), pred]
    (acc, acc_ci), (ece, ece_ci) = intervals((pred == y).astype(np.float64), conf)
    return Summary(len(c), n_lab, acc, acc_ci, m["top5"], ece, ece_ci, crossfit, T, "", calls)


def intervals(correct: np.ndarray, conf: np.ndarray, seed: int = 0, chunk: int = 100):
    """(point, 95% interval) of accuracy and ECE, from one computation over the same image resamples.

    ECE is biased upward under resampling (duplicated images make every bin's gap noisier): the plain
    percentile interval of a well-calibrated run can lie entirely above its own point estimate. The
    interval is therefore the bootstrap percentiles shifted by the bootstrap's bias estimate
    (mean of resamples − point), clipped to [0, 1]; for accuracy, an unbiased mean, the shift is ~0.
    Resamples are drawn `chunk` at a time, so 50,000 images need tens of megabytes, not gigabytes.
    """
    rng, n = np.random.default_rng(seed), len(correct)
    accs, eces = [], []
    for s in range(0, N_BOOT, chunk):
        idx = rng.integers(0, n, (min(chunk, N_BOOT - s), n))
        accs.append(correct[idx].mean(1))
        eces.append(top_label_ece(conf, correct, N_BINS, idx))

    def ci(point: float, v: list[np.ndarray]) -> tuple[float, tuple[float, float]]:
        v = np.concatenate(v)
        shift = v.mean() - point
        lo, hi = np.percentile(v, 2.5) - shift, np.percentile(v, 97.5) - shift
        return point, (float(np.clip(lo, 0.0, 1.0)), float(np.clip(hi, 0.0, 1.0)))  # both are shares

    return ci(float(correct.mean()), accs), ci(float(top_label_ece(conf, correct, N_BINS)[0]), eces)


def per_class_accuracy(c: Classification) -> dict[str, tuple[int, int]]:
    """class name -> (correct, labelled images of that class)."""
    out = {}
    for i, name in enumerate(c.classes):
        m = c.labels == i
        out[name] = (int((c.preds[m] == i).sum()), int(m.sum()))
    return out


def reliability(c: Classification, T: float) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the predicted class, correct) for labelled images at temperature T."""
    lab = c.labels >= 0
    p = probabilities(c.scores[lab], T)
    return p[np.arange(len(p)), c.preds[lab]], (c.preds[lab] == c.labels[lab])


def hardest_mistakes(c: Classification, T: float | None, k: int = 8) -> list[tuple[int, float | None]]:
    """(image index, probability given to the wrong prediction): the most confident mistakes first."""
    wrong = np.flatnonzero((c.labels >= 0) & (c.preds != c.labels))
    if not len(wrong):
        return []
    if T is None:
        return [(int(i), None) for i in wrong[:k]]
    p = probabilities(c.scores[wrong], T)[np.arange(len(wrong)), c.preds[wrong]]
    order = sorted(range(len(wrong)), key=lambda j: (-p[j], int(wrong[j])))
    return [(int(wrong[j]), float(p[j])) for j in order[:k]]


def has_timestep_errors(c: Classification) -> bool:
    return any(e is not None and len(ts) > 1 for e, ts in zip(c.errors, c.timesteps, strict=True))


def curve_images(c: Classification, k: int = 4) -> list[int]:
    """A few images for per-timestep curves: up to half mistakes (most confident first), then correct ones."""
    ok = [i for i in range(len(c)) if c.errors[i] is not None and len(c.timesteps[i]) > 1]
    wrong = [i for i in ok if c.labels[i] >= 0 and c.preds[i] != c.labels[i]][: k // 2]
    right = [i for i in ok if i not in wrong][: k - len(wrong)]
    return wrong + right


def single_t_accuracy(c: Classification, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per t bin: how often the true class alone has the lowest error at that t ("which t discriminates").

    Only (image, t) pairs where every class was scored count: adaptive strategies score later t on
    survivors only, which would flatter those t. Returns (bin centres, accuracy, pairs per bin) or None.
    """
    ts_all, hits = [], []
    for i in range(len(c)):
        e, ts = c.errors[i], c.timesteps[i]
        if e is None or c.labels[i] < 0 or len(ts) < 2:
            continue
        for j, t in enumerate(ts):
            col = [row[j] if j < len(row) else None for row in e]
            if any(v is None for v in col):
                continue
            ts_all.append(t)
            hits.append(int(np.argmin(col)) == c.labels[i])
    if not ts_all:
        return None
    ts_all, hits = np.array(ts_all), np.array(hits, dtype=np.float64)
    top = max(1000, int(ts_all.max()) + 1)
    edges = np.linspace(0, top, n_bins + 1)
    b = np.clip(np.digitize(ts_all, edges) - 1, 0, n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    acc = np.bincount(b, weights=hits, minlength=n_bins) / np.maximum(n, 1)
    return (edges[:-1] + edges[1:]) / 2, np.where(n > 0, acc, np.nan), n


def pruning_trace(n_calls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates left vs U-Net calls spent, for one image, from its per-candidate call counts.

    Adaptive strategies score every surviving candidate at the same timesteps, so after each candidate has
    had k calls the image has spent sum_c min(n_c, k) calls and #{c : n_c > k} candidates remain (at the
    end: those that reached the most calls, the survivors).
    """
    levels = np.unique(np.concatenate([[0], n_calls]))
    x = np.array([np.minimum(n_calls, k).sum() for k in levels])
    y = np.array([(n_calls > k).sum() for k in levels])
    y[0], y[-1] = len(n_calls), (n_calls == levels[-1]).sum()  # start with all; end with the survivors
    return x, y


def mean_trace(n_calls: np.ndarray, grid: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images of candidates left, on a common calls axis (step functions sampled on a grid)."""
    xmax = max(int(n_calls.sum(1).max()), 1)
    xs = np.linspace(0, xmax, grid)
    ys = []
    for row in n_calls:
        x, y = pruning_trace(row)
        ys.append(y[np.clip(np.searchsorted(x, xs, side="right") - 1, 0, len(y) - 1)])
    return xs, np.mean(ys, 0)
