"""Fitting learned noise (`scoring.learned_noise`) on labelled training images, and checking it.

Some of the images are held out (stratified, seeded) before fitting: on them the learned noise is compared with
the random noise `classify` would draw for those images (same seed, same timesteps, plain mean over the
timesteps), so the file says whether it helps on images it was not fitted on. Only training images belong here:
the noise is chosen on them, so accuracy measured on them would be optimistic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..backbones.capabilities import Capability, require
from ..config import ConfigMixin, check_choice
from ..data.folders import ImageDataset, open_image_dataset, stratified_subset
from ..data.images import to_tensor
from ..errors import DiffdiscError
from ..scoring.calibrate import temperature_key
from ..scoring.config import AdaptiveConfig, ScoreConfig
from ..scoring.engine import ScoringEngine, derive_seed
from ..scoring.learned_noise import LearnedNoise, data_identity, fit_noise, noise_stats
from ..scoring.schedule import (
    SIGMA_GRIDS,
    _timestep_spec,
    check_sigma_grid,
    dc_grid,
    sigma_rows,
    stage_subset,
)
from ..scoring.scorers import DenoiseScorer, make_scorer
from ..scoring.search import from_adaptive
from ..scoring.search.base import GridConfig
from .candidates import build_candidates

REPORT_IMAGES = 64  # fitting images the loss before / after is reported on (2 × their forwards per t)


@dataclass(frozen=True)
class NoiseFitConfig(ConfigMixin):
    """What `fit_learned_noise` does: `timesteps` (a count N: the N evenly spaced t classify places, on σ by
    `sigmas`; or a tuple of t), `max_images` labelled images (None: all; stratified, seeded by `seed`), of which
    `holdout` (a share of each class) check the result; Adam for `steps` steps of `batch_images` images at
    learning rate `lr` per timestep; `score`'s scorer / loss / weighting (its seed is the random noise compared
    with and the start of θ). `classes`, `templates`, `labels_csv` mean what they mean to classify."""

    config_label = "noise fit config"

    timesteps: int | tuple[int, ...] = 10
    max_images: int | None = None
    seed: int = 0
    steps: int = 50
    lr: float = 0.05
    batch_images: int = 16
    holdout: float = 0.2
    score: ScoreConfig = ScoreConfig()
    sigmas: str = "scheduler"
    classes: tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None
    labels_csv: str | Path | None = None

    def __post_init__(self):
        check_choice("sigmas", self.sigmas, SIGMA_GRIDS)
        spec = self.timesteps if isinstance(self.timesteps, int) else tuple(int(t) for t in self.timesteps)
        object.__setattr__(self, "timesteps", spec)
        if (isinstance(spec, int) and spec < 1) or (not isinstance(spec, int) and not spec):
            raise DiffdiscError(f"learned noise needs at least one timestep, got {self.timesteps!r}")
        if self.steps < 1 or self.batch_images < 1 or self.lr <= 0:
            raise DiffdiscError(
                f"steps and batch_images must be >= 1 and lr > 0, got {self.steps}, {self.batch_images}, {self.lr}"
            )
        if not 0 <= self.holdout < 1:
            raise DiffdiscError(f"holdout must be a share in [0, 1), got {self.holdout}")
        if self.max_images is not None and self.max_images < 2:
            raise DiffdiscError(f"max_images must be >= 2, got {self.max_images}")
        for name in ("classes", "templates"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                object.__setattr__(self, name, tuple(v))


def noise_timesteps(backbone, spec, sigmas: str = "scheduler") -> list[int]:
    """The timesteps a noise is fitted at: a count N is the grid classify's `--timesteps N` scores (placed on σ by
    `sigmas`), a list is itself."""
    spec = _timestep_spec(spec) if isinstance(spec, str) else spec
    T = backbone.num_train_timesteps
    if not isinstance(spec, int):
        ts = [int(t) for t in spec]
        if bad := [t for t in ts if not 0 <= t < T]:
            raise DiffdiscError(f"timesteps {bad} outside 0..{T - 1} of {backbone.info.name}")
        return ts
    grid = dc_grid(T, spec)
    return grid if sigmas == "scheduler" else sigma_rows(backbone.process.sigmas, grid, sigmas)


def fit_learned_noise(backbone, data: str | Path | ImageDataset, config: NoiseFitConfig | None = None, *,
                      out: str | Path | None = None, progress: Callable[[dict], None] | None = None,
                      **overrides) -> LearnedNoise:  # fmt: skip
    """Fit one noise per timestep on the labelled images of `data` (less the held-out share), check it on the
    held-out ones against random noise, and save it to `out` (.safetensors) when given."""
    cfg = replace(config or NoiseFitConfig(), **overrides)
    require(backbone, Capability.DENOISE, "learned noise (`diffdisc noise fit`)")
    scorer = make_scorer(backbone, cfg.score)
    if not isinstance(scorer, DenoiseScorer):
        raise DiffdiscError(f"learned noise is fitted for the denoise scorer, not {cfg.score.scorer!r}")
    check_sigma_grid(backbone, cfg.sigmas)
    ts = noise_timesteps(backbone, cfg.timesteps, cfg.sigmas)
    ds = data if isinstance(data, ImageDataset) else open_image_dataset(data, cfg.labels_csv)
    classes = cfg.classes or (
        ds.class_names if ds.class_names and backbone.info.conditioning == "text" else None
    )
    cand = build_candidates(backbone, classes, cfg.templates)
    labels = ds.label_index(cand.classes)
    keep = [
        i
        for i in stratified_subset(labels, cfg.max_images, cfg.seed)
        if labels[i] is not None and labels[i] >= 0
    ]
    if len(keep) < 2 or len({labels[i] for i in keep}) < 2:
        raise DiffdiscError("fitting learned noise needs labelled training images of at least 2 classes "
                            "(an ImageFolder, or a flat folder with --labels)")  # fmt: skip
    fit_idx, held_idx = _split(keep, labels, cfg.holdout, cfg.seed)
    size, ch = backbone.info.image_size, backbone.info.image_channels
    x0 = backbone.encode(torch.stack([to_tensor(ds.open(ds.items[i]), size, ch) for i in keep]))
    pos = {i: k for k, i in enumerate(keep)}
    conds = backbone.conditions(cand.keys)
    shape = tuple(x0.shape[1:])
    init = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(cfg.score.seed, "", t)))
                        for t in ts])  # fmt: skip
    y = torch.as_tensor([labels[i] for i in keep])
    fi = torch.as_tensor([pos[i] for i in fit_idx])
    with torch.enable_grad():
        eps, hist = fit_noise(scorer, x0[fi], y[fi], conds, cand.groups, ts, init, steps=cfg.steps, lr=cfg.lr,
                              batch_images=cfg.batch_images, micro_batch=max(cfg.score.batch_size, 1), seed=cfg.seed,
                              report_images=REPORT_IMAGES, progress=progress)  # fmt: skip
    model = {
        "name": backbone.info.name,
        "label": backbone.info.label,
        "fingerprint": backbone.info.fingerprint,
    }
    noise = LearnedNoise(
        model=model, score=temperature_key(cfg.score), sigmas=cfg.sigmas, timesteps=ts, noise=eps, fit={}
    )
    check = None
    if held_idx:
        hi = [pos[i] for i in held_idx]
        check = heldout_check(backbone, cfg.score, noise, x0[hi], [ds.items[i].image_id for i in held_idx],
                              conds, cand.groups, y[hi].numpy())  # fmt: skip
    root = getattr(ds, "root", None)
    noise.fit = {
        "data": str(Path(root).resolve()) if root else None,
        "identity": data_identity([(ds.items[i].image_id, int(labels[i])) for i in keep]),
        "images": len(fit_idx), "held_out": len(held_idx), "classes": cand.classes,
        "steps": cfg.steps, "lr": cfg.lr, "batch_images": cfg.batch_images, "seed": cfg.seed,
        "score": cfg.score.to_dict(), **hist, "stats": noise_stats(eps), "check": check,
        "how": "ε_t = phases of θ_t with unit magnitude at every frequency (flat white spectrum: unit variance); "
               "θ_t by Adam on the cross-entropy of softmax(-(errors - mean)/τ_t) over the candidates",
    }  # fmt: skip
    if out is not None:
        noise.save(out)
    return noise


def _split(keep: list[int], labels, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, held out): round(holdout × n_c) of each class's images held out (seeded), at least one image left
    to fit per class."""
    if holdout <= 0:
        return keep, []
    rng = np.random.default_rng(seed + 1)
    held: list[int] = []
    for c in sorted({labels[i] for i in keep}):
        mine = [i for i in keep if labels[i] == c]
        k = min(int(round(holdout * len(mine))), len(mine) - 1)
        held += [mine[j] for j in rng.permutation(len(mine))[:k]]
    held_set = set(held)
    return [i for i in keep if i not in held_set], sorted(held)


def heldout_check(backbone, score: ScoreConfig, noise: LearnedNoise, x0, keys, conds, groups, y) -> dict:
    """Accuracy on held-out images with the learned noise and with classify's random noise (per image and t,
    seeded by `score.seed`), at each budget n: the n evenly spread of the noise's timesteps, plain mean."""
    out = {"images": len(keys)}
    ts = noise.timesteps
    for name, learned in (("learned", noise), ("random", None)):
        with ScoringEngine(backbone, score, noise=learned) as eng:
            e = eng.exhaustive(x0, keys, conds, ts).numpy()  # [N, P, K]
        e = np.stack([e[:, g].mean(1) for g in groups], axis=1)  # [N, M, K]
        out[name] = [float((e[..., stage_subset(list(range(len(ts))), n)].mean(2).argmin(1) == y).mean())
                     for n in range(1, len(ts) + 1)]  # fmt: skip
    out["n"] = list(range(1, len(ts) + 1))
    return out


def recommended(noise: LearnedNoise) -> bool:
    """Whether the held-out check found the learned noise at least as good as random noise (unchecked: no)."""
    chk = noise.fit.get("check")
    return bool(chk) and chk["learned"][-1] >= chk["random"][-1]


def verdict(noise: LearnedNoise) -> str:
    """The held-out comparison in plain words."""
    chk = noise.fit.get("check")
    if not chk:
        return "not checked on held-out images (--holdout 0): nothing says it beats random noise"
    a, b, n = chk["learned"][-1], chk["random"][-1], chk["images"]
    k = len(noise.timesteps)
    if a > b:
        return f"learned noise {a:.1%} vs random noise {b:.1%} on {n} held-out training images at all {k} timesteps: it helped"
    if a == b:
        return f"learned noise {a:.1%}, the same as random noise, on {n} held-out training images at {k} timesteps: no gain shown"
    return (f"learned noise {a:.1%} vs random noise {b:.1%} on {n} held-out training images at {k} timesteps: it did "
            "worse there; do not use it (random noise is better)")  # fmt: skip


def search_timesteps(backbone, search, weights=None) -> list[int] | None:
    """Every timestep a search (its deciding levels) may score; None: some are drawn at random per image (the
    t-test without learned weights, stratified grids), so no fixed noise can cover them."""
    T, out = backbone.num_train_timesteps, set()
    for c in search.walk():
        if not isinstance(c, GridConfig):
            continue
        if c.kind == "ttest":
            if weights is None:
                return None
            out |= set(weights.ordered_grid(min(c.max_scores, len(weights.order))))
            continue
        if getattr(c, "timesteps", "even") == "stratified":
            return None
        sizes = c.grid_sizes()
        if weights is not None:
            out |= {t for n in sizes for t in weights.ordered_grid(n)}
            continue
        grid = dc_grid(T, max(sizes))
        grid = grid if c.sigmas == "scheduler" else sigma_rows(backbone.process.sigmas, grid, c.sigmas)
        out |= {t for n in sizes for t in stage_subset(grid, n)}
    return sorted(out)


def load_for_run(path, backbone, score: ScoreConfig, search, weights=None, data=None, extra=()) -> LearnedNoise | None:
    """A run's `--noise` file (None: random noise), refused for another model or score, the folder it was fitted
    on, or when the run's search (a search config, or the flat `AdaptiveConfig`) would score a timestep it has
    no noise for (`extra`: a self shortlist's timesteps)."""
    if not path:
        return None
    if isinstance(search, AdaptiveConfig):
        search = from_adaptive(search, weights=False)
    noise = LearnedNoise.load(path)
    sigmas = next((c.sigmas for c in search.walk() if isinstance(c, GridConfig)), None)
    noise.check(backbone, score, sigmas, data=data)
    ts = search_timesteps(backbone, search, weights)
    if ts is None:
        ttest = any(getattr(c, "kind", "") == "ttest" for c in search.walk())
        what = "the t-test draws its timesteps at random" if ttest else "stratified timesteps are drawn at random"
        raise DiffdiscError(f"{what} per image; a learned noise covers only its {len(noise.timesteps)} timesteps: use "
                            "exhaustive or halving (or, for the t-test, --timestep-weights fitted on those timesteps)")  # fmt: skip
    if miss := noise.missing([*ts, *extra]):
        raise DiffdiscError(noise.uncovered(miss))
    return noise
