"""Cascades of scorers: a cheap stage shortlists each image's candidates, an expensive stage decides among them.

For large label spaces the expensive scorer (a diffusion model, tens of U-Net calls per candidate) need not
see every candidate: a cheap one (a contrastive model, no U-Net calls; or the same diffusion model at one
timestep) ranks all of them and only its top `keep` go on, under the expensive stage's own strategy. Each
stage is a scorer (an engine on its own backbone) with its own encoding of the images and conditions of the
same candidates, so any two scorers compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .adaptive import ImageScores, evaluate
from .config import AdaptiveConfig
from .engine import ScoringEngine


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

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[ImageScores]:
        return evaluate(self.engine, self.x0, keys, self.conds, self.adaptive, self.groups, candidates)


@dataclass
class Cascade:
    """`shortlist` ranks every candidate; its best `keep` per image go to `decide`.

    The result is one `ImageScores` per image on the deciding stage's scale: its ranking is the decider's
    ranking of the shortlist, then the rest in the shortlisting stage's order (they were never scored by the
    decider: score inf). `n_calls` adds both stages' U-Net calls.
    """

    shortlist: Stage
    decide: Stage
    keep: int

    def __call__(self, keys: list[str]) -> list[ImageScores]:
        first = self.shortlist.evaluate(keys)
        lists = [r.ranking()[: self.keep] for r in first]
        final = self.decide.evaluate(keys, candidates=lists)
        for cheap, r, kept in zip(first, final, lists, strict=True):
            for place, c in enumerate(cheap.ranking()):
                r.n_calls[c] += cheap.n_calls[c]
                if c not in kept:  # below every shortlisted candidate (levels >= 0), in the cheap stage's order
                    r.level[c] = -1 - place
        return final
