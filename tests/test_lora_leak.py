"""Few-shot LoRA tuning never sees an item the probes evaluate on (issue 13 item 5)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest

from diffdisc.datasets.fashion_mnist import load_shipped_subset
from diffdisc.datasets.probes import PROBES, make_probe
from diffdisc.tasks.attention import tuning_groups


def _items(groups) -> set[tuple[str, int]]:
    return {item for g in groups for item in g.items}


@functools.cache
def _eval_items() -> frozenset[tuple[str, int]]:
    return frozenset(_items(g for name in PROBES for g in make_probe(name, 200, seed=0)))  # `diffdisc probe` defaults


@pytest.mark.parametrize("seed", [0, 1])
def test_lora_tuning_pool_disjoint_from_eval(seed):
    train, evaluated = _items(tuning_groups(["binding", "spatial"], 128, seed)), _eval_items()
    assert len(train) > 100 and len(evaluated) > 500
    assert {s for s, _ in train} == {"train"} and {s for s, _ in evaluated} == {"test"}  # by construction
    assert not train & evaluated
    assert {i for _, i in evaluated} <= set(load_shipped_subset("test")[2].tolist())
    assert {i for _, i in train} <= set(load_shipped_subset("train")[2].tolist())


def test_lora_tuning_pool_disjoint_for_every_probe():
    train = _items(g for name in PROBES for g in tuning_groups([name], 64))
    assert {s for s, _ in train} == {"train"} and not train & _eval_items()
    assert all("-train-s" in g.id for g in tuning_groups(list(PROBES), 10))  # ids never collide with evaluation's


def test_cli_attention_tune_draws_train_items_only(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import diffdisc.cli.attention
    import diffdisc.tasks.attention
    from diffdisc.cli import app

    seen = []

    def fake_tune(bb, groups, config=None, *, out, **kw):  # the data the command would tune on, without training
        seen.extend(groups)
        return Path(out)

    monkeypatch.setattr(diffdisc.cli.attention, "load", lambda model, device: None)
    monkeypatch.setattr(diffdisc.tasks.attention, "tune", fake_tune)
    res = CliRunner().invoke(app, ["attention", "tune", "--out", str(tmp_path / "a"), "--shots", "32", "--json"])
    assert res.exit_code == 0, res.output
    assert len(seen) == 32 and not _items(seen) & _eval_items() and {s for s, _ in _items(seen)} == {"train"}


def test_eval_probes_unchanged_by_disjoint_tuning_pool():
    """Evaluation groups are byte-for-byte those of before the fix (no probe version bump needed)."""
    want = {"binding": "965948a50b1b7adf", "spatial": "c0657de98500bff7", "object": "df3f490f88b20d01",
            "colour": "5abe83de7c603ec9", "cue-conflict": "9a0b5bb3ee248e85"}  # fmt: skip
    for name in PROBES:
        h = hashlib.sha256()
        for g in make_probe(name, 200, seed=0):
            h.update(g.id.encode())
            for im in g.images:
                h.update(np.ascontiguousarray(im).tobytes())
            for c in g.captions:
                h.update(c.encode())
        assert h.hexdigest()[:16] == want[name], name


def test_shipped_train_subset_matches_its_recipe():
    from diffdisc.datasets.fashion_mnist import load_fashion_mnist, stratified_indices
    from diffdisc.errors import DiffdiscError

    images, labels, indices = load_shipped_subset("train")
    assert images.shape == (1000, 28, 28) and np.bincount(labels).tolist() == [100] * 10
    try:
        full, full_labels = load_fashion_mnist("train")
    except DiffdiscError:
        pytest.skip("Debian dataset-fashion-mnist not installed")
    np.testing.assert_array_equal(indices, stratified_indices(full_labels, 100, seed=0))
    np.testing.assert_array_equal(images, full[indices])
    np.testing.assert_array_equal(labels, full_labels[indices])
