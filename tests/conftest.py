"""Tiny random diffusers models, saved and loaded back through the same path users take."""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# caches that default to the user's (~/.cache/diffdisc: the features cache) stay inside the test session
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="diffdisc-test-cache-")

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["red", "green", "blue"]


def _sched(dir_, prediction_type="epsilon", beta_schedule="squaredcos_cap_v2"):
    from diffusers import DDPMScheduler

    DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type).save_pretrained(dir_ / "scheduler")


def make_sd_dir(root, prediction_type="epsilon", with_vae=True, seed=0):
    """SD layout: unet/ text_encoder/ tokenizer/ scheduler/ (+ vae/)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffdisc.training.tokenizer import build_word_tokenizer

    torch.manual_seed(seed)
    latent_ch = 4 if with_vae else 3
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=latent_ch, out_channels=latent_ch, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    tok = build_word_tokenizer(["a", "photo", "of", "red", "green", "blue", "cat", "dog", "the", "left", "right", "to"], 12)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=12, bos_token_id=2, eos_token_id=3, pad_token_id=0))  # fmt: skip
    unet.save_pretrained(root / "unet")
    text.save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    if with_vae:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)  # fmt: skip
        vae.save_pretrained(root / "vae")
    _sched(root, prediction_type, "scaled_linear")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def make_classcond_dir(root, n_classes=3, prediction_type="epsilon", seed=0, channels=3):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=16, in_channels=channels, out_channels=channels, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=n_classes + 1, norm_num_groups=8,
    )  # fmt: skip
    unet.save_pretrained(root / "unet")
    _sched(root, prediction_type)
    (root / "diffdisc.json").write_text(json.dumps({"class_names": CLASSES[:n_classes], "null_class": n_classes}))
    return root


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory):
    return make_sd_dir(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def classcond_dir(tmp_path_factory):
    return make_classcond_dir(tmp_path_factory.mktemp("cc"))


def make_squares(root, per_class=3, seed=0):
    """ImageFolder of coloured squares: red/green/blue, `per_class` 20x20 images each."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            a = (rng.random((20, 20, 3)) * 60).astype(np.uint8)
            a[..., ci] = 200
            Image.fromarray(a).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """ImageFolder of coloured squares: red/green/blue, 3 images each."""
    return make_squares(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """A user's ImageFolder: 2 classes x 3 grey 28x28 images (the tiny recipe trains at 16x16)."""
    root = tmp_path_factory.mktemp("mydata")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dots", "bars"]):
        (root / name).mkdir()
        for i in range(3):
            Image.fromarray((rng.random((28, 28)) * 100 + 100 * c).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tree_world():
    """The label-tree world (`label_trees.make_tree_world`): (backbone, x0, keys, conditions, labels)."""
    from label_trees import make_tree_world

    return make_tree_world()


def make_noise_folder(root, per_class=20, seed=0, size=16):
    """An ImageFolder of random RGB images, `per_class` per class: enough work for a run to be interrupted."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(root / c / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """On 2 shared cores, OpenMP threads spin-waiting for a busy core made training runs 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_main(monkeypatch, capsys, *args):
    """`diffdisc ARGS` in this process, through the console entry point: (exit code, stdout, stderr)."""
    import sys

    from diffdisc import cli

    monkeypatch.setattr(sys, "argv", ["diffdisc", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
