"""Tiny run directories for the report tests, made by running real diffdisc code on tiny models.

Run "a" has every kind of data (classification with t-test pruning, probes diffusion vs contrastive, a
feature sweep, a cross-attention heat map, a synthetic set); run "b" is a halving classification over a
different class set. User text carries `<script>` so escaping is tested on real output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SCRIPT = "<script>alert(1)</script>"
CLASSES_A = ["red", SCRIPT, "blue"]
MODEL_NAME = "tiny-classcond-colours"  # the model's own name (`diffdisc train --name`); its folder is "model"


def build_runs(root: Path, sd_dir: Path, classcond_dir: Path, image_folder: Path) -> dict[str, Path]:
    from diffdisc.backbones.registry import create_backbone, list_backbones
    from diffdisc.datasets.probes import PROBES
    from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
    from diffdisc.tasks.attention import attention_heatmaps
    from diffdisc.tasks.classify import ClassifyConfig, classify
    from diffdisc.tasks.probe import ProbeConfig, run_probes
    from diffdisc.tasks.synth import SynthConfig, generate

    # a class-conditional model whose class names are user text (one of them is markup)
    model = root / "model"
    shutil.copytree(classcond_dir, model)
    meta = json.loads((model / "diffdisc.json").read_text())
    (model / "diffdisc.json").write_text(json.dumps({**meta, "class_names": CLASSES_A, "name": MODEL_NAME}))
    data = root / "data"
    shutil.copytree(image_folder, data)
    (data / "classes.json").write_text(json.dumps({"green": SCRIPT}))  # folder -> display name
    bb = create_backbone(model)
    score = ScoreConfig(batch_size=64)

    a = root / "a"
    ttest = AdaptiveConfig(strategy="ttest", min_scores=3, max_scores=6, p_value=0.2)
    classify(bb, data, ClassifyConfig(score=score, adaptive=ttest), out=a)
    sd = create_backbone(sd_dir)
    models = [sd] + ([create_backbone("fmnist-scenes-clip")] if "fmnist-scenes-clip" in list_backbones() else [])
    run_probes(models, [p for p in ("binding", "cue-conflict") if p in PROBES], ProbeConfig(n=3, n_timesteps=2),
               out=a / "probes")
    attention_heatmaps(sd, data / "red" / "0.png", f"a red {SCRIPT}", a / "heatmap.png", t=300)
    generate(bb, CLASSES_A, SynthConfig(per_class=2, steps=2, batch_size=8), out=a / "synth")
    (a / "features_sweep.json").write_text(json.dumps({
        "model": "tiny-classcond", "blocks": ["down.0", "mid", "up.1"], "timesteps": [10, 100, 500],
        "val_acc": [[0.5, 0.6, 0.4], [0.7, 0.9, 0.5], [0.6, None, 0.3]],
        "best": {"block": "mid", "t": 100, "val_acc": 0.9}, "test_acc": 0.85, "head": "linear", "pooling": "avg",
        "n_train": 30, "n_val": 9, "n_test": 9,
    }))  # fmt: skip

    b_data = root / "data_b"
    for c in ("red", "blue"):
        shutil.copytree(image_folder / c, b_data / c)
    b = root / "b"
    halving = AdaptiveConfig(strategy="halving", stages=((2, 1), (4, 1)))
    classify(bb, b_data, ClassifyConfig(classes=["red", "blue"], score=score, adaptive=halving), out=b)
    return {"a": a, "b": b, "data": data}


def session_runs(tmp_path_factory, sd_dir, classcond_dir, image_folder) -> dict[str, Path]:
    """Built once per pytest session, shared by test_report.py and test_report_browser.py."""
    root = tmp_path_factory.getbasetemp() / "report-runs"
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        build_runs(root, sd_dir, classcond_dir, image_folder)
        (root / "done").write_text("")
    return {"a": root / "a", "b": root / "b", "data": root / "data"}
