"""A self shortlist scores on its decider's grid (`stage_subset` of the decider's largest grid), so the decider
reuses those errors: each (image, candidate, t) is computed and charged once, and shortlist-then-exhaustive makes
halving's decisions at halving's cost. Where the decider has no such grid the shortlist keeps its own, and the run
settings say which, so a run made with the old off-grid timesteps does not resume with new ones."""

import json

import pytest
import torch

from conftest import run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.scoring.config import AdaptiveConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.schedule import dc_grid, stage_subset
from diffdisc.scoring.search import (
    CascadeConfig,
    ExhaustiveConfig,
    HalvingConfig,
    Inputs,
    TreeConfig,
    TTestConfig,
)
from diffdisc.tasks.classify import ClassifyConfig, classify
from test_scoring import TemplateBackbone

M, KEEP, N_CHEAP, N_DECIDE = 10, 5, 2, 20


class Counting(ScoringEngine):
    """Counts the (image, condition, t) items the U-Net actually evaluates."""

    items = 0

    def run(self, x0, keys, conds, work):
        self.items += len(work)
        return super().run(x0, keys, conds, work)


@pytest.fixture(scope="module")
def world():
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(M, 1, 8, 8, generator=g)
    labels = torch.arange(M).repeat(2)
    x0 = templates[labels] + 4.0 * torch.randn(2 * M, 1, 8, 8, generator=g)  # noisy: about half the images wrong
    bb = TemplateBackbone(templates)
    return bb, x0, [f"i{i}" for i in range(2 * M)], bb.conditions(list(range(M))), labels.tolist()


def _run(world, cfg):
    bb, x0, keys, conds, _ = world
    engine = Counting(bb)
    return cfg.build()(Inputs(engine, x0, conds), keys), engine.items


def test_shortlist_then_exhaustive_decides_as_halving_at_its_cost(world):
    cascade = CascadeConfig(keep=KEEP, shortlist=ExhaustiveConfig(n_timesteps=N_CHEAP),
                            decide=ExhaustiveConfig(n_timesteps=N_DECIDE))  # fmt: skip
    got, computed = _run(world, cascade)
    halving, _ = _run(world, HalvingConfig(stages=((N_CHEAP, KEEP), (N_DECIDE, 1))))
    assert [r.prediction for r in got] == [r.prediction for r in halving]
    assert sum(p == y for p, y in zip((r.prediction for r in got), world[4], strict=True)) < 2 * M  # the decisions are not trivial
    assert [r.ranking() for r in got] == [r.ranking() for r in halving]
    assert [r.n_calls for r in got] == [r.n_calls for r in halving]
    cheap = stage_subset(dc_grid(1000, N_DECIDE), N_CHEAP)  # 275, 775: on the decider's grid, not 250, 750
    for r, h in zip(got, halving, strict=True):
        assert r.calls == M * N_CHEAP + KEEP * (N_DECIDE - N_CHEAP) == 110
        assert r.record["shortlist_calls"] == M * N_CHEAP
        for c in r.record["shortlist"]:  # the decider's 20 t include the shortlist's own errors, as halving's do
            assert set(cheap) <= set(r.errors[c]) and r.errors[c] == pytest.approx(h.errors[c], rel=1e-6)
    assert computed == sum(r.calls for r in got)  # charged = computed: nothing scored twice, nothing charged twice


@pytest.mark.parametrize("decide", [
    ExhaustiveConfig(n_timesteps=1),  # fewer t than the shortlist's
    TTestConfig(min_scores=3, max_scores=6),  # random t per image: no grid
    ExhaustiveConfig(n_timesteps=4, sigmas="uniform"),  # another σ placement
    TreeConfig(tree="auto"),  # candidates of its own
])  # fmt: skip
def test_without_a_grid_to_share_the_shortlist_keeps_its_own(decide):
    assert CascadeConfig(keep=2, shortlist=ExhaustiveConfig(n_timesteps=N_CHEAP), decide=decide).decider_grid() is None


def test_fallback_scores_its_own_grid_and_charges_each_stage_its_own(world):
    cascade = CascadeConfig(keep=KEEP, shortlist=ExhaustiveConfig(n_timesteps=4), decide=ExhaustiveConfig(n_timesteps=2))
    got, computed = _run(world, cascade)
    assert all(r.calls == M * 4 + KEEP * 2 for r in got) and computed == sum(r.calls for r in got)
    assert all(sorted(r.timesteps) == dc_grid(1000, 2) for r in got)  # the decider's; the shortlist's 125..875 its own


def test_through_classify_the_self_shortlist_decides_as_halving(classcond_dir, image_folder, tmp_path, one_thread):
    cc = create_backbone(classcond_dir)  # 3 classes: top 2 of 2 t, then exhaustive 4 = halving 2:2,4:1
    got = classify(cc, image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=4), shortlist=2), out=tmp_path / "s")
    halving = AdaptiveConfig(strategy="halving", stages=((2, 2), (4, 1)))
    ref = classify(cc, image_folder, ClassifyConfig(adaptive=halving), out=tmp_path / "h")
    assert got.predictions.tolist() == ref.predictions.tolist()
    assert got.calls.tolist() == ref.calls.tolist() == [3 * 2 + 2 * (4 - 2)] * 9


def _settings(out):
    stored = json.loads((out / "run.json").read_text())
    return stored.get("settings", stored)


def test_run_settings_record_the_grid_and_an_old_off_grid_run_is_not_resumed(monkeypatch, capsys, classcond_dir,
                                                                              image_folder, tmp_path, one_thread):  # fmt: skip
    base = ["classify", "--model", classcond_dir, "--data", image_folder, "--limit", 3, "--quiet", "--shortlist", 2]
    code, _, err = run_main(monkeypatch, capsys, *base, "--timesteps", 4, "--out", tmp_path / "on")
    assert code == 0, err
    sl = _settings(tmp_path / "on")["shortlist"]
    assert sl["grid"] == "decider" and sl["timesteps"] == stage_subset(dc_grid(1000, 4), 2) == [375, 875]
    recs = [json.loads(x) for f in (tmp_path / "on" / "shards").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert {r["calls"] for r in recs} == {3 * 2 + 2 * (4 - 2)}
    code, _, err = run_main(monkeypatch, capsys, *base, "--timesteps", 1, "--out", tmp_path / "own")  # 1 t < 2
    assert code == 0, err
    assert _settings(tmp_path / "own")["shortlist"]["timesteps"] == dc_grid(1000, 2)
    assert "grid" not in _settings(tmp_path / "own")["shortlist"]
    # a run made before: its shortlist at its own 2-point grid; resuming it now would change the timesteps
    run_json = tmp_path / "on" / "run.json"
    stored = json.loads(run_json.read_text())
    settings = stored.get("settings", stored)
    settings["shortlist"] = {k: v for k, v in sl.items() if k != "grid"} | {"timesteps": dc_grid(1000, 2)}
    run_json.write_text(json.dumps(stored))
    code, _, err = run_main(monkeypatch, capsys, *base, "--timesteps", 4, "--out", tmp_path / "on")
    assert code == 1 and "shortlist.timesteps: [250, 750] -> [375, 875]" in err and err.strip().count("\n") == 0, err
