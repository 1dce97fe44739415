"""classify's defaults, `--limit` subsets, the resize note and the metrics table (issue 14 items 5, 6, 8, 9)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from diffdisc.backbones.registry import create_backbone
from diffdisc.data.folders import open_image_dataset, stratified_subset
from diffdisc.data.images import resize_note
from diffdisc.errors import DiffdiscError
from diffdisc.results import ClassificationResult
from diffdisc.scoring.config import AdaptiveConfig, parse_stages
from diffdisc.tasks.classify import ClassifyConfig, classify

ROOT = Path(__file__).resolve().parents[1]
ONE_T = AdaptiveConfig(n_timesteps=1)


def test_stratified_subset_takes_classes_in_turn_and_grows_by_prefix():
    labels = [0] * 10 + [1] * 10 + [2] * 10
    six = stratified_subset(labels, 6, seed=0)
    assert six == sorted(six) and Counter(labels[i] for i in six) == {0: 2, 1: 2, 2: 2}
    assert stratified_subset(labels, 6, seed=0) == six and stratified_subset(labels, 6, seed=1) != six
    assert set(six) <= set(stratified_subset(labels, 12, seed=0))  # a larger --limit keeps the smaller one's
    uneven = stratified_subset([0, 0] + [1] * 10, 6)  # a class that runs out drops out of the round
    assert Counter(0 if i < 2 else 1 for i in uneven) == {0: 2, 1: 4}
    assert stratified_subset(labels, None) == stratified_subset(labels, 99) == list(range(30))
    with pytest.raises(DiffdiscError, match="limit must be >= 1"):
        stratified_subset(labels, 0)


def test_stratified_subset_unlabelled_is_a_seeded_random_subset():
    pick = stratified_subset([None] * 30, 5, seed=0)
    assert len(set(pick)) == 5 and pick != list(range(5)) and pick == stratified_subset([-1] * 30, 5, seed=0)


def test_limit_covers_every_class_keeps_order_and_resumes(classcond_dir, image_folder, tmp_path):
    bb, ds = create_backbone(classcond_dir), open_image_dataset(image_folder)
    res = classify(bb, image_folder, ClassifyConfig(adaptive=ONE_T, limit=3), out=tmp_path / "r")
    assert sorted(res.labels.tolist()) == [0, 1, 2]  # sorted files would give three images of one class
    recs = {r["image_id"]: r["order"] for r in ClassificationResult.load(tmp_path / "r").records}
    assert all(ds.items[o].image_id == i for i, o in recs.items())  # order = position in the full folder
    more = classify(bb, image_folder, ClassifyConfig(adaptive=ONE_T, limit=6), out=tmp_path / "r")
    assert set(recs) <= set(more.image_ids) and len(more) == 6 and sorted(Counter(more.labels.tolist()).values()) == [2, 2, 2]


def test_resize_is_said_once_per_run(classcond_dir, image_folder, tmp_path):
    res = classify(create_backbone(classcond_dir), image_folder, ClassifyConfig(adaptive=ONE_T), out=tmp_path / "r")  # 20x20 -> 16x16
    assert res.notes == ["images resized 20×20 -> 16×16 (the model's size): bicubic resize of the shorter side, "
                         "then centre crop; 9 of 9 images"]  # fmt: skip
    assert resize_note(Counter({(16, 16): 4}), 16) is None
    mixed = resize_note(Counter({(28, 28): 5, (40, 30): 2, (16, 16): 1, (9, 9): 1, (8, 8): 1}), 16)
    assert "28×28 (5 images), 40×30 (2 images)" in mixed and "and 1 more sizes" in mixed and "9 of 10" in mixed


def test_defaults_agree_across_config_cli_and_docs():
    import typer.main

    from diffdisc.cli import app

    cfg = AdaptiveConfig()
    assert (cfg.n_timesteps, cfg.stages) == (20, ((10, 3), (20, 1)))
    cmd = typer.main.get_command(app).commands["classify"]
    opts = {p.name: p.default for p in cmd.params}
    assert opts["timesteps"] == cfg.n_timesteps and parse_stages(opts["stages"]) == cfg.stages
    for doc in ("README.md", "docs/methods.md"):
        text = (ROOT / doc).read_text()
        assert "--stages 10:3,20:1" in text and "20:3,50:1" not in text, doc


def _table(capsys, monkeypatch, metrics: dict) -> str:
    from diffdisc.cli.classify import print_metrics as _print_metrics

    monkeypatch.setenv("COLUMNS", "200")
    _print_metrics(metrics, Path("runs/x"), as_json=False)
    return capsys.readouterr().out


def test_metrics_table_puts_calibrated_ece_first(capsys, monkeypatch):
    base = {"n_images": 9, "accuracy": 0.5, "unet_calls_per_image": 30.0}
    plain = _table(capsys, monkeypatch, {**base, "ece": 0.05, "ece_uncalibrated": 0.84, "ece_temperature_scaled": 0.05,
                                         "temperature": 1.0, "temperature_source": "none: T = 1, uncalibrated"})  # fmt: skip
    assert plain.index("ece (cross-fitted T)") < plain.index("ece (uncalibrated, T=1)") < plain.index("temperature ")
    assert plain.count("0.0500") == 1 and "0.8400" in plain and "ece is" not in plain
    cal = _table(capsys, monkeypatch, {**base, "ece": 0.03, "ece_temperature_scaled": 0.04, "temperature": 0.05,
                                       "temperature_source": "model metadata (fitted on 200 training images)"})  # fmt: skip
    assert cal.index("ece (T=0.05)") < cal.index("ece (cross-fitted T)") and "uncalibrated" not in cal
    assert "model metadata (fitted on 200 training images)" in cal
