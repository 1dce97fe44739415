"""Hierarchical diffusion classification (HDC, arXiv 2411.12073) through its first entry points: `tree_search`
and `TreeStage` run the tree search of `scoring.search.tree` with an `AdaptiveConfig` deciding each level."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import AdaptiveConfig
from .engine import ScoringEngine
from .label_tree import LabelTree
from .search import Inputs, Tree, TreeScores, from_adaptive

__all__ = ["TreeScores", "TreeStage", "tree_search"]


def tree_search(
    engine: ScoringEngine,
    x0: torch.Tensor,
    keys: list[str],
    conds: torch.Tensor,
    tree: LabelTree,
    cfg: AdaptiveConfig,
    beam: int = 1,
    groups: list[list[int]] | None = None,
    candidates: list[list[int]] | None = None,
    weights=None,
) -> list[TreeScores]:
    """HDC over a chunk of images, each level decided by the strategy of `cfg` (see `search.tree.Tree`);
    `candidates[i]` restricts image i (a cascade's shortlist); `weights`: learned timestep weights."""
    search = Tree(tree, beam, from_adaptive(cfg, weights=False).build())
    return search(Inputs(engine, x0, conds, groups, weights), keys, candidates)


@dataclass
class TreeStage:
    """A tree search as a stage of a cascade (`cascade.Cascade`'s `decide`, or its `shortlist`): the fields of
    `cascade.Stage` plus the tree and the beam. A cascade's shortlist restricts the search (`candidates`)."""

    engine: ScoringEngine
    x0: torch.Tensor
    conds: torch.Tensor
    tree: LabelTree
    groups: list[list[int]] | None = None
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    beam: int = 1
    weights: object = None  # learned timestep weights (`scoring.timestep_weights`)

    @property
    def inputs(self) -> Inputs:
        return Inputs(self.engine, self.x0, self.conds, self.groups, self.weights)

    @property
    def search(self) -> Tree:
        return Tree(self.tree, self.beam, from_adaptive(self.adaptive, weights=False).build())

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[TreeScores]:
        return self.search(self.inputs, keys, candidates)
