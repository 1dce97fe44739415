"""Hierarchical search over a label tree (HDC, arXiv 2411.12073): score the coarse nodes first and expand only
the best `beam` per level, so a large label space costs calls per level, not per candidate. Each level is
decided by any strategy (`inner`: exhaustive, halving, t-test, ...), with the same engine and the same noise
keyed by (seed, image, t)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...errors import DiffdiscError
from ..label_tree import LabelTree, TreeNode, load_tree, node_conditions
from .base import ImageScores, Inputs, Search, SearchConfig, SearchContext, decided, register
from .exhaustive import ExhaustiveConfig


@register
@dataclass(frozen=True)
class TreeConfig(SearchConfig):
    """`tree`: `auto` (clustering the candidates' conditions: `branching` children, `top` top-level clusters),
    `wordnet` or a JSON file (`label_tree.load_tree`); `prompt`: a template for the coarse nodes' prompts (else
    the mean of their leaves' conditions); `beam` nodes kept per level; `inner` decides within each level."""

    kind = "tree"

    tree: str = "auto"
    beam: int = 1
    branching: int = 4
    top: int | None = None
    prompt: str | None = None
    inner: SearchConfig = ExhaustiveConfig()

    def __post_init__(self):
        if self.beam < 1:
            raise DiffdiscError(f"beam must be >= 1, got {self.beam}")

    def build(self, ctx: SearchContext | None = None) -> Tree:
        if ctx is None:
            raise DiffdiscError("a tree search is built for a model and its candidates (a SearchContext)")
        tree = load_tree(self.tree, ctx.classes, ctx.backbone, ctx.conds, ctx.groups, branching=self.branching, top=self.top)
        if self.prompt:
            tree.with_prompts(self.prompt)
        return Tree(tree, self.beam, self.inner.build(ctx))


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
        return super().calls + sum(self.node_calls.values())


class Tree(Search):
    """From the root's children down, each level scores the children of every image's kept nodes with `inner`
    and keeps the best `beam` per image.

    A level is scored only when it has a choice to make (more nodes than `beam`) or holds only leaves, two or
    more (the leaves need scores of their own); a level narrowed to one node (a one-child node, a shortlist
    leaving one leaf) is decided (`decided`: nothing scored, nothing charged; a lone leaf never scored takes all
    the probability). A leaf kept beside internal nodes goes on to the next level and is scored again there
    (its calls counted again, its errors those of its last level). The search of an image ends at the first
    level whose kept nodes are all leaves. Ranking: that level's leaves in its order, then the nodes dropped at
    earlier levels, latest level first, each in its level's order, a dropped internal node's leaves in the
    tree's order under it; `allowed[i]` (a cascade's shortlist) restricts image i to the nodes with a leaf in
    it, the others ranked last. When no level above the leaves has more than `beam` nodes (a two-level tree,
    `beam` = its number of top-level nodes), nothing is pruned above the leaves and they are scored exactly as
    `inner` scores them alone. Learned timestep weights (`inputs.weights`) apply at every level.
    """

    def __init__(self, tree: LabelTree, beam: int = 1, inner: Search | None = None):
        if beam < 1:
            raise DiffdiscError(f"beam must be >= 1, got {beam}")
        self.tree, self.beam, self.inner = tree, beam, inner or ExhaustiveConfig().build()

    def children(self) -> list[Search]:
        return [self.inner]

    def __call__(self, inputs: Inputs, keys: list[str], allowed: list[list[int]] | None = None) -> list[TreeScores]:
        tree, beam, weights = self.tree, self.beam, inputs.weights
        groups = inputs.candidate_groups()
        M = tree.n_leaves
        if len(groups) != M:
            raise DiffdiscError(f"the tree has {M} leaves but there are {len(groups)} candidates")
        flat_conds, flat_groups = node_conditions(inputs.engine.backbone, tree, inputs.conds, groups)
        nodes = Inputs(inputs.engine, inputs.x0, flat_conds, flat_groups, weights)  # every node a candidate
        allowed_sets = [set(c) for c in allowed] if allowed is not None else None

        def flat(node):
            return node.leaf if node.is_leaf else M + node.id

        def alive(i, node):
            return allowed_sets is None or any(c in allowed_sets[i] for c in node.leaves())

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
                res = self.inner(replace(nodes, x0=inputs.x0[need]), [keys[i] for i in need],
                                 [sorted(flat(n) for n in frontier[i]) for i in need])  # fmt: skip
                for i, r in zip(need, res, strict=True):
                    by_flat = {flat(n): n for n in frontier[i]}
                    ranked[i] = [by_flat[c] for c in r.ranking() if c in by_flat]
                    out[i].unattributed_calls += r.unattributed_calls
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
                order += [c for n in level for c in n.leaves() if allowed_sets is None or c in allowed_sets[i]]
            placed = set(order)
            order += [c for c in range(M) if c not in placed]  # outside the image's shortlist
            for c, row in sorted(rows[i].items()):
                for t, e in row.items():
                    r.add(c, t, e, calls=0)
            for pos, c in enumerate(order):
                r.level[c] = M - pos  # the search's order, exactly (`ranking` sorts by level first)
            r.record = {"node_calls": int(sum(r.node_calls.values())), "expanded": list(r.expanded)}
        return out
