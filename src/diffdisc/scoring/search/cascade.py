"""Cascades: a cheap scorer shortlists each image's candidates, an expensive strategy decides among them.

For large label spaces the expensive scorer (tens of U-Net calls per candidate) need not see every candidate:
a cheap one (a contrastive model, no U-Net calls; the same diffusion model at a few timesteps; a features head,
one U-Net forward per image) ranks all of them and only its top `keep` go on to `decide`. The cascade receives
its cheap scorer with the chunk (`Inputs.cheap`: anything with `evaluate(keys, candidates)`, e.g. another
model's inputs bound to `shortlist`); without one, `shortlist` runs on the deciding inputs themselves, and then
on the decider's own grid where it can (`CascadeConfig.decider_grid`: the t a halving stage of that size would
score), so the decider reuses those errors: a kept candidate costs the decider only the t it lacks.

A true class the cheap stage ranks below `keep` is lost: the decider never sees it, the image counts as wrong.
Both stages' costs are charged to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...errors import DiffdiscError
from ..schedule import stage_subset
from ..timestep_weights import ordered_grid
from .base import (
    Bound,
    Chunk,
    GridConfig,
    GridSearch,
    ImageScores,
    Inputs,
    Search,
    SearchConfig,
    decided,
    register,
)
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

    def decider_grid(self) -> GridConfig | None:
        """The decider's config when its own cheap stage (the same model) can score on the decider's grid: an even
        exhaustive shortlist of n t before a grid strategy of at least n t on the same σ placement. None: the
        shortlist keeps its own grid (a tree or the t-test decides: no one grid; fewer than n t; another σ)."""
        s, d = self.shortlist, self.decide
        if not (isinstance(s, ExhaustiveConfig) and s.timesteps == "even" and isinstance(d, GridConfig)):
            return None
        return d if d.sigmas == s.sigmas and s.n_timesteps <= max(d.grid_sizes(), default=0) else None

    def own_stage(self, ctx=None) -> Search:
        """The search of its cheap stage when that is the same model (`own_bound`): on the decider's grid if it can."""
        grid = self.decider_grid()
        return self.shortlist.build(ctx) if grid is None else DeciderStage(self.shortlist.n_timesteps, grid)

    def build(self, ctx=None) -> Cascade:
        return Cascade(self.keep, self.own_stage(ctx), self.decide.build(ctx))


class DeciderStage(GridSearch):
    """A same-model cheap stage on its decider's grid: every candidate at the `n` t a halving stage of n would
    score there (`stage_subset` of the decider's largest grid, centred strata; with learned weights their top n),
    so the shortlist is the decider's own first stage: before halving, the same as halving's."""

    def __init__(self, n: int, decide: GridConfig):
        super().__init__(decide)
        self.n = n

    def search(self, chunk: Chunk, results: list[ImageScores]) -> None:
        big, plan = max(self.config.grid_sizes()), []
        for i, k in enumerate(chunk.keys):
            if decided(alive := chunk.alive(i)):
                continue
            if chunk.weights is not None:  # the decider's stage of n is the learned order's top n
                ts = ordered_grid(chunk.weights, self.n)
            else:
                ts = stage_subset(chunk.timesteps(k, big, self.config), self.n)
            plan += [(i, c, t) for c in alive for t in ts]
        chunk.run(plan, results)


class Cascade(Search):
    """The result is one `ImageScores` per image on the deciding stage's scale: the decider's ranking of the
    shortlist, then the rest in the cheap stage's order (never scored by the decider: score inf), `n_calls`
    adding both stages' calls: a grid decider reuses the errors of a cheap stage on its own inputs (`shared`), so
    each (candidate, t) is computed and charged once. With `keep` 1 there is nothing left to decide: the decider
    is not called and the result is the cheap stage's own. `record`: the shortlist and what the cheap stage cost."""

    def __init__(self, keep: int, shortlist: Search | None, decide: Search):
        self.keep, self.shortlist, self.decide = keep, shortlist, decide  # shortlist None: `Inputs.cheap` only

    def children(self) -> list[Search]:
        return [self.decide]

    def __call__(self, inputs: Inputs, keys: list[str], allowed: list[list[int]] | None = None) -> list[ImageScores]:
        cheap = inputs.cheap
        if cheap is None:
            if self.shortlist is None:
                raise DiffdiscError("this cascade has no cheap stage of its own: give one with the inputs (Inputs.cheap)")
            cheap = own_bound(self.shortlist, inputs)
        first = cheap.evaluate(keys, allowed)
        # (candidate, t) means the same for a grid decider (a tree's candidates are its nodes): its errors are reused
        reuse = getattr(cheap, "shared", False) and isinstance(self.decide, GridSearch)
        lists = [[c for c in r.ranking() if allowed is None or c in allowed[i]][: self.keep] for i, r in enumerate(first)]
        if self.keep == 1:
            for r, kept in zip(first, lists, strict=True):
                r.record = _record(kept, r)
            return first
        final = self.decide(replace(inputs, cheap=None, known=first if reuse else None), keys, lists)
        for cheap_r, r, kept in zip(first, final, lists, strict=True):
            for place, c in enumerate(cheap_r.ranking()):
                r.n_calls[c] += cheap_r.n_calls[c]
                if c not in kept:  # below every shortlisted candidate (levels >= 0), in the cheap stage's order
                    r.level[c] = -1 - place
            r.unattributed_calls += cheap_r.unattributed_calls
            r.record = _record(kept, cheap_r)
        return final


def own_bound(search: Search, inputs: Inputs) -> Bound:
    """A same-model cheap stage bound to the deciding `inputs` (`shared`). On the decider's grid it scores as the
    decider (its learned weights too); on its own grid, not at a learned order meant for the decider."""
    return Bound(inputs if isinstance(search, DeciderStage) else replace(inputs, weights=None), search, shared=True)


def _record(kept: list[int], cheap: ImageScores) -> dict:
    return {"shortlist": kept, "shortlist_calls": cheap.calls, "contrastive_forwards": cheap.forwards}
