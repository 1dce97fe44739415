"""Diffusion × contrastive ensemble (`classify --ensemble MODEL --ensemble-weight W|auto`): the pooling maths, a
weight fitted on validation labels only, the refusals, and the run end to end from Python and the CLI."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, make_classcond_dir, run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig
from diffdisc.scoring.ensemble import fit_weight, log_probs, pool, pooled_scores, ranking
from diffdisc.tasks.classify import ClassifyConfig, classify

FAST = AdaptiveConfig(n_timesteps=2)


def folder(root, seed, classes=CLASSES[:2], per_class=3):
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            a = (rng.random((16, 16, 3)) * 60).astype(np.uint8)
            a[..., CLASSES.index(name)] = 200
            Image.fromarray(a).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = make_classcond_dir(tmp_path_factory.mktemp("cc2"), n_classes=2, channels=3)
    return create_backbone(root), create_backbone("fmnist-scenes-clip"), root


def test_pooling_is_the_weighted_sum_of_each_models_calibrated_log_probabilities():
    d, c = np.array([[1.0, 2.0, 4.0]]), np.array([[3.0, 1.0, 2.0]])
    assert np.allclose(pool(d, c, 1.0, 0.5, 2.0), log_probs(d, 0.5)) and np.allclose(pool(d, c, 0.0, 0.5, 2.0), log_probs(c, 2.0))
    # by hand: w·(−d/T_d) + (1−w)·(−c/T_c), normalised (the per-model normalisers cancel)
    z = 0.3 * (-d / 0.5) + 0.7 * (-c / 2.0)
    assert np.allclose(pool(d, c, 0.3, 0.5, 2.0), z - np.log(np.exp(z).sum()))
    assert np.allclose(np.exp(-pooled_scores(d, c, 0.3, 0.5, 2.0)).sum(), 1.0)  # softmax at T = 1 reads them back
    # a candidate the diffusion search never scored stays out at every w; at w = 0 the contrastive model decides
    # among the rest, renormalised
    d_inf = np.array([[1.0, np.inf, 4.0]])
    assert all(np.isneginf(pool(d_inf, c, w, 1.0, 1.0)[0, 1]) for w in (0.0, 0.5, 1.0))
    assert np.allclose(pool(d_inf, c, 0.0, 1.0, 1.0)[0, [0, 2]], log_probs(c[:, [0, 2]], 1.0)[0])
    assert ranking(np.array([0.5, np.inf, np.inf]), [0, 2, 1]) == [0, 2, 1]  # inf ties keep the search's order
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pool(d, c, 1.5, 1.0, 1.0)


def test_the_weight_goes_to_the_informative_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    good = rng.normal(size=(200, 4)) + 3.0 * (np.arange(4) != y[:, None])  # true class lowest
    noise = rng.normal(size=(200, 4))
    assert fit_weight(good, noise, y).weight >= 0.8  # diffusion informative
    assert fit_weight(noise, good, y).weight <= 0.2  # contrastive informative
    fixed = fit_weight(noise, good, y, grid=(0.4,))
    assert fixed.weight == 0.4 and len(fixed.table) == 1


def test_the_weight_is_fitted_on_validation_labels_never_the_datas(models, tmp_path, one_thread):
    cc, clip, _ = models
    val = folder(tmp_path / "val", 1)
    data = folder(tmp_path / "data", 2)
    swapped = tmp_path / "swapped"  # the same images with the labels exchanged
    shutil.copytree(data / "red", swapped / "green")
    shutil.copytree(data / "green", swapped / "red")
    cfg = ClassifyConfig(adaptive=FAST, validation=str(val), ensemble_weight="auto")
    runs = [classify(cc, d, cfg, out=tmp_path / d.name, ensemble_model=clip) for d in (data, swapped)]
    ens = [r.settings["ensemble"] for r in runs]
    assert ens[0]["weight"] == ens[1]["weight"] and ens[0]["temperatures"] == ens[1]["temperatures"]
    assert ens[0]["fit"]["n"] == 6 and ens[0]["model"]["name"] == "fmnist-scenes-clip"
    rec = json.loads((tmp_path / "data" / "shards" / "part-00000.jsonl").read_text().splitlines()[0])
    expect = pooled_scores(np.array([rec["diffusion_scores"]]), np.array([rec["contrastive_scores"]]), ens[0]["weight"],
                           ens[0]["temperatures"]["diffusion"], ens[0]["temperatures"]["contrastive"])[0]  # fmt: skip
    assert np.allclose(rec["scores"], expect) and rec["pred"] == int(np.argmin(expect))
    assert runs[0].settings["model_temperature"]["value"] == 1.0  # pooled scores are log-probabilities
    # a given weight keeps it (temperatures still from validation); w = 1 ranks as the diffusion model alone
    one = classify(cc, data, ClassifyConfig(adaptive=FAST, validation=str(val), ensemble_weight=1.0), out=tmp_path / "w1",
                   ensemble_model=clip)  # fmt: skip
    alone = classify(cc, data, ClassifyConfig(adaptive=FAST), out=tmp_path / "alone")
    assert one.settings["ensemble"]["weight"] == 1.0 and one.predictions.tolist() == alone.predictions.tolist()


def test_as_a_cascades_final_stage_it_reorders_the_shortlist_only(classcond_dir, image_folder, models, tmp_path, one_thread):
    clip = models[1]
    val = folder(tmp_path / "val", 5, classes=CLASSES)
    cfg = ClassifyConfig(adaptive=FAST, shortlist=2, validation=str(val), ensemble_weight="auto")
    res = classify(create_backbone(classcond_dir), image_folder, cfg, out=tmp_path / "c", shortlist_model=clip, ensemble_model=clip)
    for line in (tmp_path / "c" / "shards" / "part-00000.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert sorted(r["ranking"][:2]) == sorted(r["shortlist"]) and r["scores"][r["ranking"][2]] is None  # inf, stored as null
        assert r["contrastive_forwards"] == 1 and r["ensemble_forwards"] == 1
    assert res.settings["shortlist"]["scorer"] == "contrastive" and res.settings["ensemble"]["fit"]["n"] == 9


def test_refusals_are_one_line_and_come_before_the_run_directory(models, tmp_path):
    cc, clip, _ = models
    data, val = folder(tmp_path / "data", 2), folder(tmp_path / "val", 1)
    cases = [
        (ClassifyConfig(adaptive=FAST, ensemble_weight="auto"), clip, "auto fits the weight.*--validation"),
        (ClassifyConfig(adaptive=FAST, validation=str(val), ensemble_weight="auto"), cc, "is a .*diffusion model.*--ensemble"),
        (ClassifyConfig(adaptive=FAST, validation=str(data), ensemble_weight="auto"), clip, "is the --data folder"),
        (ClassifyConfig(adaptive=FAST, ensemble_weight=0.5), None, "go together"),
        (ClassifyConfig(adaptive=FAST, validation=str(val)), None, "read by --strategy auto and --ensemble"),
    ]
    for i, (cfg, model, msg) in enumerate(cases):
        with pytest.raises(DiffdiscError, match=msg):
            classify(cc, data, cfg, out=tmp_path / f"o{i}", ensemble_model=model)
    three = folder(tmp_path / "three", 3, classes=CLASSES)  # validation labelled with a class the run does not have
    with pytest.raises(DiffdiscError, match="--validation .*not one of the classes"):
        classify(cc, data, ClassifyConfig(adaptive=FAST, validation=str(three), ensemble_weight="auto"), out=tmp_path / "o9",
                 ensemble_model=clip)  # fmt: skip
    with pytest.raises(DiffdiscError, match=r"number in \[0, 1\] or auto"):
        ClassifyConfig(ensemble_weight=2)
    assert not any((tmp_path / f"o{i}").exists() for i in range(10))


def test_cli_ensemble(models, monkeypatch, capsys, tmp_path, one_thread):
    root = models[2]
    data, val = folder(tmp_path / "data", 2), folder(tmp_path / "val", 1)
    base = ["classify", "--model", root, "--data", data, "--timesteps", 2, "--quiet"]
    code, _, err = run_main(monkeypatch, capsys, *base, "--ensemble", "fmnist-scenes-clip", "--out", tmp_path / "x")
    assert code != 0 and "--validation" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_main(monkeypatch, capsys, *base, "--ensemble", "fmnist-scenes-clip", "--validation", val,
                              "--out", tmp_path / "y")  # fmt: skip
    assert code == 0, err
    ens = json.loads((tmp_path / "y" / "run.json").read_text())["ensemble"]
    assert 0.0 <= ens["weight"] <= 1.0 and "validation images" in ens["chosen_by"]

