"""Learned timestep order (`diffdisc timesteps fit`): the strategies beneath evaluate the most informative t
first (exhaustive N = the top N, halving's stage n = the top n, the t-test in that order) and average errors
with the learned weights."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..timestep_weights import TimestepWeights
from .base import ImageScores, Inputs, Search, SearchConfig, register
from .exhaustive import ExhaustiveConfig


@register
@dataclass(frozen=True)
class LearnedOrderConfig(SearchConfig):
    """`weights`: a `timesteps fit` file (the run guards its content hash); `inner`: the strategy that uses it.
    Outermost in a composed search, so every level and the final ranking use the same weights."""

    kind = "learned"

    weights: str = ""
    inner: SearchConfig = ExhaustiveConfig()

    def build(self, ctx=None) -> LearnedOrder:
        return LearnedOrder(self.weights, self.inner.build(ctx))


class LearnedOrder(Search):
    """Runs `inner` with the learned weights: those already in the inputs (a run loads and checks them once),
    else the file's. The flat strategies check them against the engine's model, score and σ grid."""

    def __init__(self, path: str, inner: Search):
        self.path, self.inner, self._weights = path, inner, None

    def children(self) -> list[Search]:
        return [self.inner]

    def weights(self) -> TimestepWeights:
        if self._weights is None:
            self._weights = TimestepWeights.load(self.path)
        return self._weights

    def __call__(self, inputs: Inputs, keys: list[str], allowed=None) -> list[ImageScores]:
        w = inputs.weights if inputs.weights is not None else self.weights()
        return self.inner(replace(inputs, weights=w), keys, allowed)
