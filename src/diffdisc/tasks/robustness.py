"""Effective robustness (Taori et al. 2020; Li et al. 2023): does a classifier lose less under distribution
shift than its clean accuracy predicts?

Every model of a kind is scored on the same images clean and under each shift (`datasets.shifts`); CNNs
trained from scratch on real train images of several sizes spread out the clean accuracies. Per shift, a
least-squares line in probit-probit space (probit(shifted) ~ probit(clean)) through the baseline points
predicts the shifted accuracy a model of that clean accuracy "should" have; effective robustness is the
measured shifted accuracy minus that prediction. `bootstrap_effective_robustness` resamples *items* and refits
the line on every resample, so the interval covers the fit's own uncertainty, vectorised over resamples.

Used by `diffdisc claims` (stage `robustness`) and bench/effective_robustness.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..datasets.shifts import CLEAN, export_shifted
from ..errors import DiffdiscError
from ..scoring.match_metrics import bootstrap_ci
from .baseline import ClassifierConfig

FIT_ROLES = {"baselines": ("cnn", "contrastive"), "cnn": ("cnn",)}  # the points a fit goes through


def _summary(correct: np.ndarray) -> dict:
    lo, hi = bootstrap_ci(correct)
    return {"accuracy": float(correct.mean()), "ci95": [lo, hi], "n": int(len(correct))}


def export_sets(kind: str, shifts: list[str], root: Path, per_class: int, seed: int) -> dict[str, Path]:
    """clean + every one of `shifts` that applies to `kind` (grey items have no colour to shift), as
    ImageFolders under ROOT/KIND/SHIFT; a folder whose shift.json says it holds these images is kept."""
    names = [CLEAN] + [s for s in shifts if kind == "scenes" or s != "unseen_colour"]
    sets = {}
    for s in names:
        where = Path(root) / kind / s.replace("@", "-")
        meta = where / "shift.json"  # written last by export_shifted: present means complete
        want = {"kind": kind, "shift": s, "per_class": per_class, "seed": seed}
        try:
            have = json.loads(meta.read_text()) if meta.is_file() else {}
        except (OSError, json.JSONDecodeError):
            have = {}
        same = all(have.get(k) == v for k, v in want.items())
        sets[s] = where if same else export_shifted(kind, s, where, per_class, seed)
    return sets


def diffusion_correct(bb, sets: dict[str, Path], out: Path, cfg, *, name: str = "", progress=None,
                      log: Callable[[str], None] = print) -> tuple[dict, dict]:  # fmt: skip
    """{shift: {image_id: 0/1}} of one diffusion or contrastive model on every set, and the seconds each took;
    one resumable `classify` run per set under OUT/SHIFT (`cfg`: a ClassifyConfig). `progress(shift)`, if
    given, is a context manager yielding classify's progress callback."""
    import contextlib

    from .classify import classify

    res, secs = {}, {}
    for shift, data in sets.items():
        t0 = time.time()
        with progress(shift) if progress else contextlib.nullcontext(None) as cb:
            r = classify(bb, data, cfg, out=Path(out) / shift.replace("@", "-"), progress=cb)
        res[shift] = {str(i): int(p == y) for i, p, y in zip(r.image_ids, r.preds.tolist(), r.labels.tolist(), strict=True)}
        secs[shift] = time.time() - t0
        log(f"{name:24s} {shift:20s} acc {np.mean(list(res[shift].values())):.3f} ({secs[shift]:.0f} s)")
    return res, secs


def train_set(kind: str, per_class: int, root: Path, seed: int, log: Callable[[str], None] = print) -> Path:
    """`per_class` real train images per class of `kind` (grey items or coloured scenes) as an ImageFolder
    under ROOT: from the whole train split when the Debian dataset is installed, else the shipped 1,000."""
    from ..datasets.export import export_shipped_test

    where = Path(root) / f"train-{kind}-{per_class}"
    try:
        return export_shipped_test(where, per_class, seed, scenes=kind == "scenes", full=True, split="train")
    except DiffdiscError as e:
        if per_class > 100:
            raise DiffdiscError(f"{e} (the shipped train subset has 100 per class: train on <= 100 per class)") from None
        log(f"({e}: training on the shipped train subset)")
        return export_shipped_test(where, per_class, seed, scenes=kind == "scenes", split="train")


def baseline_dir(root: Path, kind: str, per_class: int, cfg: ClassifierConfig) -> Path:
    return Path(root) / f"{kind}-{per_class}-{cfg.model}-{cfg.epochs}ep"


def baseline_correct(kind: str, per_class: int, sets: dict[str, Path], cfg: ClassifierConfig, *, models: Path,
                     data: Path, log: Callable[[str], None] = print) -> tuple[dict, dict]:  # fmt: skip
    """Train (or reuse) one CNN (`cfg`) on `per_class` real train images of `kind` into MODELS/, the train
    images exported under DATA/, then its per-image correctness {shift: {image_id: 0/1}} on every set and the
    seconds each evaluation took."""
    from ..data.folders import open_image_dataset
    from .baseline import STATE_JSON, evaluate_classifier, train_classifier

    model_dir = baseline_dir(models, kind, per_class, cfg)
    state = model_dir / STATE_JSON
    done = state.is_file() and json.loads(state.read_text()).get("epoch", 0) >= cfg.epochs
    if not done:
        t0 = time.time()
        train_classifier(train_set(kind, per_class, data, cfg.seed, log), cfg, out=model_dir,
                         log=lambda m: log(f"[cnn {kind} {per_class}/class] {m}"))  # fmt: skip
        log(f"[cnn {kind} {per_class}/class] trained in {time.time() - t0:.0f} s")
    res, secs = {}, {}
    for shift, folder in sets.items():
        t0 = time.time()
        ids = [str(it.image_id) for it in open_image_dataset(folder).items]  # evaluate_classifier's order
        res[shift] = dict(zip(ids, evaluate_classifier(model_dir, folder, per_image=True)["correct"], strict=True))
        secs[shift] = time.time() - t0
    log(f"cnn-{kind}-{per_class:<13d} clean acc {np.mean(list(res[CLEAN].values())):.3f}")
    return res, secs


def rows_of(model: str, kind: str, correct: dict, role: str) -> list[dict]:
    """One row per shift: accuracy and the paired drop from clean, each with its bootstrap interval over images;
    the clean row also holds the drop averaged over the shifts (per image first, then bootstrapped)."""
    clean = correct[CLEAN]
    ids = sorted(clean)
    rows, drops = [], []
    for shift, c in correct.items():
        if sorted(c) != ids:
            raise DiffdiscError(f"{model}: the {shift} set holds other images than the clean one")
        v = np.array([c[i] for i in ids], np.float64)
        row = {"model": model, "kind": kind, "shift": shift, "role": role, **_summary(v),
               "clean": float(np.mean(list(clean.values())))}  # fmt: skip
        if shift != CLEAN:
            diff = np.array([clean[i] - c[i] for i in ids], np.float64)
            lo, hi = bootstrap_ci(diff)
            row.update(drop=float(diff.mean()), drop_ci95=[lo, hi])
            drops.append(diff)
        rows.append(row)
    if drops:
        per_image = np.mean(drops, axis=0)
        lo, hi = bootstrap_ci(per_image)
        rows[0].update(mean_drop=float(per_image.mean()), mean_drop_ci95=[lo, hi])
    return rows


def probit(p, n: int) -> np.ndarray:
    """Φ⁻¹ of accuracies measured on `n` items, clipped to [0.5/n, 1 − 0.5/n]: a 0 or 100 % point stays finite."""
    from scipy.stats import norm

    return norm.ppf(np.clip(np.asarray(p, np.float64), 0.5 / n, 1 - 0.5 / n))


def fit_lines(rows: list[dict], roles: tuple[str, ...]) -> dict:
    """Per (kind, shift): slope and intercept of probit(shifted) ~ probit(clean) over the points of `roles`,
    where at least two of their clean accuracies differ."""
    fits = {}
    for key in {(r["kind"], r["shift"]) for r in rows if r["shift"] != CLEAN}:
        pts = [r for r in rows if (r["kind"], r["shift"]) == key and r["role"] in roles]
        if len({p["clean"] for p in pts}) < 2:
            continue
        n = max(p["n"] for p in pts)
        x, y = probit([p["clean"] for p in pts], n), probit([p["accuracy"] for p in pts], n)
        slope, intercept = np.polyfit(x, y, 1)
        fits[f"{key[0]}/{key[1]}"] = {"slope": float(slope), "intercept": float(intercept), "n_points": len(pts), "n": n}
    return fits


def predicted(fit: dict, clean: float, n: int | None = None) -> float:
    """The fit's shifted accuracy at `clean` (clipped as the fitted points were, unless `n` says otherwise)."""
    from scipy.stats import norm

    return float(norm.cdf(fit["slope"] * probit([clean], n or fit["n"])[0] + fit["intercept"]))


def add_effective_robustness(rows: list[dict], fits: dict) -> list[dict]:
    """Each shifted row gets `effective_robustness`: its accuracy minus its kind/shift fit at its clean accuracy."""
    for r in rows:
        fit = fits.get(f"{r['kind']}/{r['shift']}")
        if fit and r["shift"] != CLEAN:
            r["effective_robustness"] = r["accuracy"] - predicted(fit, r["clean"])
    return rows


# ------------------------------------------------------------------ item-level ER and its refitting bootstrap
def correctness_array(correct: dict[str, dict], shifts: list[str]) -> tuple[np.ndarray, list[str]]:
    """{model: {shift: {image_id: 0/1}}} -> (array [models, 1 + shifts, items], the item ids), clean first;
    every model and shift must hold the same items."""
    ids = sorted(next(iter(correct.values()))[CLEAN])
    sets = [CLEAN, *shifts]
    out = np.zeros((len(correct), len(sets), len(ids)), np.float64)
    for m, (model, by_shift) in enumerate(correct.items()):
        for s, shift in enumerate(sets):
            c = by_shift[shift]
            if sorted(c) != ids:
                raise DiffdiscError(f"{model}: the {shift} set holds other items than the others")
            out[m, s] = [c[i] for i in ids]
    return out, ids


def er_from_accuracies(acc: np.ndarray, fit: list[int], of: list[int], n: int) -> tuple[np.ndarray, dict]:
    """Effective robustness of models `of` from accuracies `acc` [..., models, 1 + shifts] (clean first, any
    leading batch axes: one per bootstrap resample), with one probit line per shift through models `fit`.

    Returns (ER per shift [..., len(of), shifts], {"slope", "intercept": [..., shifts], "predicted":
    [..., len(of), shifts]}); NaN where the fit models' clean accuracies are all equal (no line)."""
    from scipy.stats import norm

    p = probit(acc, n)
    x = p[..., fit, :1]  # [..., F, 1]: clean, the same for every shift
    y = p[..., fit, 1:]  # [..., F, S]
    dx, dy = x - x.mean(-2, keepdims=True), y - y.mean(-2, keepdims=True)
    sxx = (dx**2).sum(-2)  # [..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 1e-12, (dx * dy).sum(-2) / sxx, np.nan)  # [..., S]
    intercept = y.mean(-2) - slope * x.mean(-2)
    pred = norm.cdf(slope[..., None, :] * p[..., of, :1] + intercept[..., None, :])  # [..., len(of), S]
    return acc[..., of, 1:] - pred, {"slope": slope, "intercept": intercept, "predicted": pred}


def item_effective_robustness(C: np.ndarray, fit: list[int], of: int) -> np.ndarray:
    """Per item of model `of`: its shifted correctness minus the line's prediction at its clean accuracy,
    averaged over the shifts (`C`: correctness [models, 1 + shifts, items]). The mean over items is its ER."""
    _, parts = er_from_accuracies(C.mean(-1), fit, [of], C.shape[-1])
    return (C[of, 1:] - parts["predicted"][0][:, None]).mean(0)


def bootstrap_effective_robustness(C: np.ndarray, fit: list[int], of: list[int], n: int = 2000,
                                   seed: int = 0) -> np.ndarray:  # fmt: skip
    """ER (averaged over shifts) of models `of` on `n` resamples of the items, every model's accuracies
    recomputed on each resample and the lines refitted: [n, len(of)], NaN where a resample has no line.

    The resamples are `bootstrap_ci`'s (seed, then `integers(0, N, (n, N))`), applied to every model at once
    through per-resample item counts, so 2,000 resamples of 1,000 items and a dozen models take well under a
    second."""
    m, s, N = C.shape
    idx = np.random.default_rng(seed).integers(0, N, (n, N))
    counts = np.bincount((idx + N * np.arange(n)[:, None]).ravel(), minlength=n * N).reshape(n, N)
    acc = (counts @ C.reshape(m * s, N).T / N).reshape(n, m, s)
    er, _ = er_from_accuracies(acc, fit, of, N)
    return er.mean(-1)


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of the finite `samples` (NaN, NaN when none are)."""
    v = np.asarray(samples, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))
