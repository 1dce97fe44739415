"""`binding` and `spatial`: do diffusion models compose better than contrastive ones (Clark & Jaini; Li et al.)?
Both models score the same Winoground-style probe groups (`datasets/probes.py`): per group the text score
(each image prefers its own caption), diffusion − contrastive. The object-swap and colour-swap controls change
*what* is present rather than how it is composed; their scores sit in both rows' details, so a model that only
checks the bag of words shows as passing the controls and failing binding / spatial."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...runs.store import read_records
from ...scoring.match_metrics import winoground_scores
from ..probe import ProbeConfig, run_probes
from .base import Claim, ClaimContext, paired, verdict

IDS = ("binding", "spatial")
SIZES = {
    "tiny": {"n": 2, "timesteps": 2},
    "quick": {"n": 20, "timesteps": 5},
    "full": {"n": 200, "timesteps": 20},
}
CONTROLS = ("object", "colour")
CLAIMS = {
    "binding": ("Text-to-image diffusion models bind attributes to the right objects where CLIP-like models "
                "cannot.", "Clark & Jaini 2023; Li et al. 2023",
                "Winoground text score 38.5 (SD) vs 33.0 (OpenCLIP ViT-H); Imagen binds attributes, CLIP does not"),
    "spatial": ("Diffusion models reason better about relations (left / right) than CLIP-like models.",
                "Li et al. 2023", "Winoground text score 38.5 (SD) vs 33.0 (OpenCLIP ViT-H)"),
}  # fmt: skip


def text_correct(run_dir: str | Path) -> dict[str, float]:
    """Per group of a finished match / probe run: 1.0 where its text score is right, else 0.0.

    As `match_metrics` counts it: a 2x2 group when both images prefer their own caption, a one-image group
    (1 x K, e.g. cue-conflict) when caption 0 scores strictly best."""
    out = {}
    for r in read_records(Path(run_dir) / "shards"):
        m = np.asarray(r["scores"], dtype=np.float64)
        out[r["image_id"]] = float(winoground_scores(m)[0] if m.shape == (2, 2) else m[0, 0] < m[0, 1:].min())
    return out


def _points(row: dict) -> dict:
    """A probe row's scores and chance levels as points, with their 95 % intervals."""
    out = {k: {"mean": 100 * row[k]["mean"], "ci95": [100 * v for v in row[k]["ci95"]]}
           for k in ("text", "image", "group") if k in row}  # fmt: skip
    return {**out, "chance": {k: 100 * v for k, v in row.get("chance", {}).items()}}


def probe_sides(ctx: ClaimContext, models: dict, names: list[str], n: int, n_t: int, sub: str = "probes") -> dict:
    """{probe: {side: {"row", "correct", "run"}}} for loaded `models` {side: backbone}, every run resumable
    below ctx.sub(f"{sub}-t{n_t}") (the probe's own run name does not say t)."""
    cfg = ProbeConfig(n=n, seed=ctx.seed, n_timesteps=n_t, score=ctx.score())
    out = ctx.sub(f"{sub}-t{n_t}")
    found: dict = {name: {} for name in names}
    for kind, bb in models.items():
        for row in run_probes([bb], names, cfg, out=out, progress_factory=ctx.track):
            found[row["probe"]][kind] = {"row": row, "correct": text_correct(row["run_dir"]),
                                         "run": str(Path(row["run_dir"]).relative_to(ctx.out))}  # fmt: skip
    return found


def paired_text(sides: dict, favoured: str, comparator: str) -> tuple[float, tuple[float, float], int]:
    """Mean and interval of the per-group text correctness favoured − comparator (points), paired by group id."""
    a, b = sides[favoured]["correct"], sides[comparator]["correct"]
    ids = sorted(set(a) & set(b))
    return paired([a[i] for i in ids], [b[i] for i in ids])


def run(ctx: ClaimContext, knobs: dict) -> list[Claim]:
    n, n_t = int(knobs["n"]), int(knobs["timesteps"])
    models = {"diffusion": ctx.load("text"), "contrastive": ctx.load("clip")}
    names = {"diffusion": ctx.models.text, "contrastive": ctx.models.clip}
    found = probe_sides(ctx, models, [*IDS, *CONTROLS], n, n_t)
    controls = {}
    for probe in CONTROLS:
        v, ci, m = paired_text(found[probe], "diffusion", "contrastive")
        controls[probe] = {**{k: {**_points(s["row"]), "run": s["run"]} for k, s in found[probe].items()},
                           "text_diffusion_minus_contrastive": {"value": v, "ci95": list(ci), "n": m}}  # fmt: skip
    rows = []
    for probe in IDS:
        value, ci, m = paired_text(found[probe], "diffusion", "contrastive")
        sides = found[probe]
        details = {
            **{k: {"model": names[k], **_points(s["row"])} for k, s in sides.items()},
            "controls": controls,
            "settings": {"groups": n, "timesteps": n_t, "group_seed": ctx.seed, "noise_seed": ctx.seed,
                         "probe_version": sides["diffusion"]["row"]["version"]},
            "runs": {k: s["run"] for k, s in sides.items()},
        }  # fmt: skip
        note = "" if m == n else f"paired on {m} of {n} groups"
        claim, source, paper = CLAIMS[probe]
        rows.append(Claim(probe, claim, source, paper, f"text score on `{probe}` probe groups, diffusion − "
                          "contrastive (points)", value, ci, verdict(ci), m, details, note))  # fmt: skip
    return rows
