"""A fresh machine has no Debian Fashion-MNIST: the reader still works on a generated file, and everything the
test suite runs (the tiny claims fine-tune included) draws from the shipped subsets instead."""

import gzip
import struct

import numpy as np
import pytest

from diffdisc.datasets import fashion_mnist as fm
from diffdisc.errors import DiffdiscError
from diffdisc.training.config import TrainConfig
from diffdisc.training.objectives.base import fmnist_train


def _write_idx(path, arr):
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(head + arr.tobytes()))


def test_debian_layout_reads_a_generated_split(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    img_file, lab_file = fm.FILES["train"]
    _write_idx(tmp_path / img_file, images)
    _write_idx(tmp_path / lab_file, labels)
    got, got_labels = fm.load_fashion_mnist("train", root=tmp_path)
    np.testing.assert_array_equal(got, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels.tolist()
    _write_idx(tmp_path / lab_file, labels[:29])
    with pytest.raises(DiffdiscError, match="disagree"):
        fm.load_fashion_mnist("train", root=tmp_path)


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEFAULT_DIR", tmp_path / "empty")


def test_small_subsets_come_from_the_shipped_images(no_debian):
    images, labels, index, source = fm.fmnist_subset("train", 200, seed=1)
    assert source == "fmnist-train-shipped" and images.shape == (200, 28, 28)
    assert np.bincount(labels).tolist() == [20] * 10
    shipped, _, shipped_index = fm.load_shipped_subset("train")
    assert set(index.tolist()) <= set(shipped_index.tolist())
    with pytest.raises(DiffdiscError, match="apt-get install dataset-fashion-mnist"):
        fm.fmnist_subset("train", 2000)


def test_training_on_a_count_of_train_images_needs_no_system_dataset(no_debian):
    cfg = TrainConfig(recipe="fmnist-scenes-text", kind="text", scenes=8, fmnist_images=100)
    images, labels = fmnist_train(cfg)
    assert len(images) == 100 and np.bincount(labels).tolist() == [10] * 10
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert "fmnist_images" not in TrainConfig().to_dict()  # older runs' train_config.json stay identical
    with pytest.raises(DiffdiscError, match="Fashion-MNIST not found"):
        fmnist_train(TrainConfig(recipe="fmnist-scenes-text", kind="text", scenes=8))
