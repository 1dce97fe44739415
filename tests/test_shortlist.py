"""`classify --shortlist K`: a cheap scorer keeps each image's top K candidates, the run's strategy decides among
them. A true class ranked outside K is lost and counted; both stages' calls are charged; bad input is refused."""

import json
import logging

import numpy as np
import pytest
import torch

from conftest import CLASSES, make_classcond_dir, run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.data.images import open_image, to_tensor
from diffdisc.data.labelled import LabelledImages
from diffdisc.errors import DiffdiscError
from diffdisc.features.heads import HeadConfig
from diffdisc.features.shortlist import FeatureHead
from diffdisc.features.taps import extract
from diffdisc.scoring.adaptive import ImageScores
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.schedule import dc_grid, stage_subset
from diffdisc.tasks.classify import ClassifyConfig, classify
from diffdisc.tasks.features import FeatureConfig, SweepConfig, sweep
from diffdisc.tasks.shortlist import Shortlist

M, K, T_CHEAP, T_DECIDE = 3, 2, 2, 4
FAST = AdaptiveConfig(n_timesteps=T_DECIDE)
STRATEGIES = {
    "exhaustive": FAST,
    "halving": AdaptiveConfig(strategy="halving", stages=((2, 2), (4, 1))),
    "ttest": AdaptiveConfig(strategy="ttest", min_scores=3, max_scores=5, p_value=0.2),
}


@pytest.fixture(scope="module")
def cc(classcond_dir):
    return create_backbone(classcond_dir)


def _records(out):
    return [json.loads(x) for x in sorted((out / "shards").glob("*.jsonl"))[0].read_text().splitlines()]


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_self_shortlist_counts_calls_exactly_and_keeps_the_cheap_top_k(cc, image_folder, tmp_path, one_thread):
    res = classify(cc, image_folder, ClassifyConfig(adaptive=FAST, shortlist=K, shortlist_timesteps=T_CHEAP), out=tmp_path / "s")
    plain = classify(cc, image_folder, ClassifyConfig(adaptive=FAST), out=tmp_path / "p")
    # the cheap stage, independently: every candidate at 2 t of the decider's 4-point grid under the run's noise
    engine = ScoringEngine(cc, ScoreConfig())
    recs = _records(tmp_path / "s")
    x0 = cc.encode(torch.stack([to_tensor(open_image(r["path"]), 16, 3) for r in recs]))
    on_grid = stage_subset(dc_grid(1000, T_DECIDE), T_CHEAP)
    cheap = engine.exhaustive(x0, [r["image_id"] for r in recs], cc.conditions(CLASSES), on_grid).mean(-1)
    for i, r in enumerate(recs):
        assert r["shortlist"] == cheap[i].argsort().tolist()[:K]
        assert r["shortlist_calls"] == M * T_CHEAP and r["contrastive_forwards"] == 0
        # 6 + 4, computed from the settings alone: the decider reuses the shortlist's 2 t of its 4
        assert r["calls"] == M * T_CHEAP + K * (T_DECIDE - T_CHEAP) == sum(r["n_calls"])
        assert r["pred"] in r["shortlist"] and r["ranking"][:K] == sorted(r["shortlist"], key=lambda c: r["scores"][c])
    # the decider scored the shortlist exactly as the plain run did (same noise, same t)
    by_id = dict(zip(plain.image_ids, plain.errors, strict=True))
    for r in recs:
        for c in r["shortlist"]:
            np.testing.assert_allclose(r["errors"][c], by_id[r["image_id"]][c], rtol=1e-5)
    m = _metrics(tmp_path / "s")
    assert m["unet_calls_per_image"] == 10 and m["shortlist_calls_per_image"] == 6 and m["decider_calls_per_image"] == 4
    assert m["shortlist_keep"] == K and m["shortlist_scorer"] == "self" and m["contrastive_forwards_per_image"] == 0
    stored = json.loads((tmp_path / "s" / "run.json").read_text())
    sl = (stored.get("settings") or stored)["shortlist"]
    assert sl == {"keep": K, "scorer": "self", "model": {"name": cc.info.name, "fingerprint": cc.info.fingerprint},
                  "grid": "decider", "timesteps": on_grid}  # fmt: skip
    assert len(res) == 9


@pytest.mark.parametrize("strategy", ["halving", "ttest"])
def test_every_strategy_decides_within_the_shortlist_and_charges_both(cc, image_folder, tmp_path, strategy, one_thread):
    classify(cc, image_folder, ClassifyConfig(adaptive=STRATEGIES[strategy], shortlist=K), out=tmp_path / strategy, limit=4)
    run = json.loads((tmp_path / strategy / "run.json").read_text())
    cheap = set((run.get("settings") or run)["shortlist"]["timesteps"])  # halving's grid holds them; the t-test's not
    for r in _records(tmp_path / strategy):
        scored = [{t for t, e in zip(r["timesteps"], row, strict=True) if e is not None} for row in r["errors"]]
        assert all(not scored[c] and r["n_calls"][c] == T_CHEAP for c in range(M) if c not in r["shortlist"])
        assert all(r["n_calls"][c] == len(cheap | scored[c]) for c in r["shortlist"])  # a (candidate, t) charged once
        assert r["calls"] == sum(r["n_calls"]) and r["pred"] in r["shortlist"]
    if strategy == "halving":  # stage 1 is the shortlist's 2 t (reused), stage 2 adds 2 t to both
        assert {r["calls"] for r in _records(tmp_path / strategy)} == {6 + 2 * 2}


def test_templates_groups_are_shortlisted_as_one_candidate(sd_dir, image_folder, tmp_path, one_thread):
    bb = create_backbone(sd_dir)
    tpl = ["a {}", "a photo of a {}"]
    classify(bb, image_folder, ClassifyConfig(classes=CLASSES, templates=tpl, adaptive=FAST, shortlist=K, limit=3), out=tmp_path / "g")
    for r in _records(tmp_path / "g"):
        assert r["shortlist_calls"] == M * 2 * T_CHEAP and r["calls"] == M * 2 * T_CHEAP + K * 2 * (T_DECIDE - T_CHEAP)  # 12 + 8


class _Liar:
    """A deliberately wrong cheap stage: it ranks each image's true class (its folder) last."""

    def evaluate(self, keys, candidates=None):
        out = []
        for k in keys:
            r = ImageScores(k, M)
            for c in range(M):
                r.add(c, 0, float(c == CLASSES.index(k.split("/")[0])), calls=0)
            out.append(r)
        return out

    def unet_calls(self, r):
        return 0

    def forwards(self, r):
        return 0


def test_a_true_class_outside_k_is_lost_and_counted(cc, image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(Shortlist, "stage", lambda self, x0, pixels: _Liar())
    res = classify(cc, image_folder, ClassifyConfig(adaptive=FAST, shortlist=K), out=tmp_path / "w")
    m = _metrics(tmp_path / "w")
    assert m["n_labelled"] == 9 and m["accuracy"] == 0.0 and m["shortlist_recall"] == 0.0  # every image, counted
    assert (res.predictions != res.labels).all() and np.isinf(res.scores[np.arange(9), res.labels]).all()
    assert m["unet_calls_per_image"] == K * T_DECIDE and m["shortlist_calls_per_image"] == 0


def test_k_at_least_the_candidates_warns_and_runs_the_plain_strategy(cc, image_folder, tmp_path, caplog):
    plain = classify(cc, image_folder, ClassifyConfig(adaptive=FAST, limit=3), out=tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="diffdisc"):
        res = classify(cc, image_folder, ClassifyConfig(adaptive=FAST, limit=3, shortlist=M), out=tmp_path / "k")
    assert any("running without the cascade" in r.getMessage() for r in caplog.records)
    assert res.predictions.tolist() == plain.predictions.tolist() and res.calls.tolist() == plain.calls.tolist()
    assert json.loads((tmp_path / "k" / "run.json").read_text()) == json.loads((tmp_path / "p" / "run.json").read_text())
    with pytest.raises(DiffdiscError, match="at least 1"):
        ClassifyConfig(shortlist=0)


def test_cheap_scorers_that_cannot_score_the_candidates_are_refused(cc, sd_dir, image_folder, tmp_path):
    two = create_backbone(make_classcond_dir(tmp_path / "two", n_classes=2))  # knows red and green, not blue
    with pytest.raises(DiffdiscError, match=r"has no class 'blue'.*cannot shortlist"):
        classify(cc, image_folder, ClassifyConfig(adaptive=FAST, shortlist=1), out=tmp_path / "x", shortlist_model=two)
    clip = create_backbone("fmnist-scenes-clip")  # its word-level tokenizer knows colours and clothes, not 'dog'
    with pytest.raises(DiffdiscError, match=r"cannot read the candidates' prompts.*'dog'"):
        classify(create_backbone(sd_dir), image_folder, ClassifyConfig(classes=["red", "dog"], adaptive=FAST, shortlist=1),
                 out=tmp_path / "y", shortlist_model=clip)  # fmt: skip
    with pytest.raises(DiffdiscError, match="contrastive model.*saves nothing"):
        classify(clip, image_folder, ClassifyConfig(shortlist=1), out=tmp_path / "z")
    assert not any((tmp_path / d).exists() for d in "xyz")  # refused before any run directory


def test_contrastive_shortlist_costs_no_unet_calls_but_its_forwards_are_reported(cc, image_folder, tmp_path):
    clip = create_backbone("fmnist-scenes-clip")  # prompts "a red", "a green", "a blue"; 32 px RGB images of its own
    classify(cc, image_folder, ClassifyConfig(adaptive=FAST, shortlist=K, limit=3), out=tmp_path / "c", shortlist_model=clip)
    recs, m = _records(tmp_path / "c"), _metrics(tmp_path / "c")
    assert all(r["shortlist_calls"] == 0 and r["contrastive_forwards"] == 1 and r["calls"] == K * T_DECIDE for r in recs)
    assert m["contrastive_forwards_per_image"] == 1 and m["shortlist_scorer"] == "contrastive" and m["unet_calls_per_image"] == 8


def test_features_head_shortlist(cc, classcond_dir, image_folder, tmp_path, one_thread):
    train = LabelledImages.from_folder(image_folder)
    cfg = SweepConfig(["mid"], [100], features=FeatureConfig(val_fraction=0.34), head=HeadConfig(weight_decays=(1e-3,), max_iter=20))
    sweep(cc, train, cfg, out=tmp_path / "sw")
    head = FeatureHead.from_dir(tmp_path / "sw" / "head")
    classify(cc, image_folder, ClassifyConfig(adaptive=FAST, shortlist=K), out=tmp_path / "h", shortlist_model=head)
    recs = _records(tmp_path / "h")
    x = torch.stack([to_tensor(open_image(r["path"]), 16, 3) for r in recs])
    feats = extract(cc, x, [r["image_id"] for r in recs], ["mid"], [100])[("mid", 100, "gap")]
    logits = head.head.model([feats])
    cols = [head.class_names.index(c) for c in CLASSES]
    for i, r in enumerate(recs):
        assert r["shortlist"] == (-logits[i, cols]).argsort().tolist()[:K]
        assert r["shortlist_calls"] == 1 and r["calls"] == 1 + K * T_DECIDE and sum(r["n_calls"]) == K * T_DECIDE
    other = create_backbone(make_classcond_dir(tmp_path / "other", seed=1))
    with pytest.raises(DiffdiscError, match="fitted on features of"):
        classify(other, image_folder, ClassifyConfig(adaptive=FAST, shortlist=K), out=tmp_path / "o", shortlist_model=head)


def test_cli_self_shortlist_end_to_end_and_resume_with_another_k_is_refused(monkeypatch, capsys, classcond_dir, image_folder, tmp_path):
    out = tmp_path / "cli"
    args = ["classify", "--model", classcond_dir, "--data", image_folder, "--timesteps", T_DECIDE, "--out", out, "--quiet"]
    code, stdout, err = run_main(monkeypatch, capsys, *args, "--shortlist", 2, "--shortlist-model", "self")
    assert code == 0, err
    assert "U-Net calls/image: 10 = 6 shortlist (top 2 by self) + 4 decider" in stdout
    code, _, err = run_main(monkeypatch, capsys, *args, "--shortlist", 1, "--shortlist-model", "self")
    assert code == 1 and "shortlist.keep" in err and err.strip().count("\n") == 0
    code, _, err = run_main(monkeypatch, capsys, *args, "--shortlist-model", "self")
    assert code == 1 and "needs --shortlist K" in err
    code, _, err = run_main(monkeypatch, capsys, *args, "--shortlist", 0)
    assert code == 1 and "at least 1 candidate" in err and err.strip().count("\n") == 0


def test_k_one_lets_the_cheap_stage_decide_without_calling_the_decider(cc, image_folder, tmp_path):
    classify(cc, image_folder, ClassifyConfig(adaptive=STRATEGIES["ttest"], shortlist=1, limit=3), out=tmp_path / "one")
    for r in _records(tmp_path / "one"):
        assert r["calls"] == M * T_CHEAP and r["pred"] == r["shortlist"][0] and np.isfinite(r["scores"]).all()
    assert _metrics(tmp_path / "one")["decider_calls_per_image"] == 0
