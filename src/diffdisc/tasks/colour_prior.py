"""Did a model learn class colours? The check to run before reading a cue-conflict shape bias.

A low shape bias means something only if the model tied colour to class names. For shipped test items of each
class, rendered in each of the 8 palette colours, `colour_prior` measures how often the colour the class-name
prompt ("a shirt") prefers is the class colour (`scenes.class_colour`); chance is 1/8:
  diffusion (text-conditional): the tint with the largest implicit-classifier score err(x | "") - err(x | prompt)
    (mean ε-error over `n_timesteps` evenly spaced t, noise shared by the tints and both conditions), i.e. the
    tint under which the prompt explains the image best;
  contrastive: the tint whose image embedding is most similar to the prompt's.
(Samples drawn with the prompt were tried first: the small text model's samples follow even colour *words* too
loosely to read a colour prior from them.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbones.capabilities import Capability
from ..config import ConfigMixin
from ..data.images import array_to_tensor
from ..datasets.fashion_mnist import CLASS_NAMES, load_shipped_subset
from ..datasets.scenes import COLOURS, Item, class_colour, describe, make_scene
from ..results.colour_prior import ColourPriorResult
from ..runs.store import RunStore, model_identity
from ..scoring.match_metrics import bootstrap_ci
from ..scoring.schedule import dc_grid

CHANCE = 1 / len(COLOURS)


def class_prompts() -> list[str]:
    """The class-name prompts without colour words ("a shirt", "an ankle boot")."""
    return [describe([Item(c, n, COLOURS[0], "centre", 0)], colours=False) for c, n in enumerate(CLASS_NAMES)]


def _tints(c: int, src: int, images: np.ndarray) -> list[np.ndarray]:
    return [make_scene([Item(c, CLASS_NAMES[c], col, "centre", src)], [images[src]]).image for col in COLOURS]


def _picks(labels: np.ndarray, per_class: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(CLASS_NAMES))]


def diffusion_choices(bb, prompts: list[str], per_class: int, seed: int, n_timesteps: int = 10) -> list[list[str]]:
    """Per class: the preferred tint of each of `per_class` seeded test items (implicit-classifier score)."""
    images, labels, _ = load_shipped_subset()
    g = torch.Generator().manual_seed(seed)
    size, n = bb.info.image_size, len(COLOURS)
    null, out = bb.null_condition()[None], []  # [1, tokens, width], like one row of conditions()
    ts = dc_grid(bb.info.num_train_timesteps, n_timesteps)
    for c, picks in enumerate(_picks(labels, per_class, seed)[: len(prompts)]):
        cond = bb.conditions([prompts[c]])
        choice = []
        for src in picks:
            x0 = bb.encode(torch.stack([array_to_tensor(t, size, 3) for t in _tints(c, int(src), images)]))
            gain = torch.zeros(n)
            for t in ts:
                noise = torch.randn((1, *x0.shape[1:]), generator=g).to(x0.device).expand_as(x0)  # CPU draws
                tt = torch.full((2 * n,), t, dtype=torch.long, device=x0.device)
                x_t = bb.add_noise(x0, noise, tt[:n]).repeat(2, 1, 1, 1)
                conds = torch.cat([cond.expand(n, *cond.shape[1:]), null.expand(n, *null.shape[1:])])
                err = (bb.predict_eps(x_t, tt, conds) - noise.repeat(2, 1, 1, 1)).pow(2).mean((1, 2, 3))
                gain += (err[n:] - err[:n]).cpu()
            choice.append(COLOURS[int(gain.argmax())])
        out.append(choice)
    return out


def contrastive_choices(bb, prompts: list[str], per_class: int, seed: int) -> list[list[str]]:
    """Per class: the preferred tint of each of `per_class` seeded test items (cosine to the prompt)."""
    images, labels, _ = load_shipped_subset()
    text = bb.conditions(prompts)
    size, out = bb.info.image_size, []
    for c, picks in enumerate(_picks(labels, per_class, seed)[: len(prompts)]):
        choice = []
        for src in picks:
            emb = bb.encode(torch.stack([array_to_tensor(t, size, 3) for t in _tints(c, int(src), images)]))
            choice.append(COLOURS[int((emb @ text[c]).argmax())])
        out.append(choice)
    return out


@dataclass(frozen=True)
class ColourPriorConfig(ConfigMixin):
    """`per_class` seeded test items per class (`seed`), each scored at `n_timesteps` evenly spaced t (diffusion
    models; a contrastive model has none)."""

    config_label = "colour prior config"

    per_class: int = 8
    seed: int = 0
    n_timesteps: int = 10


def colour_prior(backbone, per_class: int = 8, seed: int = 0, n_timesteps: int = 10, *,
                 out: str | Path | None = None) -> ColourPriorResult:  # fmt: skip
    """How strongly `backbone` ties class names to class colours: {"share" (class colour chosen, mean over
    items), "ci95", "per_class" shares, "choices" (per class, per item), "correct" (per item, class-major),
    "prompts", "chance"}, as a `ColourPriorResult` (that dict, with `metrics()`).

    With `out` the result is stored there (run.json guards model, items and t) and a rerun reads it back; the
    measurement is short and its noise is drawn in sequence, so it is stored whole, not per item."""
    contrastive = Capability.MATCH in backbone.capabilities  # it scores the colours without noise
    cfg = ColourPriorConfig(per_class, seed, n_timesteps)
    identity = {"model": model_identity(backbone.info)} | ({"n_timesteps": None} if contrastive else {})
    store = RunStore(out, "colour_prior", cfg, identity=identity) if out is not None else None
    prompts = class_prompts()
    try:
        done = {r["image_id"]: r for r in store.records()} if store else {}
        if len(done) == len(prompts):
            choices = [done[p]["choices"] for p in prompts]
        else:
            with torch.inference_mode():
                if contrastive:
                    choices = contrastive_choices(backbone, prompts, per_class, seed)
                else:
                    choices = diffusion_choices(backbone, prompts, per_class, seed, n_timesteps)
            if store:
                store.append({"image_id": p, "class_colour": class_colour(c), "choices": ch}
                             for c, (p, ch) in enumerate(zip(prompts, choices, strict=True)))  # fmt: skip
    finally:
        if store:
            store.close()
    correct = [float(h == class_colour(c)) for c, ch in enumerate(choices) for h in ch]
    lo, hi = bootstrap_ci(np.array(correct))
    return ColourPriorResult({"share": float(np.mean(correct)), "ci95": [lo, hi],
                              "per_class": [float(np.mean([h == class_colour(c) for h in ch])) for c, ch in enumerate(choices)],
                              "choices": choices, "correct": correct, "prompts": prompts, "chance": CHANCE}, out)  # fmt: skip
