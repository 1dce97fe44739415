"""`diffdisc baseline`: a timm classifier trained on a folder, evaluated on another, shown by `diffdisc report`."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import run_main
from diffdisc.tasks.baseline import ClassifierConfig, train_classifier

TINY = ClassifierConfig(model="resnet10t", epochs=2, batch_size=2, image_size=16)


def test_baseline_train_eval_and_report(monkeypatch, capsys, image_folder, classcond_dir, tmp_path, one_thread):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.config import AdaptiveConfig
    from diffdisc.tasks.classify import ClassifyConfig, classify

    out = tmp_path / "cnn<i>"  # user text in the page must be escaped
    code, stdout, _ = run_main(monkeypatch, capsys, "baseline", "train", "--data", image_folder, "--model", "resnet10t",
                               "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--out", out, "--test", image_folder,
                               "--json")  # fmt: skip
    res = json.loads(stdout)
    assert code == 0 and res["model_dir"] == str(out) and res["test"]["n_images"] == 9 and 0 <= res["test"]["accuracy"] <= 1
    meta = json.loads((out / "classifier.json").read_text())
    assert "val_acc" in meta and "val_acc_synthetic" not in meta and meta["n_train"] + meta["n_val"] == 9

    other = tmp_path / "other"  # a second test folder: one more recorded evaluation, the first one kept
    shutil.copytree(image_folder, other)
    code, stdout, err = run_main(monkeypatch, capsys, "baseline", "eval", out, "--data", other)
    assert code == 0 and "accuracy" in stdout and "top-5" in stdout and "evaluations.json" in err
    evals = json.loads((out / "evaluations.json").read_text())["evaluations"]
    assert [e["data"] for e in evals] == [str(image_folder.resolve()), str(other.resolve())]
    assert len(evals[1]["predictions"]) == len(evals[1]["confidence"]) == 9

    diffusion = tmp_path / "diffusion"
    classify(create_backbone(classcond_dir), image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2)), out=diffusion)
    page = tmp_path / "report.html"
    code, stdout, _ = run_main(monkeypatch, capsys, "report", diffusion, out, "--out", page)
    html = page.read_text()
    metrics = html[html.index('id="metrics"') : html.index("</table>", html.index('id="metrics"'))]
    assert code == 0 and metrics.count("<tr>") == 4 and "<td>exhaustive</td>" in metrics  # header, diffusion, 2 baseline rows
    assert metrics.count("supervised baseline</td>") == 2 and "resnet10t (" in metrics
    assert "cnn&lt;i&gt; on other" in html and "cnn<i>" not in html


def test_baseline_eval_errors(monkeypatch, capsys, image_folder, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "baseline", "eval", tmp_path, "--data", image_folder)
    assert code == 1 and "no classifier.json" in err and "diffdisc baseline train" in err


def test_max_minutes_stops_mid_epoch_and_resume_matches(image_folder, tmp_path, one_thread):
    """A time limit checkpoints mid-epoch (with the augmentation generator); the resumed run ends where an
    uninterrupted one does."""
    logs: list[str] = []
    train_classifier(image_folder, TINY, out=tmp_path / "cut", log=logs.append, max_minutes=1e-9)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "last" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (0, 1) and any("stopped by --max-minutes" in m for m in logs)
    assert (tmp_path / "cut" / "model.safetensors").is_file()  # the best model so far, usable at once
    logs.clear()
    train_classifier(image_folder, TINY, out=tmp_path / "cut", log=logs.append)
    assert any("resumed after epoch 0 and 1/" in m for m in logs) and any(m.startswith("epoch 2/2") for m in logs)
    train_classifier(image_folder, TINY, out=tmp_path / "whole", log=lambda m: None)
    a, b = (load_file(str(tmp_path / d / "checkpoints" / "last" / "model.safetensors")) for d in ("cut", "whole"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a if a[k].is_floating_point())


def test_synth_train_keeps_its_synthetic_labels(image_folder, tmp_path, one_thread):
    from diffdisc.tasks.synth_train import train_classifier as synth_train

    logs: list[str] = []
    synth_train(image_folder, ClassifierConfig(model="resnet10t", epochs=1, batch_size=8, image_size=16),
                out=tmp_path / "clf", log=logs.append)  # fmt: skip
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta["val_acc_synthetic"] == meta["val_acc"] and any("val acc (synthetic)" in m for m in logs)


@pytest.mark.parametrize("cmd", [["baseline", "train"], ["baseline", "eval"], ["synth", "train"]])
def test_help_names_the_options(monkeypatch, capsys, cmd):
    code, stdout, _ = run_main(monkeypatch, capsys, *cmd, "--help")
    assert code == 0 and ("--max-minutes" in stdout) == (cmd[1] == "train") and "--json" in stdout
