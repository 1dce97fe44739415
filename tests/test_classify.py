"""Task `classify` end to end: data layouts, bad input, result store, resume after SIGKILL, CLI exits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, make_noise_folder, run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.results import ClassificationResult
from diffdisc.runs import RunStore
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.tasks.classify import ClassifyConfig, build_candidates, classify

FAST = AdaptiveConfig(n_timesteps=4)


def run_cli(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "diffdisc.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if check and p.returncode:
        raise AssertionError(p.stderr)
    return p


def test_imagefolder_run_writes_results(classcond_dir, image_folder, tmp_path):
    bb = create_backbone(classcond_dir)
    res = classify(bb, image_folder, ClassifyConfig(adaptive=FAST), out=tmp_path / "r")
    assert len(res) == 9 and sorted(set(res.labels.tolist())) == [0, 1, 2]
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["n_images"] == 9 and m["unet_calls_per_image"] == 12 and 0 <= m["accuracy"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 27 and {r["rank"] for r in rows} == {1, 2, 3}
    preds = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert all(0 <= p["prob"] <= 1 and p["pred_name"] in CLASSES for p in preds)


def test_text_backbone_templates_are_averaged(sd_dir, image_folder, tmp_path):
    bb = create_backbone(sd_dir)
    cand = build_candidates(bb, ["red", "blue"], ["a {}", "a photo of a {}"])
    assert cand.keys == ["a red", "a photo of a red", "a blue", "a photo of a blue"] and cand.groups == [[0, 1], [2, 3]]
    res = classify(bb, image_folder, ClassifyConfig(classes=["red", "green", "blue"], templates=["a {}", "a photo of a {}"], adaptive=FAST), out=tmp_path / "t")
    assert res.calls.tolist() == [24] * 9  # 3 classes x 2 templates x 4 t


def test_flat_folder_with_labels_csv(classcond_dir, tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    for i in range(len(CLASSES)):
        Image.new("RGB", (16, 16), (200 * (i == 0), 200 * (i == 1), 200 * (i == 2))).save(d / f"im{i}.png")
    (tmp_path / "labels.csv").write_text("image,label\nim0.png,red\nim1.png,green\n")
    res = classify(create_backbone(classcond_dir), d, ClassifyConfig(adaptive=FAST, labels_csv=tmp_path / "labels.csv"), out=tmp_path / "o")
    assert res.labels.tolist() == [0, 1, -1]
    assert ClassificationResult.load(tmp_path / "o").metrics()["n_labelled"] == 2


def test_odd_images_are_converted(classcond_dir, tmp_path):
    d = tmp_path / "odd" / "red"
    d.mkdir(parents=True)
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(d / "rgba.png")
    Image.new("L", (20, 20), 128).save(d / "gray.png")
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(d / "sixteen.png")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(d / "tiny.png")
    Image.new("P", (20, 12)).save(d / "palette.gif")
    res = classify(create_backbone(classcond_dir), tmp_path / "odd", ClassifyConfig(classes=CLASSES, adaptive=FAST), out=tmp_path / "o")
    assert len(res) == 5


def test_corrupt_images_fail_or_skip(classcond_dir, image_folder, tmp_path):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(image_folder, d)
    (d / "red" / "corrupt.png").write_bytes(b"not an image")
    good = (d / "red" / "0.png").read_bytes()
    (d / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    bb = create_backbone(classcond_dir)
    with pytest.raises(DiffdiscError, match="cannot read image"):
        classify(bb, d, ClassifyConfig(adaptive=FAST), out=tmp_path / "f")
    res = classify(bb, d, ClassifyConfig(adaptive=FAST, on_error="skip"), out=tmp_path / "s")
    assert len(res) == 9 and {s[0] for s in res.skipped} == {"red/corrupt.png", "red/truncated.png"}


def test_bad_class_lists(classcond_dir, sd_dir, image_folder):
    bb = create_backbone(sd_dir)
    with pytest.raises(DiffdiscError, match="duplicate"):
        build_candidates(bb, ["cat", "Cat"])
    with pytest.raises(DiffdiscError, match="empty"):
        build_candidates(bb, ["cat", " "])
    with pytest.raises(DiffdiscError, match="no classes"):
        build_candidates(bb, [])
    with pytest.raises(DiffdiscError, match="unknown class"):
        build_candidates(create_backbone(classcond_dir), ["cat"])


def test_settings_mismatch_is_refused(classcond_dir, image_folder, tmp_path):
    bb = create_backbone(classcond_dir)
    classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=2), out=tmp_path / "r")
    with pytest.raises(DiffdiscError, match="score.seed"):
        classify(bb, image_folder, ClassifyConfig(adaptive=FAST, score=ScoreConfig(seed=1)), out=tmp_path / "r")


def test_resume_skips_done_and_recovers_torn_line(classcond_dir, image_folder, tmp_path):
    bb = create_backbone(classcond_dir)
    full = classify(bb, image_folder, ClassifyConfig(adaptive=FAST), out=tmp_path / "full")
    classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=4), out=tmp_path / "part")
    shard = tmp_path / "part" / "shards" / "part-00000.jsonl"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 40])  # a kill in the middle of the 4th line
    store = RunStore(tmp_path / "part", None, json.loads((tmp_path / "part" / "run.json").read_text()))
    assert len(store.done()) == 3
    store.close()  # it holds the rank-0 lock, as a second process would
    res = classify(bb, image_folder, ClassifyConfig(adaptive=FAST), out=tmp_path / "part")
    assert res.image_ids == full.image_ids and res.predictions.tolist() == full.predictions.tolist()
    np.testing.assert_allclose(res.scores, full.scores, rtol=1e-5)


def test_sigkill_and_restart_gives_identical_metrics(classcond_dir, tmp_path):
    data = make_noise_folder(tmp_path / "many", per_class=8, seed=1)  # 24 images, 12 chunks
    args = ["classify", "--model", classcond_dir, "--data", data, "--timesteps", "20", "--chunk", "2", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffdisc.cli", *map(str, args), "--out", tmp_path / "k"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    shard = tmp_path / "k" / "shards" / "part-00000.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not shard.exists() or shard.read_bytes().count(b"\n") < 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = shard.read_bytes().count(b"\n")
    assert 4 <= n_before < 24, "the run must be killed mid-way"
    run_cli(*args, "--out", tmp_path / "k")
    run_cli(*args, "--out", tmp_path / "ref")
    a, b = ClassificationResult.load(tmp_path / "k"), ClassificationResult.load(tmp_path / "ref")
    assert len(a) == 24 and len(set(a.image_ids)) == 24 and a.image_ids == b.image_ids
    assert a.predictions.tolist() == b.predictions.tolist()
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("k", "ref"))
    assert ma["accuracy"] == mb["accuracy"] and ma["unet_calls_per_image"] == mb["unet_calls_per_image"]


def test_cli_errors_are_one_line(monkeypatch, capsys, tmp_path, image_folder, classcond_dir):
    # in this process, through the console entry point (test_cli_errors.py covers the real subprocess exit path)
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", tmp_path / "nope", "--data", image_folder)
    assert code == 1 and err.strip().count("\n") == 0 and "unknown model" in err
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", tmp_path / "nodata")
    assert code == 1 and "does not exist" in err
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", image_folder, "--strategy",
                            "halving", "--stages", "2000:1", "--out", tmp_path / "bad")  # fmt: skip
    assert code == 1 and "1..1000" in err and "Traceback" not in err


def test_cli_classify_json_and_calibrate(monkeypatch, capsys, classcond_dir, image_folder, tmp_path):
    out = tmp_path / "c"
    code, stdout, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", image_folder,
                                 "--strategy", "ttest", "--min-scores", "3", "--max-scores", "6", "--out", out, "--json")  # fmt: skip
    assert code == 0, err
    m = json.loads(stdout)
    assert m["n_images"] == 9 and m["unet_calls_per_image"] <= 18
    code, stdout, err = run_main(monkeypatch, capsys, "calibrate", out, "--apply-to", out, "--json")
    assert code == 0, err
    cal = json.loads(stdout)
    calls = {json.loads(x)["calls"] for x in (out / "predictions.jsonl").read_text().splitlines()}
    assert cal["temperature"] > 0 and (cal["platt_log_calls"] is None) == (len(calls) == 1)  # Platt needs varied calls
    assert json.loads((out / "metrics.json").read_text())["temperature"] == pytest.approx(cal["temperature"])


def test_fit_temperature_recovers_known_temperature():
    from diffdisc.scoring.calibrate import fit_temperature

    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.01, (4000, 5))
    p = np.exp(-scores / 0.004)
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(scores, labels) == pytest.approx(0.004, rel=0.15)


def test_python_api_from_package_root(classcond_dir, image_folder, tmp_path):
    import diffdisc

    bb = diffdisc.create_backbone(str(classcond_dir))
    res = diffdisc.classify(bb, image_folder, score=diffdisc.ScoreConfig(batch_size=8), adaptive=diffdisc.AdaptiveConfig(n_timesteps=2), out=tmp_path / "api")
    assert Path(tmp_path / "api" / "metrics.json").is_file() and len(res) == 9
