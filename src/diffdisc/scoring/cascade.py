"""Cascades of scorers through their first entry points: `Stage` (an engine, a chunk's inputs and an
`AdaptiveConfig`), `Cascade(shortlist, decide, keep)` over two stages. The cascade itself is
`scoring.search.cascade.Cascade`; a features head as the cheap stage is `features.shortlist.HeadStage`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .config import AdaptiveConfig
from .engine import ScoringEngine
from .search import Cascade as CascadeSearch
from .search import Inputs, Search, from_adaptive
from .search.base import ImageScores
from .timestep_weights import TimestepWeights


@dataclass
class Stage:
    """One scorer of a cascade: its engine, the chunk's images and the candidates' conditions in its backbone's
    space (`backbone.encode`, `backbone.conditions`; `groups[c]` = conditions of candidate c, the same candidates
    in the same order in every stage), and the strategy it scores with."""

    engine: ScoringEngine
    x0: torch.Tensor
    conds: torch.Tensor
    groups: list[list[int]] | None = None
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    weights: TimestepWeights | None = None  # learned timestep weights (`scoring.timestep_weights`)

    @property
    def inputs(self) -> Inputs:
        return Inputs(self.engine, self.x0, self.conds, self.groups, self.weights)

    @property
    def search(self) -> Search:
        return from_adaptive(self.adaptive, weights=False).build()

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[ImageScores]:
        return self.search(self.inputs, keys, candidates)


@dataclass
class Shortlisted:
    """One image through a cascade. `scores` is on the deciding stage's scale (its `n_calls` hold both stages'
    per-candidate calls, its `calls` every U-Net call the image cost); `shortlist` the cheap stage's top `keep`,
    best first; `cheap_calls` the U-Net calls of the cheap stage, `cheap_forwards` its other forwards."""

    scores: ImageScores
    shortlist: list[int]
    cheap_calls: int
    cheap_forwards: int

    @property
    def calls(self) -> int:
        return self.scores.calls


@dataclass
class Cascade:
    """`shortlist` (any scorer with `evaluate(keys, candidates)`) ranks every candidate; its best `keep` per
    image go to `decide` (a `Stage` or `hierarchy.TreeStage`): `search.cascade.Cascade` over them."""

    shortlist: object
    decide: Stage
    keep: int

    def __call__(self, keys: list[str]) -> list[ImageScores]:
        return [s.scores for s in self.run(keys)]

    def run(self, keys: list[str]) -> list[Shortlisted]:
        """As `__call__`, with each image's shortlist and what the cheap stage cost."""
        search = CascadeSearch(self.keep, None, self.decide.search)
        res = search(replace(self.decide.inputs, cheap=self.shortlist), keys)
        return [Shortlisted(r, r.record["shortlist"], r.record["shortlist_calls"], r.record["contrastive_forwards"])
                for r in res]  # fmt: skip
