"""Hierarchical search over a label tree: full expansion is exhaustive, pruning counts every call at every level,
and a tree must cover every candidate exactly once."""

import json
import sys

import pytest
import torch

from diffdisc.errors import DiffdiscError
from diffdisc.scoring.adaptive import evaluate
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.hierarchy import TreeStage, tree_search
from diffdisc.scoring.label_tree import LabelTree, condition_features, load_tree
from label_trees import NAMES, SHORT, VecBackbone
from test_scoring import TemplateBackbone


def _engine(bb):
    return ScoringEngine(bb, ScoreConfig(batch_size=7))


@pytest.mark.parametrize("shape, beam", [(SHORT, 3), ({"ab": SHORT["a"] + [SHORT["b"]], "c": SHORT["c"]}, 6)])
def test_full_expansion_equals_exhaustive(tree_world, shape, beam):
    bb, x0, keys, conds, labels = tree_world
    cfg = AdaptiveConfig(n_timesteps=4)
    ex = evaluate(_engine(bb), x0, keys, conds, cfg)
    got = tree_search(_engine(bb), x0, keys, conds, LabelTree.from_dict(shape, NAMES), cfg, beam=beam)
    assert [r.prediction for r in got] == [r.prediction for r in ex] == labels
    for r, e in zip(got, ex, strict=True):
        assert r.errors == e.errors and r.timesteps == e.timesteps  # same work, same batches: the same numbers
        assert r.ranking() == e.ranking() and r.scores == e.scores
        assert r.calls == e.calls == 6 * 4 and not r.node_calls


@pytest.mark.parametrize("beam", [1, 2])
def test_pruning_counts_every_call_at_every_level(tree_world, beam):
    bb, x0, keys, conds, labels = tree_world
    # two prompts per candidate (the template and a slightly shifted copy): a leaf costs 2 calls per t
    both = torch.cat([conds, conds + 0.01])
    groups = [[c, 6 + c] for c in range(6)]
    engine = _engine(bb)
    got = tree_search(engine, x0, keys, both, LabelTree.from_dict(SHORT, NAMES), AdaptiveConfig(n_timesteps=4), beam=beam, groups=groups)
    per_image = 3 * 1 * 4 + beam * 2 * 2 * 4  # 3 coarse nodes, 1 (mean) condition each; then beam nodes' 2 leaves
    assert [r.calls for r in got] == [per_image] * 4
    assert engine.calls == 4 * per_image
    assert [r.prediction for r in got] == labels
    for r, y in zip(got, labels, strict=True):
        cluster = y // 2
        assert set(r.ranking()[:2]) == {2 * cluster, 2 * cluster + 1}  # the kept branch's leaves first
        assert sorted(r.node_errors) == [1, 2, 3] and all(len(row) == 4 for row in r.node_errors.values())
        assert sum(r.node_calls.values()) == 12 and r.expanded[0] == 1 + cluster
        assert len(r.errors) == 2 * beam and sum(s == float("inf") for s in r.scores) == 6 - 2 * beam


@pytest.mark.parametrize("strategy", ["halving", "ttest"])
def test_halving_and_ttest_run_at_each_level(tree_world, strategy):
    bb, x0, keys, conds, labels = tree_world
    cfg = AdaptiveConfig(strategy=strategy, stages=((2, 2), (4, 1)), min_scores=3, max_scores=6)
    got = tree_search(_engine(bb), x0, keys, conds, LabelTree.from_dict(SHORT, NAMES), cfg, beam=1)
    assert [r.prediction for r in got] == labels
    if strategy == "halving":  # coarse: 3 nodes x 2 t, the best 2 x 2 more; leaves: 2 x 2 t, both x 2 more
        assert [r.calls for r in got] == [3 * 2 + 2 * 2 + 2 * 2 + 2 * 2] * 4


def test_shortlist_restricts_the_search(tree_world):
    bb, x0, keys, conds, labels = tree_world
    tree = LabelTree.from_dict(SHORT, NAMES)
    allowed = [[0, 1, 4], [3, 5], [5], [2, 4]]
    got = tree_search(_engine(bb), x0, keys, conds, tree, AdaptiveConfig(n_timesteps=2), beam=1, candidates=allowed)
    for r, a, y in zip(got, allowed, labels, strict=True):
        assert set(r.errors) <= set(a) and sorted(r.ranking()[: len(a)]) == sorted(a)
        assert r.prediction == (y if y in a else r.prediction)


def test_bad_trees_are_refused_naming_the_candidates(tmp_path):
    cases = [
        ({"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0"]}, "misses c1"),
        ({"a": ["a0", "a1", "b0"], "b": ["b0", "b1"], "c": ["c0", "c1"]}, "repeats b0"),
        ({"a": ["a0", "a1", "zebra"], "b": ["b0", "b1"], "c": ["c0", "c1"]}, "unknown candidates zebra"),
        ({"a": ["a0", "a1", 9], "b": ["b0", "b1"], "c": ["c0", "c1"]}, "unknown candidates 9"),
        ({"name": "root", "children": [{"name": "a", "prompt": "x", "children": []}]}, "no children"),
    ]
    for tree, message in cases:
        p = tmp_path / "tree.json"
        p.write_text(json.dumps(tree))
        with pytest.raises(DiffdiscError, match=message) as e:
            LabelTree.from_json(p, NAMES)
        assert "\n" not in str(e.value) and str(p) in str(e.value)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DiffdiscError, match="not valid JSON"):
        LabelTree.from_json(tmp_path / "bad.json", NAMES)


def test_file_forms_agree():
    full = {"name": "all", "children": [
        {"name": "a", "prompt": "a photo of an a", "children": ["A0", {"name": "a1"}]},
        {"name": "rest", "children": [{"b": ["b0", "b1"]}, {"name": "c", "children": [{"candidate": 4}, 5]}]},
    ]}  # fmt: skip
    tree = LabelTree.from_dict(full, NAMES)
    assert tree.root.leaves() == list(range(6)) and tree.depth == 3
    assert tree.internal[1].prompts == ("a photo of an a",)
    assert LabelTree.from_dict(tree.to_dict(), NAMES).describe() == tree.describe()


def test_auto_tree_covers_every_candidate_once(tree_world):
    bb, _, _, conds, _ = tree_world
    feats = condition_features(bb, conds)
    tree = LabelTree.auto(feats, NAMES, branching=2, top=3)
    assert sorted(tree.root.leaves()) == list(range(6))
    assert sorted(sorted(n.leaves()) for n in tree.root.children) == [[0, 1], [2, 3], [4, 5]]  # the clusters found
    deep = LabelTree.auto(torch.randn(11, 5, generator=torch.Generator().manual_seed(1)), [f"k{i}" for i in range(11)], branching=2)
    assert sorted(deep.root.leaves()) == list(range(11)) and all(len(n.children) <= 2 for n in deep.internal)
    same = LabelTree.auto(torch.ones(5, 3), [f"k{i}" for i in range(5)], branching=2)  # nothing to cluster on
    assert sorted(same.root.leaves()) == list(range(5))


class PromptBackbone(VecBackbone):
    """A text model in miniature: a prompt's condition is a fixed random sequence [3 tokens, 64] (its mean over
    tokens is the template the denoiser believes in), so coarse prompts go through `conditions` as real ones do."""

    def __init__(self, prompts):
        g = torch.Generator().manual_seed(2)
        self.table = {p: torch.randn(3, 64, generator=g) for p in prompts}
        super().__init__(torch.zeros(1, 1, 8, 8))

    def _condition_batch(self, candidates):
        return torch.stack([self.table[p] for p in candidates])

    def model_output(self, x_t, t, cond):
        return super().model_output(x_t, t, cond.mean(1))


def test_prompted_nodes_are_scored_through_the_backbone():
    classes = ["red cat", "blue cat", "red dog", "blue dog"]
    prompts = [f"a photo of a {c}" for c in classes]
    bb = PromptBackbone([*prompts, "a photo of a cat", "a photo of a dog"])
    conds = bb.conditions(prompts)
    assert sorted(LabelTree.auto(condition_features(bb, conds), classes, branching=2).root.leaves()) == [0, 1, 2, 3]
    tree = LabelTree.from_dict({"cat": ["red cat", "blue cat"], "dog": ["red dog", "blue dog"]}, classes)
    tree.with_prompts("a photo of a {}")
    assert [n.prompts for n in tree.internal[1:]] == [("a photo of a cat",), ("a photo of a dog",)]
    x0 = conds[[0, 3]].mean(1).view(2, 1, 8, 8) + 0.05 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    keys = ["p", "q"]
    engine = ScoringEngine(bb, ScoreConfig(batch_size=4))
    got = tree_search(engine, x0, keys, conds, tree, AdaptiveConfig(n_timesteps=2), beam=1)
    assert [r.prediction for r in got] == [0, 3] and [r.calls for r in got] == [2 * 2 + 2 * 2] * 2
    coarse = engine.exhaustive(x0, keys, bb.conditions(["a photo of a cat", "a photo of a dog"]), got[0].timesteps)
    for i, r in enumerate(got):
        for node in (1, 2):  # the prompted nodes, scored under the same noise as the prompts alone
            assert list(r.node_errors[node].values()) == pytest.approx(coarse[i, node - 1].tolist(), rel=1e-6)


def test_class_conditional_models_are_refused(tree_world):
    bb = TemplateBackbone(tree_world[0].templates)  # conditions are class ids
    conds = bb.conditions([0, 1, 2, 3, 4, 5])
    with pytest.raises(DiffdiscError, match="class-conditional"):
        condition_features(bb, conds)
    with pytest.raises(DiffdiscError, match="class-conditional"):
        tree_search(ScoringEngine(bb), tree_world[1], tree_world[2], conds, LabelTree.from_dict(SHORT, NAMES), AdaptiveConfig(n_timesteps=1))


def test_paths_merge_and_chains_collapse():
    """WordNet's logic on hand-made paths (nltk not needed): shared prefixes merge, single-child chains go."""
    e, an, fish, dog = ("e", "entity"), ("an", "animal"), ("f", "fish"), ("d", "dog")
    paths = [[e, an, fish, ("t", "tench")], [e, an, fish, ("g", "goldfish")], [e, an, dog], [e, an, dog, ("p", "pug")],
             [e, ("o", "object"), ("x", "artifact"), ("s", "shoe")]]  # fmt: skip
    tree = LabelTree.from_paths(paths, ["tench", "goldfish", "dog", "pug", "shoe"])
    assert tree.describe().split("\n") == ["entity", "  animal", "    fish", "      tench", "      goldfish", "    dog",
                                           "      dog", "      pug", "  shoe"]  # fmt: skip


def test_wordnet_tree():
    pytest.importorskip("nltk")
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        pytest.skip("nltk's WordNet data is not installed")
    wnids = ["n01440764", "n01443537", "n02085620", "n02086240"]  # tench, goldfish, Chihuahua, Shih-Tzu
    tree = LabelTree.from_wordnet(wnids, ["tench", "goldfish", "chihuahua", "shih-tzu"])
    assert sorted(sorted(n.leaves()) for n in tree.root.children) == [[0, 1], [2, 3]]
    with pytest.raises(DiffdiscError, match="n99999999"):
        LabelTree.from_wordnet(["n01440764", "n99999999"])


def test_tree_decides_a_cascade(tree_world):
    from diffdisc.scoring.cascade import Cascade, Stage

    bb, x0, keys, conds, labels = tree_world
    cheap = Stage(_engine(bb), x0, conds, adaptive=AdaptiveConfig(n_timesteps=1))
    tree = TreeStage(_engine(bb), x0, conds, LabelTree.from_dict(SHORT, NAMES), adaptive=AdaptiveConfig(n_timesteps=2))
    got = Cascade(cheap, tree, keep=4)(keys)
    first = cheap.evaluate(keys)
    assert [r.prediction for r in got] == labels
    for r, c in zip(got, first, strict=True):
        assert set(r.errors) <= set(c.ranking()[:4]) and r.calls == 6 * 1 + sum(r.node_calls.values()) + 2 * len(r.errors)


def test_load_tree_by_name(tree_world, tmp_path):
    bb, _, _, conds, _ = tree_world
    assert sorted(load_tree("auto", NAMES, bb, conds, branching=3).root.leaves()) == list(range(6))
    (tmp_path / "t.json").write_text(json.dumps(SHORT))
    assert load_tree(tmp_path / "t.json", NAMES).describe() == LabelTree.from_dict(SHORT, NAMES).describe()
    with pytest.raises(DiffdiscError, match="neither auto, wordnet nor a JSON file"):
        load_tree(tmp_path / "none.json", NAMES)


def test_wordnet_without_nltk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # import nltk -> ImportError, installed or not
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)
    with pytest.raises(DiffdiscError, match="pip install nltk"):
        LabelTree.from_wordnet(["n01440764"])
