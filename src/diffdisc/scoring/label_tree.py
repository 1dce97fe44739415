"""Label trees for hierarchical classification (`hierarchy.tree_search`): from a file, WordNet or clustering.

A `LabelTree`'s leaves are the candidates (indices into the candidate list); each internal node is scored
like a candidate, through a condition of its own: its prompt(s) when it has some ("a photo of footwear"),
else the mean of its leaves' conditions (each leaf: the mean of its own prompts' conditions). The mean is
taken over the leaves beneath, not over the children, so a node's condition does not depend on how its
subtree happens to be split. Trees come from a file (`from_dict` / `from_json`), from WordNet hypernym paths
for ImageNet class ids (`from_wordnet`, when nltk and its WordNet data are installed), or from clustering the
candidates' condition embeddings (`auto`, with `condition_features`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffdiscError
from ..jsonfile import parse_json, read_json_text
from ..templates import fill

FILE_KEYS = {"name", "prompt", "prompts", "children", "candidate"}


@dataclass
class TreeNode:
    """A leaf (`leaf` = the candidate's index) or an internal node with `children`.

    An internal node is scored through `cond` when set (rows [k, ...] of the backbone's condition space, one
    per prompt), else its `prompts` encoded by the backbone, else the mean of its leaves' conditions.
    `id` numbers the internal nodes breadth first (the root is 0); `LabelTree` sets it.
    """

    name: str
    children: list[TreeNode] = field(default_factory=list)
    leaf: int | None = None
    prompts: tuple[str, ...] = ()
    cond: torch.Tensor | None = None
    id: int = -1

    @property
    def is_leaf(self) -> bool:
        return self.leaf is not None

    def leaves(self) -> list[int]:
        """The candidates beneath this node, depth first in the tree's order."""
        return [self.leaf] if self.is_leaf else [c for ch in self.children for c in ch.leaves()]


class LabelTree:
    """A tree whose leaves cover every candidate 0..n-1 exactly once (checked: a user's tree file that misses
    or repeats candidates is refused, naming them)."""

    def __init__(self, root: TreeNode, n_candidates: int | None = None, names: list[str] | None = None,
                 source: str = "tree"):  # fmt: skip
        if root.is_leaf:
            root = TreeNode("root", [root])
        self.root, self.names = root, list(names) if names is not None else None
        self.internal: list[TreeNode] = []  # breadth first; internal[k].id == k
        level = [root]
        while level:
            for node in level:
                if not node.is_leaf:
                    if not node.children:
                        raise DiffdiscError(f"{source}: node {node.name!r} has no children "
                                            "(a leaf must name a candidate)")  # fmt: skip
                    node.id = len(self.internal)
                    self.internal.append(node)
            level = [ch for node in level for ch in node.children]
        n = n_candidates if n_candidates is not None else len(self.names) if self.names is not None else None
        _check_cover(root, n, self.names, source)
        self.n_leaves = len(root.leaves())

    @property
    def depth(self) -> int:
        def d(node):
            return 0 if node.is_leaf else 1 + max(d(ch) for ch in node.children)

        return d(self.root)

    def with_prompts(self, templates: str | list[str] | tuple[str, ...]) -> LabelTree:
        """Give every internal node without prompts the prompts `templates` make of its name (HDC's coarse
        prompts: "a photo of a {}." with the WordNet lemma); in place, returns self."""
        tpl = [templates] if isinstance(templates, str) else list(templates)
        for node in self.internal[1:]:  # the root is never scored
            if not node.prompts and node.cond is None:
                node.prompts = tuple(fill(t, node.name) for t in tpl)
        return self

    def to_dict(self) -> dict:
        """The tree in the file form `from_dict` reads (leaves by candidate name when known, else index):
        what a run stores to say which tree made its numbers. A node's given `cond` tensor is not written."""

        def enc(node):
            if node.is_leaf:
                return self.names[node.leaf] if self.names is not None else node.leaf
            d = {"name": node.name}
            if node.prompts:
                d["prompts"] = list(node.prompts)
            d["children"] = [enc(ch) for ch in node.children]
            return d

        return enc(self.root)

    def describe(self) -> str:
        """An indented outline, one node a line (for `--show-tree` and logs)."""
        lines = []

        def walk(node, depth):
            label = self.names[node.leaf] if node.is_leaf and self.names is not None else node.name
            extra = f"  [{' | '.join(node.prompts)}]" if node.prompts else ""
            lines.append("  " * depth + label + extra)
            for ch in node.children:
                walk(ch, depth + 1)

        walk(self.root, 0)
        return "\n".join(lines)

    # ------------------------------------------------------------------ from a file
    @classmethod
    def from_dict(cls, data, names: list[str], source: str = "tree") -> LabelTree:
        """A tree from its file form. Leaves name candidates: a candidate name (case-insensitive), its index
        (an int), or {"candidate": name-or-index}. Internal nodes, in either of two forms (mixable):

        full:   {"name": "footwear", "prompt": "a photo of footwear", "children": [...]}
                ("prompts": [...] for several; no prompt: the mean of its leaves' conditions);
        short:  {"footwear": ["sandal", "sneaker"], "tops": {"warm": ["coat", "pullover"], "shirts": [...]}}
                (each key a node whose value lists or maps its children; the file may also be a list,
                the root's children, and a list inside a list is an unnamed node). name, prompt, prompts,
                children and candidate are keys of the full form: a short-form node cannot be called that.
        """
        _check_nesting(data, source)
        index = {n.strip().lower(): i for i, n in enumerate(names)}
        unknown: list[str] = []

        def leaf(value):
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise DiffdiscError(f"{source}: a leaf must be a candidate name or index, got {value!r}")
            if isinstance(value, int):
                if not 0 <= value < len(names):
                    unknown.append(str(value))
                    return None
                return TreeNode(names[value], leaf=value)
            i = index.get(value.strip().lower())
            if i is None:
                unknown.append(value)
                return None
            return TreeNode(names[i], leaf=i)

        def children(value) -> list[TreeNode]:
            if isinstance(value, list):
                return [n for v in value for n in parse_items(v)]
            if isinstance(value, dict) and not (set(value) & FILE_KEYS):
                return [node(k, v) for k, v in value.items()]
            return parse_items(value)

        def parse_items(value) -> list[TreeNode]:
            """One list item: a leaf, a full-form node, or a short-form mapping of several nodes."""
            if isinstance(value, dict) and not (set(value) & FILE_KEYS):
                return [node(k, v) for k, v in value.items()]
            if isinstance(value, dict):
                return [full(value)]
            if isinstance(value, list):  # an unnamed node, named after its first leaves
                kids = children(value)
                return [TreeNode(_cluster_name([c for n in kids for c in n.leaves() if c >= 0], names), kids)]
            n = leaf(value)
            return [n] if n is not None else []

        def node(name, value) -> TreeNode:
            return TreeNode(str(name), children(value))

        def full(d) -> TreeNode:
            bad = sorted(set(d) - FILE_KEYS)
            if bad:
                raise DiffdiscError(f"{source}: node {d.get('name', '?')!r} has unknown keys {bad} "
                                    f"(known: {sorted(FILE_KEYS)})")  # fmt: skip
            if "candidate" in d or "children" not in d:  # {"candidate": 3} or {"name": "sandal"}: a leaf
                if "children" in d or "prompt" in d or "prompts" in d:
                    raise DiffdiscError(f"{source}: leaf {d.get('candidate', d.get('name'))!r} takes no children "
                                        "or prompt (its prompts are the candidate's)")  # fmt: skip
                n = leaf(d["candidate"] if "candidate" in d else d.get("name"))
                return n if n is not None else TreeNode("?", leaf=-1)  # unknown: refused below
            name = d.get("name", "node")
            if not isinstance(name, str) or not name.strip():
                raise DiffdiscError(f"{source}: a node's name must be a non-empty string, got {json.dumps(name)}")
            prompts = d.get("prompts", [d["prompt"]] if "prompt" in d else [])
            prompts = [prompts] if isinstance(prompts, str) else prompts
            if not isinstance(prompts, list) or any(not isinstance(p, str) or not p.strip() for p in prompts):
                raise DiffdiscError(f"{source}: node {name!r}: prompts must be non-empty strings, got "
                                    f"{json.dumps(prompts)}")  # fmt: skip
            return TreeNode(name, children(d["children"]), prompts=tuple(prompts))

        if isinstance(data, dict) and "children" in data:
            root = full(data)
        else:
            root = TreeNode("root", children(data))
        if unknown:
            raise DiffdiscError(f"{source}: unknown candidates {_names(unknown)} (candidates: {_names(names)})")
        return cls(root, len(names), names, source)

    @classmethod
    def from_json(cls, path: str | Path, names: list[str]) -> LabelTree:
        """`from_dict` of a JSON file."""
        p = Path(path)
        data = parse_json(read_json_text(p, "tree file"), f"tree file {p}", "the tree")
        return cls.from_dict(data, names, source=f"tree file {p}")

    # ------------------------------------------------------------------ WordNet
    @classmethod
    def from_wordnet(cls, classes: list[str], names: list[str] | None = None) -> LabelTree:
        """A tree from WordNet's hypernym paths: `classes` are WordNet noun ids (ImageNet's wnids, n01440764)
        or names, looked up as their first noun sense (ambiguous: "crane" is a bird; wnids are exact).

        A synset with several hypernym paths takes its shortest (ties: the first by name); chains of
        single-child nodes are collapsed, so every internal node splits. Internal nodes are named by their
        synset's first lemma and carry no prompt (the mean condition) until `with_prompts` gives them one.
        """
        wn = _wordnet()
        paths, missing = [], []
        for c in classes:
            syn = _synset(wn, c)
            if syn is None:
                missing.append(c)
                continue
            path = min(syn.hypernym_paths(), key=lambda p: (len(p), [s.name() for s in p]))
            paths.append([(s.name(), s.lemmas()[0].name().replace("_", " ")) for s in path])
        if missing:
            raise DiffdiscError(f"not in WordNet as nouns: {_names(missing)} (give WordNet ids such as n01440764)")
        return cls.from_paths(paths, list(names) if names is not None else list(classes), source="WordNet tree")

    @classmethod
    def from_paths(cls, paths: list[list[tuple[str, str]]], names: list[str], source: str = "tree") -> LabelTree:
        """A tree from one root-to-class path per candidate, each a list of (node id, node name) whose last
        entry is the candidate's own node: shared prefixes merge, single-child chains collapse. A candidate
        whose node is also an ancestor of other candidates becomes a leaf beside them."""
        trie: dict = {}
        own: dict[tuple, list[int]] = {}
        for c, path in enumerate(paths):
            level = trie
            for key, label in path:
                level = level.setdefault((key, label), {})
            own.setdefault(tuple(k for k, _ in path), []).append(c)

        def build(key, label, sub, prefix) -> list[TreeNode]:
            prefix = (*prefix, key)
            kids = [n for (k, lab), s in sub.items() for n in build(k, lab, s, prefix)]
            kids = [TreeNode(names[c], leaf=c) for c in own.get(prefix, [])] + kids
            if len(kids) == 1:  # a chain: the node adds no choice
                return kids
            return [TreeNode(label, kids)]

        tops = [n for (k, lab), s in trie.items() for n in build(k, lab, s, ())]
        root = tops[0] if len(tops) == 1 and not tops[0].is_leaf else TreeNode("root", tops)
        return cls(root, len(names), names, source)

    # ------------------------------------------------------------------ automatic
    @classmethod
    def auto(cls, features, names: list[str], branching: int = 4, top: int | None = None) -> LabelTree:
        """A tree by agglomerative clustering (average linkage on unit-normalised `features` [n, d], e.g.
        `condition_features`): the root splits into `top` clusters (default `branching`), each cluster of more
        than `branching` candidates again into `branching`, until a node has at most `branching` children.
        Internal nodes carry no prompt: they are scored through the mean of their leaves' conditions."""
        from scipy.cluster.hierarchy import fcluster, linkage

        feats = np.asarray(features, dtype=np.float64).reshape(len(names), -1)
        if branching < 2 or (top is not None and top < 2):
            raise DiffdiscError(f"a tree needs branching >= 2 and top >= 2 clusters, got {branching}, {top}")
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

        def split(idx: list[int], k: int) -> list[TreeNode]:
            if len(idx) <= k:
                return [TreeNode(names[c], leaf=c) for c in idx]
            labels = fcluster(linkage(feats[idx], method="average"), t=k, criterion="maxclust")
            labels = labels.tolist()
            parts = [[c for c, lab in zip(idx, labels, strict=True) if lab == v] for v in dict.fromkeys(labels)]
            if len(parts) < 2:  # identical embeddings: no structure to find, split in order
                parts = [[int(c) for c in p] for p in np.array_split(idx, k)]
            return [TreeNode(names[p[0]], leaf=p[0]) if len(p) == 1
                    else TreeNode(_cluster_name(p, names), split(p, branching)) for p in parts]  # fmt: skip

        root = TreeNode("root", split(list(range(len(names))), top or branching))
        return cls(root, len(names), names, "automatic tree")


MAX_NESTING = 200  # lists / objects inside each other: far past any label tree (WordNet's ImageNet tree: ~40)


def _check_nesting(data, source: str) -> None:
    """Refuse nesting past `MAX_NESTING`, measured without recursion: `from_dict` and the tree's own walks
    recurse per level, so a deeper file would end in RecursionError instead of this message."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_NESTING:
                raise DiffdiscError(f"{source}: lists / objects nested more than {MAX_NESTING} deep; "
                                    "a label tree is a few levels deep")  # fmt: skip
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def _cluster_name(members: list[int], names: list[str]) -> str:
    shown = [names[c] for c in members[:3]]
    return "{" + ", ".join(shown) + (f", +{len(members) - 3}" if len(members) > 3 else "") + "}"


def _names(items, limit: int = 10) -> str:
    items = [str(x) for x in items]
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_cover(root: TreeNode, n: int | None, names: list[str] | None, source: str) -> None:
    """Every candidate exactly once: a missing one could never be predicted, a repeated one would be scored twice."""
    leaves = root.leaves()
    label = (lambda c: names[c]) if names is not None else str
    seen, repeated = set(), []
    for c in leaves:
        if c in seen and c not in repeated:
            repeated.append(c)
        seen.add(c)
    bad = [c for c in leaves if c < 0 or (n is not None and c >= n)]
    missing = [c for c in range(n) if c not in seen] if n is not None else []
    problems = []
    if bad:
        problems.append(f"unknown candidates {_names(bad)}")
    if missing:
        problems.append(f"misses {_names(label(c) for c in missing)}")
    if repeated:
        problems.append(f"repeats {_names(label(c) for c in repeated)}")
    if problems:
        raise DiffdiscError(f"{source} must cover every candidate exactly once: it {'; it '.join(problems)}")


def _wordnet():
    try:
        from nltk.corpus import wordnet as wn
    except ImportError:
        raise DiffdiscError("WordNet trees need nltk (pip install nltk) and its WordNet data "
                            "(python -m nltk.downloader wordnet)") from None  # fmt: skip
    try:
        wn.ensure_loaded()
    except LookupError:
        raise DiffdiscError("nltk is installed but its WordNet data is not: python -m nltk.downloader wordnet "
                            "(or set NLTK_DATA to a folder holding corpora/wordnet)") from None  # fmt: skip
    return wn


def _synset(wn, c: str):
    if re.fullmatch(r"n\d{8}", c.strip()):
        with warnings.catch_warnings():  # nltk warns (and returns None) for an offset that is no synset
            warnings.simplefilter("ignore")
            try:
                return wn.synset_from_pos_and_offset("n", int(c.strip()[1:]))
            except Exception:  # older nltk raises WordNetError instead
                return None
    found = wn.synsets(c.strip().replace(" ", "_"), pos="n")
    return found[0] if found else None


# ---------------------------------------------------------------------- conditions
def _pack(backbone):
    return getattr(backbone, "pack", None) or getattr(backbone, "cond_pack", None)


def _need_vectors(backbone, conds: torch.Tensor, what: str) -> None:
    if not conds.is_floating_point():
        raise DiffdiscError(f"{what} needs conditions that can be averaged or prompted; {backbone.info.name} "
                            "conditions on class ids (class-conditional): use a text-conditional model")  # fmt: skip


def mean_condition(backbone, rows: torch.Tensor) -> torch.Tensor:
    """The mean of condition rows [k, ...]; a packed attention mask (PixArt) becomes their union, not a fraction."""
    out = rows.mean(0)
    pack = _pack(backbone)
    if pack is not None and "mask" in pack.shapes and out.ndim == 1:
        parts = pack.unpack(out[None])
        parts["mask"] = (parts["mask"] > 0).float()
        out = pack.pack(**parts)[0]
    return out


def condition_features(backbone, conds: torch.Tensor, groups: list[list[int]] | None = None) -> np.ndarray:
    """One embedding per candidate for `LabelTree.auto`, from the backbone's own conditions: the pooled text
    embedding where the family packs one (SDXL, SD3, FLUX), else the mean over tokens of a sequence condition
    (SD; PixArt over its unmasked tokens), else the row itself (contrastive text embeddings); a candidate
    with several prompts gets the mean of theirs."""
    _need_vectors(backbone, conds, "an automatic tree")
    groups = groups or [[p] for p in range(conds.shape[0])]
    rows = conds.float().cpu()
    pack = _pack(backbone)
    if pack is not None and rows.ndim == 2:
        parts = pack.unpack(rows)
        pooled = next((parts[k] for k in ("pooled", "pooled_prompt_embeds") if k in parts), None)
        if pooled is not None:
            rows = pooled
        else:
            seq = parts["prompt_embeds"]
            mask = parts["mask"][..., None] if "mask" in parts else torch.ones_like(seq[..., :1])
            rows = (seq * mask).sum(1) / mask.sum(1).clamp(min=1)
    elif rows.ndim >= 3:
        rows = rows.flatten(2).mean(1) if rows.ndim == 3 else rows.flatten(1)
    return torch.stack([rows[g].mean(0) for g in groups]).reshape(len(groups), -1).numpy()


def node_conditions(backbone, tree: LabelTree, conds: torch.Tensor, groups: list[list[int]]):
    """(conditions, groups) for the leaves followed by the tree's internal nodes: candidate c keeps its group;
    internal node k is candidate `n_leaves + k`, its rows its `cond`, its encoded prompts, or the mean of its
    leaves' conditions (`mean_condition`)."""
    _need_vectors(backbone, conds, "a hierarchical search")
    leaf_mean = torch.stack([conds[g].mean(0) for g in groups])
    nodes = tree.internal[1:]  # the root is never scored: it gets the mean, a placeholder
    prompts = [p for node in nodes if node.cond is None for p in node.prompts]
    encoded = dict(zip(prompts, backbone.conditions(prompts), strict=True)) if prompts else {}
    rows, out_groups, p = [conds], [list(g) for g in groups], conds.shape[0]
    for node in tree.internal:
        if node is tree.root:
            r = mean_condition(backbone, leaf_mean)[None]
        elif node.cond is not None:
            r = node.cond.to(conds)
            r = r[None] if r.shape == conds.shape[1:] else r
        elif node.prompts:
            r = torch.stack([encoded[q] for q in node.prompts]).to(conds)
        else:
            r = mean_condition(backbone, leaf_mean[node.leaves()])[None]
        if r.shape[1:] != conds.shape[1:]:
            raise DiffdiscError(f"node {node.name!r}: condition shape {tuple(r.shape[1:])} differs from the "
                                f"candidates' {tuple(conds.shape[1:])}")  # fmt: skip
        rows.append(r)
        out_groups.append(list(range(p, p + r.shape[0])))
        p += r.shape[0]
    return torch.cat(rows), out_groups


def load_tree(spec: str | Path, classes: list[str], backbone=None, conds: torch.Tensor | None = None,
              groups: list[list[int]] | None = None, *, branching: int = 4, top: int | None = None,
              wnids: list[str] | None = None) -> LabelTree:  # fmt: skip
    """The tree a user named (`--tree`): `auto` (clustering the candidates' conditions: needs `backbone` and
    `conds`), `wordnet` (from `wnids`, else the class names themselves), or a JSON file (`from_dict`)."""
    if str(spec) == "auto":
        if backbone is None or conds is None:
            raise ValueError("an automatic tree needs the backbone and the candidates' conditions")
        return LabelTree.auto(condition_features(backbone, conds, groups), classes, branching, top)
    if str(spec) == "wordnet":
        return LabelTree.from_wordnet(list(wnids) if wnids is not None else list(classes), classes)
    p = Path(spec)
    if not p.is_file():
        raise DiffdiscError(f"tree {str(spec)!r} is neither auto, wordnet nor a JSON file")
    return LabelTree.from_json(p, classes)


# ---------------------------------------------------------------------- search
