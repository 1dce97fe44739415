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


def test_command_line_says_one_ece_in_percent_with_intervals(capsys, monkeypatch):
    base = {"n_images": 9, "n_labelled": 9, "accuracy": 0.5, "accuracy_ci": [0.2, 0.8], "unet_calls_per_image": 118.5}
    plain = _table(capsys, monkeypatch, {**base, "ece": 0.05, "ece_ci": [0.01, 0.12], "ece_uncalibrated": 0.84,
                                         "ece_temperature_scaled": 0.05, "ece_source": "cross-fitted T",
                                         "temperature": 1.0, "temperature_source": "none: T = 1, uncalibrated"})  # fmt: skip
    assert plain.count("ECE") == 1 and "ECE [95% CI]: 5.0% [1.0%, 12.0%] (cross-fitted T)" in plain
    assert "84" not in plain and "0.05" not in plain  # no second ECE, no fraction
    assert "accuracy [95% CI]: 50.0% [20.0%, 80.0%]" in plain and "calls/image: 118.5" in plain
