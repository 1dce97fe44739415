"""`effective_robustness`: do diffusion classifiers lose less under shift than their clean accuracy predicts
(Li et al.; Taori et al.'s effective robustness)?

Coloured scenes only: the text diffusion model, the contrastive model and ResNet-18s trained from scratch on
real train scenes (one per `baseline_per_class`, spreading the clean accuracies) classify the same test items
clean and under every shift (`datasets.shifts`). Per shift, Taori et al.'s probit-probit line through the CNNs
and the contrastive model predicts a shifted accuracy from a clean one. Per item, the diffusion model's shifted
correctness minus the line's prediction at its clean accuracy, averaged over the shifts: the mean is its
effective robustness (points). The interval resamples items, recomputing every model's accuracies and refitting
the lines on each resample (`tasks.robustness.bootstrap_effective_robustness`), so it covers the fit as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...datasets.shifts import CLEAN, parse_shift
from ...errors import DiffdiscError
from ..baseline import ClassifierConfig
from ..classify import ClassifyConfig
from ..robustness import (
    FIT_ROLES,
    add_effective_robustness,
    baseline_correct,
    baseline_dir,
    bootstrap_effective_robustness,
    correctness_array,
    diffusion_correct,
    export_sets,
    fit_lines,
    item_effective_robustness,
    percentile_ci,
    rows_of,
)
from .base import Claim, ClaimContext, verdict

IDS = ("effective_robustness",)
FULL_SHIFTS = ["gaussian_noise@3", "contrast@3", "unseen_colour", "position@4", "scale@0.75", "defocus_blur@1",
               "jpeg_compression@3", "brightness@3"]  # fmt: skip
SIZES = {
    "tiny": {"per_class": 1, "shifts": ["gaussian_noise@3"], "timesteps": 2, "baseline_per_class": [10, 20],
             "epochs": 1},
    "quick": {"per_class": 3, "shifts": ["gaussian_noise@3", "position@4"], "timesteps": 4,
              "baseline_per_class": [50, 200], "epochs": 1},
    "full": {"per_class": 100, "shifts": FULL_SHIFTS, "timesteps": 20, "baseline_per_class": [100, 400, 1000, 6000],
             "epochs": 15},
}  # fmt: skip
KIND = "scenes"
CNN = "resnet18"
RESAMPLES = 2000
FIT = "baselines"  # the line goes through the CNNs and the contrastive model


def _pts(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(100 * float(v), 4)


def _ci(samples: np.ndarray) -> list[float] | None:
    """The 95 % percentile interval of the resamples that had a line, rounded; None when none had one."""
    lo, hi = percentile_ci(samples)
    return None if np.isnan(lo) else [round(lo, 4), round(hi, 4)]


def _table(rows: list[dict]) -> dict:
    """{model: {shift: accuracy, its 95 % interval, drop and effective robustness}} in points."""
    out: dict = {}
    for r in rows:
        cell = {"accuracy": _pts(r["accuracy"]), "ci95": [_pts(v) for v in r["ci95"]]}
        if "drop" in r:
            cell.update(drop=_pts(r["drop"]), drop_ci95=[_pts(v) for v in r["drop_ci95"]])
        if "effective_robustness" in r:
            cell["effective_robustness"] = _pts(r["effective_robustness"])
        out.setdefault(r["model"], {"role": r["role"]})[r["shift"]] = cell
    return out


def run(ctx: ClaimContext, knobs: dict) -> list[Claim]:
    per_class, n_t, seed, epochs = int(knobs["per_class"]), int(knobs["timesteps"]), ctx.seed, int(knobs["epochs"])
    shifts = list(knobs["shifts"])
    sizes = sorted({int(k) for k in knobs["baseline_per_class"]})
    for s in shifts:  # a bad name fails before any model runs
        parse_shift(s)
    if not shifts or len(sizes) < 1:
        raise DiffdiscError("the robustness stage needs at least one shift and one CNN size")
    sets = export_sets(KIND, shifts, ctx.sub(f"data/test-{per_class}-s{seed}"), per_class, seed)
    correct, roles, dirs = {}, {}, {}
    score = ctx.score()
    for role, which, bb, adaptive, out in ctx.zero_shot_runs(per_class, n_t):
        label = Path(getattr(ctx.models, which)).name + (" (contrastive)" if role == "contrastive" else "")
        correct[label], _ = diffusion_correct(bb, sets, out, ClassifyConfig(score=score, adaptive=adaptive), name=which,
                                              progress=lambda s, w=which: ctx.track(f"robustness / {w} / {s}"), log=ctx.log)  # fmt: skip
        roles[label], dirs[label] = role, str(out.relative_to(ctx.out))
    models, data = ctx.sub(f"cnn-s{seed}"), ctx.sub(f"data/train-s{seed}")
    for k in sizes:
        cfg = ClassifierConfig(model=CNN, epochs=epochs, seed=seed)
        label = f"{CNN} {k}/class"
        correct[label], _ = baseline_correct(KIND, k, sets, cfg, models=models, data=data, log=ctx.log)
        roles[label], dirs[label] = "cnn", str(baseline_dir(models, KIND, k, cfg).relative_to(ctx.out))
    rows = [r for label, c in correct.items() for r in rows_of(label, KIND, c, roles[label])]
    fits = fit_lines(rows, FIT_ROLES[FIT])
    add_effective_robustness(rows, fits)
    shifted = [s for s in sets if s != CLEAN]
    C, ids = correctness_array(correct, shifted)
    labels = list(correct)
    fit_idx = [i for i, m in enumerate(labels) if roles[m] in FIT_ROLES[FIT]]
    diff_i, clip_i = ([roles[m] for m in labels].index(r) for r in ("diffusion", "contrastive"))
    per_item = item_effective_robustness(C, fit_idx, diff_i)
    boot = 100 * bootstrap_effective_robustness(C, fit_idx, [diff_i, clip_i], RESAMPLES, seed=0)
    no_line = int(np.isnan(boot[:, 0]).sum())
    value = round(float(100 * per_item.mean()), 4) if np.isfinite(per_item).all() else None
    ci = _ci(boot[:, 0]) if value is not None else None
    ci = tuple(ci) if ci else None
    clip_er = item_effective_robustness(C, fit_idx, clip_i).mean()
    points = [{"model": r["model"], "role": r["role"], "shift": r["shift"], "clean": r["clean"], "shifted": r["accuracy"]}
              for r in rows if r["shift"] != CLEAN]  # fmt: skip
    details = {
        "diffusion": {"model": ctx.models.text, "effective_robustness": value, "ci95": list(ci) if ci else None,
                      "per_shift": {s: _pts(r.get("effective_robustness")) for s in shifted for r in rows
                                    if r["model"] == labels[diff_i] and r["shift"] == s}},
        "contrastive": {"model": ctx.models.clip, "effective_robustness": _pts(clip_er),
                        "ci95": _ci(boot[:, 1]),
                        "note": "against the same line, which goes through the contrastive model itself"},
        "accuracy": _table(rows),
        "fits": {k.split("/", 1)[1]: v for k, v in fits.items()},
        "points": points,
        "settings": {"kind": KIND, "per_class": per_class, "n_items": len(ids), "shifts": shifted, "timesteps": n_t,
                     "strategy": "exhaustive", "noise_seed": seed, "subset_seed": seed, "cnn": CNN,
                     "cnn_per_class": sizes, "cnn_epochs": epochs, "fit": "probit-probit least squares through "
                     "the CNNs and the contrastive model, per shift", "resamples": RESAMPLES,
                     "resamples_without_line": no_line},
        "runs": dirs,
        "data": {s: str(p.relative_to(ctx.out)) for s, p in sets.items()},
    }  # fmt: skip
    note = ""
    if value is None:
        note = "no line: the CNNs and the contrastive model have the same clean accuracy"
    elif no_line:
        note = f"{no_line} of {RESAMPLES} resamples had no line (equal clean accuracies) and were left out"
    return [Claim(
        id="effective_robustness",
        claim="Diffusion classifiers are more robust to distribution shift than their clean accuracy predicts "
              "(better effective robustness).",
        source="Li et al. 2023",
        paper="Li et al.: diffusion classifiers have better effective robustness",
        metric="text diffusion's shifted correctness − the CNN + contrastive probit line's prediction at its clean "
               "accuracy, averaged over shifts (points)",
        value=value, ci=ci, verdict=verdict(ci), n=len(ids), details=details, note=note,
    )]  # fmt: skip
