"""Issue 25 #1, one search protocol: strategies are objects built from one tagged, nested config; they compose
(a tree whose levels run halving, a cascade whose decider is a tree) with the results of the entry points
that existed before; a new strategy is one class pair registered by kind, and classify runs it."""

import json
from dataclasses import dataclass

import pytest

from diffdisc.errors import DiffdiscError
from diffdisc.scoring.cascade import Cascade as CascadeOfStages
from diffdisc.scoring.cascade import Stage
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.hierarchy import TreeStage, tree_search
from diffdisc.scoring.label_tree import LabelTree
from diffdisc.scoring.search import (
    SEARCHES,
    Cascade,
    CascadeConfig,
    ExhaustiveConfig,
    HalvingConfig,
    Inputs,
    LearnedOrderConfig,
    SearchConfig,
    SearchContext,
    Tree,
    TreeConfig,
    TTestConfig,
    from_adaptive,  # fmt: skip
    register,
)
from diffdisc.scoring.search.base import Chunk, GridConfig, GridSearch, ImageScores
from diffdisc.tasks.classify import ClassifyConfig, classify
from label_trees import NAMES, SHORT

HALVING = AdaptiveConfig(strategy="halving", stages=((2, 2), (4, 1)))


def _engine(bb):
    return ScoringEngine(bb, ScoreConfig(batch_size=7))


def _same(a: list[ImageScores], b: list[ImageScores]) -> None:
    for r, s in zip(a, b, strict=True):
        assert r.errors == s.errors and r.ranking() == s.ranking() and r.scores == s.scores
        assert r.n_calls == s.n_calls and r.calls == s.calls and r.record == s.record


# ---------------------------------------------------------------------- configs: one tagged, nested union
NESTED = [
    CascadeConfig(keep=3, shortlist=ExhaustiveConfig(n_timesteps=1, sigmas="uniform"),
                  decide=TreeConfig(tree="auto", beam=2, inner=HalvingConfig(stages=((2, 2), (4, 1)), exit_z=1.0))),
    LearnedOrderConfig(weights="w.json", inner=TreeConfig(tree="wordnet", inner=TTestConfig(min_scores=3))),
    TreeConfig(inner=CascadeConfig(keep=2)),
]


@pytest.mark.parametrize("cfg", NESTED)
def test_nested_configs_round_trip_with_their_kinds(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["kind"] == cfg.kind and SearchConfig.from_dict(d) == cfg == type(cfg).from_dict(d)
    back = ClassifyConfig.from_dict(json.loads(json.dumps(ClassifyConfig(search=cfg).to_dict())))
    assert back.search == cfg and type(back.search.children()[0]) is type(cfg.children()[0])


def test_unknown_kinds_and_mixed_forms_are_one_line_refusals():
    with pytest.raises(DiffdiscError, match="unknown search kind 'beam' .*exhaustive"):
        SearchConfig.from_dict({"kind": "beam"})
    with pytest.raises(DiffdiscError, match="unknown search kind 'tree'"):
        GridConfig.from_dict({"kind": "tree"})  # a tree is no grid strategy
    with pytest.raises(DiffdiscError, match="either whole"):
        ClassifyConfig(search=ExhaustiveConfig(), tree="auto")
    with pytest.raises(DiffdiscError, match="last halving stage"):
        HalvingConfig(stages=((2, 2),))


def test_the_flat_options_stand_for_a_composed_search():
    cfg = ClassifyConfig(adaptive=AdaptiveConfig(strategy="ttest", min_scores=3, timestep_weights="w.json"),
                         tree="auto", beam=2, shortlist=4, shortlist_timesteps=3)  # fmt: skip
    s = cfg.search_config()
    assert isinstance(s, LearnedOrderConfig) and s.weights == "w.json"  # the learned order reaches every level
    assert s.inner == CascadeConfig(keep=4, shortlist=ExhaustiveConfig(n_timesteps=3),
                                    decide=TreeConfig(tree="auto", beam=2, inner=TTestConfig(min_scores=3)))  # fmt: skip
    assert [type(c).__name__ for c in s.walk()] == ["LearnedOrderConfig", "CascadeConfig", "TreeConfig", "TTestConfig"]
    assert from_adaptive(AdaptiveConfig()) == ExhaustiveConfig()


# ---------------------------------------------------------------------- composition
def test_a_tree_whose_levels_run_halving(tree_world):
    bb, x0, keys, conds, labels = tree_world
    tree = LabelTree.from_dict(SHORT, NAMES)
    got = Tree(tree, 1, HalvingConfig(stages=((2, 2), (4, 1))).build())(Inputs(_engine(bb), x0, conds), keys)
    _same(got, tree_search(_engine(bb), x0, keys, conds, tree, HALVING, beam=1))
    assert [r.prediction for r in got] == labels
    assert [r.calls for r in got] == [3 * 2 + 2 * 2 + 2 * 2 + 2 * 2] * 4  # each level halves: coarse, then leaves


def test_a_tree_built_from_its_config(tree_world, tmp_path):
    bb, x0, keys, conds, labels = tree_world
    (tmp_path / "t.json").write_text(json.dumps(SHORT))
    ctx = SearchContext(bb, NAMES, list(range(6)), [[c] for c in range(6)])
    search = TreeConfig(tree=str(tmp_path / "t.json"), inner=HalvingConfig(stages=((2, 2), (4, 1)))).build(ctx)
    got = search(Inputs(_engine(bb), x0, conds), keys)
    _same(got, tree_search(_engine(bb), x0, keys, conds, LabelTree.from_dict(SHORT, NAMES), HALVING))
    assert all(r.record["node_calls"] == 3 * 2 + 2 * 2 for r in got)


@pytest.mark.parametrize("keep", [1, 4])
def test_a_cascade_whose_decider_is_a_tree(tree_world, keep):
    bb, x0, keys, conds, labels = tree_world
    tree = LabelTree.from_dict(SHORT, NAMES)
    search = Cascade(keep, ExhaustiveConfig(n_timesteps=1).build(), Tree(tree, 1, ExhaustiveConfig(n_timesteps=2).build()))
    got = search(Inputs(_engine(bb), x0, conds), keys)  # no cheap scorer given: the same model shortlists
    cheap = Stage(_engine(bb), x0, conds, adaptive=AdaptiveConfig(n_timesteps=1))
    decide = TreeStage(_engine(bb), x0, conds, tree, adaptive=AdaptiveConfig(n_timesteps=2))
    before = CascadeOfStages(cheap, decide, keep=keep).run(keys)
    _same(got, [s.scores for s in before])
    for r, s in zip(got, before, strict=True):
        assert r.record == {"shortlist": s.shortlist, "shortlist_calls": 6, "contrastive_forwards": 0}
        if keep == 4:
            assert r.calls == 6 * 1 + sum(r.node_calls.values()) + 2 * len(r.errors)
    if keep == 4:
        assert [r.prediction for r in got] == labels


def test_a_cascade_charges_nothing_for_an_image_with_one_candidate(tree_world):
    bb, x0, keys, conds, _ = tree_world
    search = CascadeConfig(keep=2, shortlist=ExhaustiveConfig(n_timesteps=2), decide=ExhaustiveConfig(n_timesteps=4)).build()
    got = search(Inputs(_engine(bb), x0, conds), keys, allowed=[[1], [2, 3, 4], [5], [0, 1]])
    assert got[0].calls == got[2].calls == 0 and got[0].prediction == 1 and got[2].prediction == 5
    assert got[1].calls == 3 * 2 + 2 * (4 - 2) and got[3].calls == 2 * 2 + 2 * (4 - 2)  # the shortlist's 2 t reused


# ---------------------------------------------------------------------- through classify
FAST = AdaptiveConfig(n_timesteps=4)


def _records(out):
    return [json.loads(x) for f in sorted((out / "shards").glob("*.jsonl")) for x in f.read_text().splitlines()]


def test_classify_with_the_search_given_whole_matches_the_flat_options(classcond_dir, image_folder, tmp_path, one_thread):
    from diffdisc.backbones.registry import create_backbone

    cc = create_backbone(classcond_dir)
    flat = classify(cc, image_folder, ClassifyConfig(adaptive=HALVING, shortlist=2), out=tmp_path / "flat", limit=4)
    whole = CascadeConfig(keep=2, shortlist=ExhaustiveConfig(n_timesteps=2), decide=HalvingConfig(stages=((2, 2), (4, 1))))
    got = classify(cc, image_folder, ClassifyConfig(search=whole), out=tmp_path / "whole", limit=4)
    assert _records(tmp_path / "flat") == _records(tmp_path / "whole")
    assert got.calls.tolist() == flat.calls.tolist()
    a, b = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("flat", "whole"))
    a, b = a.get("settings", a), b.get("settings", b)
    assert "adaptive" in a and "search" not in a  # the flat options' run identity, as before
    assert b["search"] == whole.to_dict() and "adaptive" not in b and a["shortlist"] == b["shortlist"]


# ---------------------------------------------------------------------- a new strategy is one file
@pytest.fixture
def toy():
    @register
    @dataclass(frozen=True)
    class OneTimestepConfig(GridConfig):
        """Every candidate at the one timestep `t`."""

        kind = "test-one-t"
        t: int = 500

        def build(self, ctx=None):
            return OneTimestep(self)

    class OneTimestep(GridSearch):
        def search(self, chunk: Chunk, results: list[ImageScores]) -> None:
            chunk.run([(i, c, self.config.t) for i in range(len(chunk.keys)) for c in chunk.alive(i)], results)

    yield OneTimestepConfig
    del SEARCHES[OneTimestepConfig.kind]


def test_a_strategy_registered_in_one_place_runs_through_classify(toy, classcond_dir, image_folder, tmp_path):
    from diffdisc.backbones.registry import create_backbone

    cc = create_backbone(classcond_dir)
    cfg = ClassifyConfig(search=toy(t=300))
    res = classify(cc, image_folder, cfg, out=tmp_path / "toy", limit=3)
    recs = _records(tmp_path / "toy")
    assert all(r["timesteps"] == [300] and r["calls"] == 3 for r in recs) and len(res) == 3
    run = json.loads((tmp_path / "toy" / "run.json").read_text())
    assert run.get("settings", run)["search"] == {"kind": "test-one-t", "sigmas": "scheduler", "t": 300}
    assert ClassifyConfig.from_dict(cfg.to_dict()) == cfg
    nested = CascadeConfig(keep=2, shortlist=toy(t=900), decide=toy(t=100))  # and it composes
    classify(cc, image_folder, ClassifyConfig(search=nested), out=tmp_path / "nested", limit=3)
    for r in _records(tmp_path / "nested"):
        assert r["timesteps"] == [100] and r["calls"] == 3 + 2 and r["shortlist_calls"] == 3
