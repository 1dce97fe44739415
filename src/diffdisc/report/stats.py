"""Numbers the report shows, computed from a loaded run: metrics with bootstrap intervals, traces, mistakes.

Everything is a pure function of the run's arrays and a fixed seed, so the same run gives the same page.
"""

from __future__ import annotations

import numpy as np

from ..results.classification import N_BOOT as N_BOOT  # resamples of the intervals (said on the page)
from ..results.classification import Calibration
from ..results.classification import pct as pct  # the page's one rounding rule, the command line's too
from ..scoring.calibrate import ECE_BINS
from .load import Classification

N_BINS = ECE_BINS  # reliability-diagram bins: the same as the ECE's


def calibration(c: Classification) -> Calibration | None:
    """The run's one ECE, as its metrics.json has it (`ClassificationResult.calibrated`): a temperature that
    `diffdisc calibrate --apply-to` gave the run (fitted on another run) is read back from metrics.json; a
    calibration.json in the run itself was fitted on these very images, so it is not used."""
    m = c.stored_metrics or {}
    given = m.get("temperature") if m.get("temperature_source") == "given" else None
    return c.calibrated(given)


def top5(c: Classification) -> float | None:
    """Share of labelled images whose true class is in the strategy's first five (as metrics.json's top5)."""
    lab = c.labels >= 0
    if not lab.any():
        return None
    return float((c.rankings[lab][:, :5] == c.labels[lab][:, None]).any(1).mean())


def per_class_accuracy(c: Classification) -> dict[str, tuple[int, int]]:
    """class name -> (correct, labelled images of that class)."""
    out = {}
    for i, name in enumerate(c.classes):
        m = c.labels == i
        out[name] = (int((c.preds[m] == i).sum()), int(m.sum()))
    return out


def reliability(cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the predicted class, correct) for labelled images, as the ECE measured them."""
    return cal.conf, cal.correct.astype(bool)


def hardest_mistakes(c: Classification, cal: Calibration | None, k: int = 8) -> list[tuple[int, float | None]]:
    """(image index, probability given to the wrong prediction): the most confident mistakes first."""
    lab = np.flatnonzero(c.labels >= 0)
    wrong = np.flatnonzero(c.preds[lab] != c.labels[lab])
    if not len(wrong):
        return []
    if cal is None or not np.isfinite(cal.conf).all():
        return [(int(lab[j]), None) for j in wrong[:k]]
    order = sorted(wrong, key=lambda j: (-cal.conf[j], int(lab[j])))
    return [(int(lab[j]), float(cal.conf[j])) for j in order[:k]]


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
