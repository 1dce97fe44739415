"""Model identity is the weights' content: a model retrained in place (same sizes) is another model, an
identical copy elsewhere is the same one; runs and LoRA adapters refuse the other model."""

import shutil

import pytest

from conftest import make_classcond_dir, make_sd_dir
from diffdisc.backbones.base import fingerprint
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig


def _scale_weights_in_place(weights, factor):
    """Same names, dtypes and shapes: a file of exactly the same size, configs untouched."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v * factor for k, v in load_file(weights).items()}, str(weights), metadata=meta)


def test_fingerprint_sees_scaled_weights_of_the_same_size(tmp_path):
    root = make_classcond_dir(tmp_path / "m")
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    size, before = weights.stat().st_size, fingerprint(root)
    _scale_weights_in_place(weights, 1.5)
    assert weights.stat().st_size == size  # what the old size-based fingerprint hashed
    assert fingerprint(root) != before


def test_fingerprint_same_for_identical_copy_in_another_dir(tmp_path):
    root = make_classcond_dir(tmp_path / "m")
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "copy")
    assert fingerprint(copy) == fingerprint(root)
    assert create_backbone(copy).info.fingerprint == create_backbone(root).info.fingerprint


def test_classify_run_refuses_model_retrained_in_place(tmp_path, image_folder):
    from diffdisc.tasks.classify import ClassifyConfig, classify

    root = make_classcond_dir(tmp_path / "model", seed=0)
    one_t = AdaptiveConfig(n_timesteps=1)
    classify(create_backbone(root), image_folder, ClassifyConfig(adaptive=one_t, limit=1), out=tmp_path / "run")
    make_classcond_dir(root, seed=1)  # `diffdisc train` re-exporting to the same directory: same sizes
    with pytest.raises(DiffdiscError, match="other settings"):
        classify(create_backbone(root), image_folder, ClassifyConfig(adaptive=one_t, limit=2), out=tmp_path / "run")


def test_lora_adapter_refused_on_base_model_retrained_in_place(tmp_path):
    from diffdisc.tasks.attention import add_lora, load_lora, save_lora

    root = make_sd_dir(tmp_path / "sd", with_vae=False, seed=0)
    bb = create_backbone(root)
    add_lora(bb)
    adapter = save_lora(bb, tmp_path / "lora")
    load_lora(create_backbone(root), adapter)  # the model it was made for
    make_sd_dir(root, with_vae=False, seed=1)
    with pytest.raises(DiffdiscError, match="trained for model"):
        load_lora(create_backbone(root), adapter)
