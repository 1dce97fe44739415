"""Hierarchical diffusion classification (HDC, arXiv 2411.12073): score the coarse nodes of a label tree
(`label_tree.LabelTree`) first and expand only the best branches, so a large label space costs calls per
level, not per candidate.

`tree_search` walks the tree level by level with `adaptive.evaluate` at each level, so exhaustive, halving
and t-test each decide within a level, with the same engine and the same noise keyed by (seed, image, t).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DiffdiscError
from .adaptive import ImageScores, decided, evaluate
from .config import AdaptiveConfig
from .engine import ScoringEngine
from .label_tree import LabelTree, TreeNode, node_conditions


@dataclass
class TreeScores(ImageScores):
    """One image's search, on the leaf scale: `errors`, `level`, `n_calls` and the ranking are over the
    candidates (leaves), as for any strategy; what was spent above the leaves is kept beside them.

    node_errors / node_calls: internal node id (`LabelTree.internal`) -> t -> error, and its U-Net calls.
    expanded: the internal nodes opened, in order. `calls` counts both (every call at every level).
    """

    node_errors: dict[int, dict[int, float]] = field(default_factory=dict)
    node_calls: dict[int, int] = field(default_factory=dict)
    expanded: list[int] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(self.n_calls) + sum(self.node_calls.values())


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
    """HDC over a chunk of images: from the root's children down, each level scores the children of every
    image's kept nodes with `evaluate` (strategy `cfg`) and keeps the best `beam` per image.

    A level is scored only when it has a choice to make (more nodes than `beam`) or holds only leaves, two or
    more (the leaves need scores of their own); a level narrowed to one node (a one-child node, a shortlist
    leaving one leaf) is decided (`adaptive.decided`: nothing scored, nothing charged; a lone leaf never
    scored takes all the probability). A leaf kept beside internal nodes goes on to the next level and is
    scored again there (its calls counted again, its errors those of its last level). The search of an image
    ends at the first level whose kept nodes are all leaves. Ranking: that level's leaves in its order, then
    the nodes dropped at earlier levels, latest level first, each in its level's order, a dropped internal
    node's leaves in the tree's order under it; `candidates[i]` (a cascade's shortlist) restricts image i to
    the nodes with a leaf in it, the others ranked last. When no level above the leaves has more than `beam`
    nodes (a two-level tree, `beam` = its number of top-level nodes), nothing is pruned above the leaves and
    they are scored exactly as `evaluate` scores them alone. `weights`: learned timestep weights, at every level.
    """
    if beam < 1:
        raise DiffdiscError(f"beam must be >= 1, got {beam}")
    groups = groups or [[p] for p in range(conds.shape[0])]
    M = tree.n_leaves
    if len(groups) != M:
        raise DiffdiscError(f"the tree has {M} leaves but there are {len(groups)} candidates")
    flat_conds, flat_groups = node_conditions(engine.backbone, tree, conds, groups)
    allowed = [set(c) for c in candidates] if candidates is not None else None

    def flat(node):
        return node.leaf if node.is_leaf else M + node.id

    def alive(i, node):
        return allowed is None or any(c in allowed[i] for c in node.leaves())

    N = len(keys)
    out = [TreeScores(k, M, weights=weights) for k in keys]
    rows: list[dict[int, dict[int, float]]] = [{} for _ in keys]  # leaf -> its last level's errors
    frontier = [[ch for ch in tree.root.children if alive(i, ch)] for i in range(N)]
    dropped: list[list[list[TreeNode]]] = [[] for _ in keys]
    final: list[list[TreeNode]] = [[] for _ in keys]
    while any(frontier):
        need = [i for i, f in enumerate(frontier)
                if not decided(f) and (len(f) > beam or all(n.is_leaf for n in f))]  # fmt: skip
        ranked = {}
        if need:
            res = evaluate(engine, x0[need], [keys[i] for i in need], flat_conds, cfg, flat_groups,
                           candidates=[sorted(flat(n) for n in frontier[i]) for i in need], weights=weights)  # fmt: skip
            for i, r in zip(need, res, strict=True):
                by_flat = {flat(n): n for n in frontier[i]}
                ranked[i] = [by_flat[c] for c in r.ranking() if c in by_flat]
                for c, row in r.errors.items():
                    if c < M:
                        rows[i][c] = dict(row)
                        out[i].n_calls[c] += r.n_calls[c]
                    else:
                        out[i].node_errors[c - M] = dict(row)
                        out[i].node_calls[c - M] = out[i].node_calls.get(c - M, 0) + r.n_calls[c]
        for i in range(N):
            if not frontier[i]:
                continue
            order = ranked.get(i, frontier[i])
            kept = order[:beam]
            dropped[i].append(order[beam:])
            if all(n.is_leaf for n in kept):
                final[i], frontier[i] = kept, []
                continue
            nxt = []
            for n in kept:
                if n.is_leaf:
                    nxt.append(n)
                else:
                    out[i].expanded.append(n.id)
                    nxt += [ch for ch in n.children if alive(i, ch)]
            frontier[i] = nxt
    for i, r in enumerate(out):
        order = [n.leaf for n in final[i]]
        for level in reversed(dropped[i]):
            order += [c for n in level for c in n.leaves() if allowed is None or c in allowed[i]]
        placed = set(order)
        order += [c for c in range(M) if c not in placed]  # outside the image's shortlist
        for c, row in sorted(rows[i].items()):
            for t, e in row.items():
                r.add(c, t, e, calls=0)
        for pos, c in enumerate(order):
            r.level[c] = M - pos  # the search's order, exactly (`ranking` sorts by level first)
    return out


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

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[TreeScores]:
        return tree_search(self.engine, self.x0, keys, self.conds, self.tree, self.adaptive, self.beam, self.groups,
                           candidates, self.weights)  # fmt: skip

    def unet_calls(self, r: TreeScores) -> int:
        """U-Net calls spent on one image, above the leaves included."""
        return r.calls

    def forwards(self, r: TreeScores) -> int:
        return 0 if self.engine.needs_timesteps else 1
