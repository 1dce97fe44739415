"""Exhaustive search: every candidate at `n_timesteps` t (Li et al.'s official evenly spaced grid)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check_choice
from ..config import check_count
from .base import Chunk, GridConfig, GridSearch, ImageScores, decided, register


@register
@dataclass(frozen=True)
class ExhaustiveConfig(GridConfig):
    """`n_timesteps` t per candidate: `even` (the official grid) or `stratified` (one random t per stratum,
    seeded per image); with learned weights, their top `n_timesteps`."""

    kind = "exhaustive"

    n_timesteps: int = 20
    timesteps: str = "even"

    def __post_init__(self):
        super().__post_init__()
        check_choice("timesteps", self.timesteps, ("even", "stratified"))
        check_count("n_timesteps", self.n_timesteps)

    def grid_sizes(self) -> list[int]:
        return [self.n_timesteps]

    def build(self, ctx=None) -> Exhaustive:
        return Exhaustive(self)


class Exhaustive(GridSearch):
    def search(self, chunk: Chunk, results: list[ImageScores]) -> None:
        n, alive = self.config.n_timesteps, [chunk.alive(i) for i in range(len(chunk.keys))]
        chunk.run([(i, c, t) for i, k in enumerate(chunk.keys) if not decided(alive[i]) for c in alive[i]
                   for t in chunk.timesteps(k, n, self.config)], results)  # fmt: skip
