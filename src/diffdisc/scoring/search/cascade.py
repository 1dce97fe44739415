"""Cascades: a cheap scorer shortlists each image's candidates, an expensive strategy decides among them.

For large label spaces the expensive scorer (tens of U-Net calls per candidate) need not see every candidate:
a cheap one (a contrastive model, no U-Net calls; the same diffusion model at a few timesteps; a features head,
one U-Net forward per image) ranks all of them and only its top `keep` go on to `decide`. The cascade receives
its cheap scorer with the chunk (`Inputs.cheap`: anything with `evaluate(keys, candidates)`, e.g. another
model's inputs bound to `shortlist`); without one, `shortlist` runs on the deciding inputs themselves.

A true class the cheap stage ranks below `keep` is lost: the decider never sees it, the image counts as wrong.
Both stages' costs are charged to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...errors import DiffdiscError
from .base import Bound, ImageScores, Inputs, Search, SearchConfig, register
from .exhaustive import ExhaustiveConfig


@register
@dataclass(frozen=True)
class CascadeConfig(SearchConfig):
    """`keep` candidates per image pass from the cheap stage (searched by `shortlist`) to `decide`."""

    kind = "cascade"

    keep: int = 5
    shortlist: SearchConfig = ExhaustiveConfig(n_timesteps=2)
    decide: SearchConfig = ExhaustiveConfig()

    def __post_init__(self):
        if self.keep < 1:
            raise DiffdiscError(f"shortlist must keep at least 1 candidate per image, got {self.keep}")

    def children(self) -> list[SearchConfig]:
        return [self.decide]  # the shortlist scores the cheap stage's inputs, not the decider's

    def build(self, ctx=None) -> Cascade:
        return Cascade(self.keep, self.shortlist.build(ctx), self.decide.build(ctx))


class Cascade(Search):
    """The result is one `ImageScores` per image on the deciding stage's scale: the decider's ranking of the
    shortlist, then the rest in the cheap stage's order (never scored by the decider: score inf), `n_calls`
    adding both stages' calls. With `keep` 1 there is nothing left to decide: the decider is not called and
    the result is the cheap stage's own. `record`: the shortlist and what the cheap stage cost."""

    def __init__(self, keep: int, shortlist: Search | None, decide: Search):
        self.keep, self.shortlist, self.decide = keep, shortlist, decide  # shortlist None: `Inputs.cheap` only

    def children(self) -> list[Search]:
        return [self.decide]

    def __call__(self, inputs: Inputs, keys: list[str], allowed: list[list[int]] | None = None) -> list[ImageScores]:
        # the same model's shortlist scores at its own timesteps, not at a learned order meant for the decider
        cheap = inputs.cheap
        if cheap is None:
            if self.shortlist is None:
                raise DiffdiscError("this cascade has no cheap stage of its own: give one with the inputs (Inputs.cheap)")
            cheap = Bound(replace(inputs, weights=None), self.shortlist)
        first = cheap.evaluate(keys, allowed)
        lists = [[c for c in r.ranking() if allowed is None or c in allowed[i]][: self.keep] for i, r in enumerate(first)]
        if self.keep == 1:
            for r, kept in zip(first, lists, strict=True):
                r.record = _record(kept, r)
            return first
        final = self.decide(replace(inputs, cheap=None), keys, lists)
        for cheap_r, r, kept in zip(first, final, lists, strict=True):
            for place, c in enumerate(cheap_r.ranking()):
                r.n_calls[c] += cheap_r.n_calls[c]
                if c not in kept:  # below every shortlisted candidate (levels >= 0), in the cheap stage's order
                    r.level[c] = -1 - place
            r.unattributed_calls += cheap_r.unattributed_calls
            r.record = _record(kept, cheap_r)
        return final


def _record(kept: list[int], cheap: ImageScores) -> dict:
    return {"shortlist": kept, "shortlist_calls": cheap.calls, "contrastive_forwards": cheap.forwards}
