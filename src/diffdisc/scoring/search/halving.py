"""Successive halving (Li et al.), with our early exit: stages of growing timestep grids, each keeping the
candidates with the lowest mean error over every t seen so far."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config import check_choice
from ..config import check_non_negative, check_stages
from ..schedule import stage_subset
from ..timestep_weights import ordered_grid
from .base import Chunk, GridConfig, GridSearch, ImageScores, decided, register
from .ttest import paired_timesteps


@register
@dataclass(frozen=True)
class HalvingConfig(GridConfig):
    """`stages` ((n_t, keep), ...): stage grids are centred strata of one grid of max(n_t) points, errors of
    earlier stages reused, the last stage keeps 1. `exit_z` (ours): after any stage, an image whose leader beats
    the runner-up by more than `exit_z` standard errors of their paired differences stops there (0 = off)."""

    kind = "halving"

    stages: tuple[tuple[int, int], ...] = ((10, 3), (20, 1))
    exit_z: float = 0.0
    timesteps: str = "even"

    def __post_init__(self):
        super().__post_init__()
        check_choice("timesteps", self.timesteps, ("even", "stratified"))
        object.__setattr__(self, "stages", check_stages(self.stages))
        check_non_negative("exit_z", self.exit_z)

    def grid_sizes(self) -> list[int]:
        return [n for n, _ in self.stages]

    def build(self, ctx=None) -> Halving:
        return Halving(self)


class Halving(GridSearch):
    def search(self, chunk: Chunk, results: list[ImageScores]) -> None:
        cfg, weights = self.config, chunk.weights
        grids = [chunk.timesteps(k, max(n for n, _ in cfg.stages), cfg) for k in chunk.keys]
        alive = [chunk.alive(i) for i in range(len(chunk.keys))]
        for level, (n, keep) in enumerate(cfg.stages, start=1):
            plan = []
            for i, r in enumerate(results):
                if decided(alive[i]):  # kept 1 (a stage's keep, or the early exit): its later stages cost nothing
                    continue
                stage = ordered_grid(weights, n) if weights is not None else stage_subset(grids[i], n)
                new = [t for t in stage if t not in r.timesteps]
                plan += [(i, c, t) for c in alive[i] for t in new]
            chunk.run(plan, results)
            for i, r in enumerate(results):
                # rank every stage (not only when pruning): the early exit below compares alive[i][0] and [1]
                alive[i] = sorted(alive[i], key=lambda c, r=r: (r.mean(c), c))[:keep]
                if cfg.exit_z > 0 and len(alive[i]) > 1 and decisive(r, alive[i], cfg.exit_z):
                    alive[i] = alive[i][:1]  # early exit: the leader's margin is already decisive
                for c in alive[i]:
                    r.level[c] = level


def decisive(r: ImageScores, ranked: list[int], z: float) -> bool:
    """Leader vs runner-up on their shared timesteps: mean paired difference > z standard errors."""
    a, b = r.errors[ranked[0]], r.errors[ranked[1]]
    shared, f = paired_timesteps([t for t in a if t in b], r.weights)
    if len(shared) < 3:
        return False
    d = np.array([b[t] - a[t] for t in shared])
    if f is not None:
        d = d * f
    se = d.std(ddof=1) / np.sqrt(len(d))
    return bool(d.mean() > z * se) if se > 0 else bool(d.mean() > 0)
