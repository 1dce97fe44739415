"""Backbones load through from_pretrained, refuse unsafe/incomplete dirs, and always score in ε-space."""

import json

import pytest
import torch

from conftest import make_classcond_dir, make_sd_dir
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError


def test_sd_backbone_loads_and_predicts(sd_dir):
    bb = create_backbone(sd_dir)
    assert bb.info.conditioning == "text" and bb.info.latent and bb.info.image_size == 16
    x0 = bb.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert x0.shape == (2, 4, 8, 8)
    cond = bb.conditions(["a red cat", "a green dog"])
    eps = bb.predict_eps(x0, torch.tensor([10, 500]), cond)
    assert eps.shape == x0.shape and torch.isfinite(eps).all()


def test_sd_pixel_layout_without_vae(tmp_path):
    bb = create_backbone(make_sd_dir(tmp_path / "m", with_vae=False))
    assert not bb.info.latent and bb.info.image_size == 8 and bb.clip_range == (-1.0, 1.0)


def test_classcond_names_and_ids(classcond_dir):
    bb = create_backbone(classcond_dir)
    assert bb.info.class_names == ("red", "green", "blue") and bb.null_class == 3
    assert bb.conditions(["green", 2]).tolist() == [1, 2]
    with pytest.raises(DiffdiscError, match="unknown class"):
        bb.conditions(["purple"])


def test_dit_layout(tmp_path):
    from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

    root = tmp_path / "dit"
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                          sample_size=8, patch_size=2, num_embeds_ada_norm=5, norm_num_groups=2).save_pretrained(root / "transformer")  # fmt: skip
    AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(root / "vae")  # fmt: skip
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"id2label": {str(i): f"c{i}" for i in range(5)}}))
    bb = create_backbone(root)
    assert bb.is_dit and bb.null_class == 5 and bb.info.class_names[0] == "c0"
    x0 = bb.encode(torch.zeros(1, 3, 16, 16))
    eps = bb.predict_eps(x0, torch.tensor([3]), bb.conditions([1]))
    assert eps.shape == x0.shape  # learned-sigma channels dropped


@pytest.mark.parametrize("ptype", ["v_prediction", "sample"])
def test_prediction_types_convert_to_eps(tmp_path, ptype):
    bb = create_backbone(make_classcond_dir(tmp_path / ptype, prediction_type=ptype))
    x0, eps, t = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), torch.tensor([5, 400, 990])
    x_t = bb.add_noise(x0, eps, t)
    a = bb.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    target = a.sqrt() * eps - (1 - a).sqrt() * x0 if ptype == "v_prediction" else x0
    bb.model_output = lambda *_: target  # a perfect model of that parameterisation
    torch.testing.assert_close(bb.predict_eps(x_t, t, bb.conditions([0, 1, 2])), eps, atol=2e-3, rtol=1e-3)


def test_bad_model_dirs(tmp_path, classcond_dir):
    with pytest.raises(DiffdiscError, match="unknown model"):
        create_backbone(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffdiscError, match="not a recognised"):
        create_backbone(tmp_path / "empty")
    # pickle-only weights are refused, never unpickled
    pk = tmp_path / "pickle" / "unet"
    pk.mkdir(parents=True)
    (pk / "config.json").write_text((classcond_dir / "unet" / "config.json").read_text())
    (pk / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(DiffdiscError, match="pickle"):
        create_backbone(tmp_path / "pickle")
    # incomplete: no scheduler
    inc = tmp_path / "inc"
    (inc / "unet").mkdir(parents=True)
    for f in (classcond_dir / "unet").iterdir():
        (inc / "unet" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DiffdiscError, match="scheduler"):
        create_backbone(inc)


def test_long_prompt_warns_and_empty_prompt_fails(sd_dir):
    bb = create_backbone(sd_dir)
    with pytest.warns(UserWarning, match="truncated"):
        bb.conditions(["a red cat " * 10])
    with pytest.raises(DiffdiscError, match="empty"):
        bb.conditions([" "])
