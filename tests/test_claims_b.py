"""`diffdisc claims` stages `attention_lora` (Discffusion) and `features` (Mukhopadhyay et al.) at the tiny size on
the shipped models: row fields, the paired value against the two sides' own scores, resume without model work,
the LoRA kept off the shared backbone, and validation groups that share no item with the tuning groups."""

import json
import types

import numpy as np
import pytest

from diffdisc.errors import DiffdiscError
from diffdisc.tasks.attention import tuning_groups
from diffdisc.tasks.claims import attention_lora as A
from diffdisc.tasks.claims import features as F
from diffdisc.tasks.claims.base import Claim, ClaimContext, verdict


@pytest.fixture(scope="module")
def loaded():
    return {}  # one load of each shipped model for every context of this file


def _ctx(out, loaded) -> ClaimContext:
    return ClaimContext(out, _loaded=loaded)


def _check_row(row: Claim, cid: str, n: int):
    assert row.id == cid and row.claim and row.source and row.paper and "points" in row.metric
    assert row.n == n and row.verdict == verdict(row.ci) and row.ci[0] <= row.value <= row.ci[1]
    json.dumps(row.to_dict())  # the runner stores it as JSON


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory, loaded):
    out = tmp_path_factory.mktemp("attention_lora")
    (row,) = A.run(_ctx(out, loaded), A.SIZES["tiny"])
    return out, row


@pytest.fixture(scope="module")
def features_run(tmp_path_factory, loaded):
    out = tmp_path_factory.mktemp("features")
    (row,) = F.run(_ctx(out, loaded), F.SIZES["tiny"])
    return out, row


def test_attention_lora_row(attention_run, loaded):
    out, row = attention_run
    knobs = A.SIZES["tiny"]
    _check_row(row, "attention_lora", 2 * knobs["test_per_probe"])
    d = row.details
    assert row.value == pytest.approx(d["attention_lora"]["score"] - d["denoise"]["score"], abs=1e-3)
    grid = d["validation"]["grid"]
    assert [(c["lr"], c["epochs"]) for c in grid] == [(lr, e) for lr in knobs["lrs"] for e in knobs["epochs_grid"]]
    assert (d["chosen"]["lr"], d["chosen"]["epochs"]) in [(c["lr"], c["epochs"]) for c in grid]
    assert d["controls"]["shared_items_tuning_val"] == 0 and d["controls"]["val_groups"] == 2 * knobs["val_per_probe"]
    assert all((out / c["adapter"] / "adapter_model.safetensors").is_file() for c in grid)
    text = _ctx(out, loaded).load("text")  # the shared backbone never got an adapter
    assert "+lora" not in text.info.fingerprint and not getattr(text.unet, "peft_config", None)


def test_attention_lora_resumes_without_model_work(attention_run, loaded, monkeypatch):
    out, row = attention_run
    adapters = {p: p.stat().st_mtime_ns for p in (out / "lora").rglob("*.safetensors")}

    def refuse(*a, **k):
        raise AssertionError("model work on a finished run")

    monkeypatch.setattr(A, "tune", refuse)
    monkeypatch.setattr("diffdisc.tasks.match.score_chunk", refuse)
    (again,) = A.run(_ctx(out, loaded), A.SIZES["tiny"])
    assert again.to_dict() == row.to_dict()
    assert {p: p.stat().st_mtime_ns for p in (out / "lora").rglob("*.safetensors")} == adapters


def test_validation_groups_avoid_tuning_items():
    tuning = tuning_groups(list(A.PROBES), 16)
    val = A.validation_groups(A.PROBES, 8, tuning)
    assert len(val) == 16 and not A.items_of(val) & A.items_of(tuning)
    assert {s for s, _ in A.items_of(val)} == {"train"}
    everything = [types.SimpleNamespace(items=[("train", i) for i in range(60000)])]
    with pytest.raises(DiffdiscError, match="share no item"):
        A.validation_groups(A.PROBES, 1, everything)


def test_features_row(features_run):
    out, row = features_run
    knobs = F.SIZES["tiny"]
    _check_row(row, "features", knobs["n_test"])
    d = row.details
    assert row.value == pytest.approx(d["diffusion"]["score"] - d["contrastive"]["score"], abs=1e-3)
    preds = json.loads((out / "predictions.json").read_text())
    y = np.array(preds["labels"])
    for side in ("diffusion", "contrastive", "pixels"):
        assert 100 * np.mean(np.array(preds[side]) == y) == pytest.approx(d[side]["score"], abs=1e-3)
    c = d["chosen"]
    assert c["block"] in knobs["blocks"] and c["t"] in knobs["timesteps"] and c["pooling"] in knobs["poolings"]
    assert d["facts"] == {"chosen_block_middle": c["block"] in F.MIDDLE, "chosen_t_above_smallest": c["t"] > min(knobs["timesteps"])}
    grid = d["val_acc_grid"][c["pooling"]]
    assert c["val_acc"] == pytest.approx(np.max(grid["val_acc"])) and len(grid["val_acc"]) == len(knobs["blocks"])
    assert d["settings"]["train_data"] == "fmnist-train-shipped" and len(set(preds["keys"])) == knobs["n_test"]


def test_features_resume_without_model_work(features_run, loaded, monkeypatch):
    out, row = features_run
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "predictions.json"}

    def refuse(*a, **k):
        raise AssertionError("model work on a finished run")

    monkeypatch.setattr("diffdisc.features.cache.extract", refuse)  # every U-Net forward of a cache miss
    monkeypatch.setattr(F, "sweep", refuse)  # the stored sweep (grid and head) is reused
    (again,) = F.run(_ctx(out, loaded), F.SIZES["tiny"])
    assert again.to_dict() == row.to_dict()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "predictions.json"} == files


def test_fmnist_images_stratified_and_keyed():
    im = F.fmnist_images("test", 30, seed=1)
    assert len(im) == 30 and np.bincount(im.labels).tolist() == [3] * 10 and im.keys[0].startswith("test")
    with pytest.raises(DiffdiscError, match="one per class"):
        F.fmnist_images("train", 5)
