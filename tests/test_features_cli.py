"""`diffdisc features *`: --max-train subsets, and --json / --quiet honoured the same way by every command."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import run_main
from diffdisc.data.labelled import LabelledImages


@pytest.fixture
def run(monkeypatch, capsys, classcond_dir, tmp_path):
    """`diffdisc features CMD --model <tiny> ARGS` in this process: (exit code, stdout, stderr)."""

    def go(cmd, *args):
        return run_main(monkeypatch, capsys, "features", cmd, "--model", classcond_dir, *args)

    return go


def test_max_train_is_a_seeded_stratified_subset(image_folder):
    a = LabelledImages.from_folder(image_folder, max_images=6, seed=0)
    assert len(a) == 6 and Counter(a.labels.tolist()) == {0: 2, 1: 2, 2: 2} and "6 of 9" in a.source
    assert LabelledImages.from_folder(image_folder, max_images=6, seed=0).keys == a.keys
    assert any(LabelledImages.from_folder(image_folder, max_images=6, seed=s).keys != a.keys for s in (1, 2, 3))
    assert len(LabelledImages.from_folder(image_folder, max_images=100)) == 9


def test_sweep_max_train_json_and_quiet(run, image_folder, tmp_path):
    args = ("--data", image_folder, "--out", tmp_path / "o", "--blocks", "mid", "--timesteps", "10,", "--val-fraction", "0.3",
            "--cache", tmp_path / "c", "--max-train", "6")  # fmt: skip
    code, out, err = run("sweep", *args, "--json")
    r = json.loads(out)  # stdout is the JSON and nothing else
    assert code == 0 and r["n_train"] + r["n_val"] == 6 and err == ""
    details = json.loads((tmp_path / "o" / "features_sweep_details.json").read_text())
    assert "6 of 9, stratified, seed 0" in details["train_data"]
    code, out, err = run("sweep", *args, "--quiet")
    assert code == 0 and out.count("\n") == 1 and out.startswith("best mid @ t=10: val ") and err == ""
    code, out, _ = run("sweep", *args)
    assert code == 0 and "┏" in out and "wrote" in out  # the table, without --quiet
    code, _, err = run("sweep", *args[:-1], "0")
    assert code == 2 and "--max-train" in err


def test_probe_prints_json_only_with_json(run, image_folder, tmp_path):
    args = ("--data", image_folder, "--test-data", image_folder, "--cells", "mid@10", "--val-fraction", "0.3",
            "--cache", tmp_path / "c", "--max-train", "6")  # fmt: skip
    code, out, err = run("probe", *args, "--json")
    r = json.loads(out)
    assert code == 0 and r["n_train"] + r["n_val"] == 6 and r["n_test"] == 9 and err == ""
    code, out, err = run("probe", *args, "--quiet", "--save", tmp_path / "head")
    assert code == 0 and out.count("\n") == 1 and out.startswith("mid@10 (gap, linear): val ") and "test" in out and err == ""
    assert (tmp_path / "head" / "head.json").is_file()
    code, out, _ = run("probe", *args)
    assert code == 0 and not out.lstrip().startswith("{") and "6 of" not in out and "train /" in out


def test_blocks_and_extract_json(run, image_folder, tmp_path):
    code, out, err = run("blocks", "--json")
    blocks = json.loads(out)
    assert code == 0 and "mid" in [b["name"] for b in blocks] and all(len(b["shape"]) == 3 for b in blocks) and err == ""
    code, out, err = run("extract", "--data", image_folder, "--blocks", "mid", "--timesteps", "10,", "--cache", tmp_path / "c",
                         "--json")  # fmt: skip
    r = json.loads(out)
    assert code == 0 and r["images"] == 9 and r["unet_forwards"] == 9 and err == ""
    code, out, err = run("extract", "--data", image_folder, "--blocks", "mid", "--timesteps", "10,", "--cache", tmp_path / "c",
                         "--quiet")  # fmt: skip
    assert code == 0 and out.count("\n") == 1 and "0 U-Net forwards" in out and err == ""
