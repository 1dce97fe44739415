"""Training recipe: an interrupted run resumes to the same weights; config changes are refused."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.world.recipes import get_recipe
from diffdisc.world.train import train


def test_resume_gives_same_weights_as_uninterrupted(tmp_path):
    cfg = get_recipe("tiny")  # 20 steps, checkpoint every 5
    train(cfg, tmp_path / "straight", log=lambda m: None)
    train(replace(cfg, steps=10), tmp_path / "resumed", log=lambda m: None)  # "killed" after 10 steps
    logs = []
    model_dir = train(cfg, tmp_path / "resumed", log=logs.append)
    assert any("resumed from step-000010" in m for m in logs)
    a = load_file(tmp_path / "straight" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    bb = create_backbone(model_dir)
    assert bb.info.metadata["steps"] == 20 and bb.info.image_channels == 1 and len(bb.info.class_names) == 10
    x0 = bb.encode(torch.zeros(1, 1, 16, 16))
    assert torch.isfinite(bb.predict_eps(x0, torch.tensor([100]), bb.conditions(["sneaker"]))).all()


def test_changed_config_is_refused(tmp_path):
    cfg = replace(get_recipe("tiny"), steps=5)
    train(cfg, tmp_path / "r", log=lambda m: None)
    with pytest.raises(DiffdiscError, match="lr"):
        train(replace(cfg, lr=0.5), tmp_path / "r", log=lambda m: None)


def test_unknown_recipe():
    with pytest.raises(DiffdiscError, match="unknown recipe"):
        get_recipe("nope")
