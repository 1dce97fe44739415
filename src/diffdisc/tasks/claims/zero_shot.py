"""`zero_shot`: is zero-shot diffusion classification competitive with a contrastive model (Li et al.; Clark &
Jaini)? The text diffusion model and the contrastive baseline classify the same real test items, shown as
one-item coloured scenes, among the 10 class names with each model's own prompt template (`a {class}`), as
`diffdisc classify` does by default; per item, diffusion correct − contrastive correct."""

from __future__ import annotations

import numpy as np

from ...datasets.export import export_shipped_test
from ..classify import ClassifyConfig, classify
from .base import Claim, ClaimContext, own_score, paired, verdict

IDS = ("zero_shot",)
SIZES = {
    "tiny": {"per_class": 1, "timesteps": 2},
    "quick": {"per_class": 5, "timesteps": 10},
    "full": {"per_class": 100, "timesteps": 20},
}


def side(result) -> dict:
    """One model's accuracy with its bootstrap 95 % interval (points) and per-item correctness by image id."""
    correct = (result.predictions == result.labels).astype(np.float64)
    return {**own_score(correct), "prompts": result.settings.get("prompts"), "correct": dict(zip(result.image_ids, correct.tolist(), strict=True))}  # fmt: skip


def run(ctx: ClaimContext, knobs: dict) -> list[Claim]:
    per_class, n_t, seed = int(knobs["per_class"]), int(knobs["timesteps"]), ctx.seed
    data = export_shipped_test(ctx.sub(f"data/test-{per_class}-s{seed}-scenes"), per_class, seed, scenes=True)
    score = ctx.score()
    sides, dirs = {}, {}
    for kind, which, bb, adaptive, out in ctx.zero_shot_runs(per_class, n_t):
        with ctx.track(f"zero-shot / {which}") as cb:
            res = classify(bb, data, ClassifyConfig(score=score, adaptive=adaptive), out=out, progress=cb)
        sides[kind], dirs[kind] = side(res), str(out.relative_to(ctx.out))
    d, c = sides["diffusion"], sides["contrastive"]
    ids = sorted(set(d["correct"]) & set(c["correct"]))
    value, ci, n = paired([d["correct"][i] for i in ids], [c["correct"][i] for i in ids])
    details = {
        "diffusion": {"model": ctx.models.text, **{k: v for k, v in d.items() if k != "correct"}},
        "contrastive": {"model": ctx.models.clip, **{k: v for k, v in c.items() if k != "correct"}},
        "settings": {"per_class": per_class, "timesteps": n_t, "strategy": "exhaustive", "subset_seed": seed,
                     "noise_seed": seed, "classes": "the 10 Fashion-MNIST class names, each model's template"},
        "runs": dirs,
        "data": str(data.relative_to(ctx.out)),
    }  # fmt: skip
    note = "" if n == d["n"] == c["n"] else f"paired on {n} items of {d['n']} (diffusion) / {c['n']} (contrastive)"
    return [Claim(
        id="zero_shot",
        claim="Zero-shot classification with a text-to-image diffusion model is competitive with a contrastive "
              "(CLIP-like) model.",
        source="Li et al. 2023; Clark & Jaini 2023",
        paper="SD-2.0 beats CLIP RN50 on 6 of 8 datasets (CIFAR-10 88.5 vs 75.6 %)",
        metric="top-1 correct on real test items, text diffusion − contrastive (points)",
        value=value, ci=ci, verdict=verdict(ci), n=n, details=details, note=note,
    )]  # fmt: skip
