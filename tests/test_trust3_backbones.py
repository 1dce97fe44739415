"""Issue 24, backbones: the null prompt encoded once, one VAE encode honouring shift_factor, LoRAs for another
model refused in one line (shapes, partial matches, garbage files), flags named in option errors, and the
diffusers private calls behind `backbones.compat` with a version check."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.tasks.attention import load_lora
from test_lora_user import save_unet_lora


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory, sd_dir):
    return save_unet_lora(create_backbone(sd_dir).unet, tmp_path_factory.mktemp("lora"))


# ---------------------------------------------------------------------- bug 3: the null prompt, once
def test_attention_scorer_encodes_the_null_prompt_once(sd_dir):
    from diffdisc.scoring.attention import AttentionScorer
    from diffdisc.scoring.config import ScoreConfig

    bb = create_backbone(sd_dir)
    scorer = AttentionScorer(bb, ScoreConfig(scorer="attention", attention_bias=True))
    cond = bb.conditions(["a red cat", "a blue dog"])
    calls = []
    bb.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(0)
    for _ in range(4):  # four batches
        x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        assert torch.isfinite(scorer(x0, noise, torch.tensor([100, 500]), cond)).all()
    assert len(calls) == 1


def test_null_condition_is_cached_until_a_lora_changes_the_model(sd_dir, sd_lora):
    bb = create_backbone(sd_dir)
    calls = []
    bb.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    first = bb.null_condition()
    torch.testing.assert_close(bb.null_condition(), first)
    assert len(calls) == 1
    load_lora(bb, sd_lora)  # clears the conditions: a LoRA may change the text encoder
    bb.null_condition()
    assert len(calls) == 2


def test_pipeline_backbone_moves_its_text_encoders_once_for_the_null_prompt(tmp_path, monkeypatch):
    """SD3 / FLUX: every null encoding moved T5 to the accelerator and back."""
    from family_fixtures import make_sd3_dir

    bb = create_backbone(make_sd3_dir(tmp_path / "sd3"), image_size=16)
    moves, encodes = [], []
    real_moves, real_rows = bb.encoders_on_device, bb.encode_rows
    monkeypatch.setattr(bb, "encoders_on_device", lambda: moves.append(1) or real_moves())
    monkeypatch.setattr(bb, "encode_rows", lambda *a, **k: encodes.append(a) or real_rows(*a, **k))
    nulls = [bb.null_condition() for _ in range(3)]
    assert len(moves) == 1 and encodes == [([""],)]
    assert all(torch.equal(n, nulls[0]) for n in nulls)


# ---------------------------------------------------------------------- bug 6: one VAE encode, shift honoured
def make_dit_dir(root, shift_factor=0.0609, scaling_factor=1.5035):
    """A DiT with an SD3 / FLUX-style VAE (shift_factor set)."""
    from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                          sample_size=8, patch_size=2, num_embeds_ada_norm=5, norm_num_groups=2).save_pretrained(root / "transformer")  # fmt: skip
    AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, shift_factor=shift_factor,
                  scaling_factor=scaling_factor, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(root / "vae")  # fmt: skip
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"id2label": {str(i): f"c{i}" for i in range(5)}}))
    return root


def test_dit_with_a_shifted_vae_encodes_as_the_pipelines_and_decodes_back(tmp_path):
    bb = create_backbone(make_dit_dir(tmp_path / "dit"))
    assert bb.info.family == "classcond" and bb.is_dit
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = bb.vae.config
    with torch.inference_mode():
        mean = bb.vae.encode(img).latent_dist.mean
        direct = bb.vae.decode(mean).sample.clamp(-1, 1)
    torch.testing.assert_close(bb.encode(img), (mean - 0.0609) * cfg.scaling_factor)
    torch.testing.assert_close(bb.decode(bb.encode(img)), direct, atol=1e-5, rtol=1e-5)  # encode → decode consistent


def test_every_latent_family_uses_the_one_vae_encode():
    from diffdisc.backbones import base, classcond, pipeline, sd

    for cls in (sd.SDBackbone, classcond.ClassCondBackbone, pipeline.PipelineBackbone):
        assert cls._encode is base.Backbone._encode, cls.__name__


def test_vae_without_shift_factor_means_zero():
    from types import SimpleNamespace

    from diffdisc.backbones.base import vae_encode

    class FakeVAE:
        dtype = torch.float32
        config = SimpleNamespace(scaling_factor=2.0, shift_factor=None)

        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x + 1))

    torch.testing.assert_close(vae_encode(FakeVAE(), torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))


# ---------------------------------------------------------------------- bugs 7-9: LoRAs that do not fit
def _wide_lora(tmp_path):
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=48, attention_head_dim=8, norm_num_groups=8)  # fmt: skip
    return save_unet_lora(wide, tmp_path / "wide")


def _one_line_refusal(capfd, caplog, bb, lora, match):
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), pytest.raises(DiffdiscError, match=match) as err:
        load_lora(bb, lora)
    out = capfd.readouterr()
    assert "\n" not in str(err.value), str(err.value)
    assert out.out == "" and out.err == "", (out.out + out.err)[:500]  # no diffusers / peft output
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("diffusers", "peft", "transformers")]
    return str(err.value)


def test_lora_for_another_base_model_says_which_layers_and_shapes_disagree(tmp_path, sd_dir, capfd, caplog):
    bb = create_backbone(sd_dir)
    msg = _one_line_refusal(capfd, caplog, bb, _wide_lora(tmp_path), r"32 layers of the UNet2DConditionModel disagree in shape")
    assert "Error(s) in loading" not in msg
    assert re.search(r"\.to_[qkv]\.lora_A\.weight is \[2, (\d+)\] in the LoRA, \[2, (?!\1\])\d+\] in the model", msg), msg
    assert not any("lora_A" in n for n, _ in bb.named_modules())  # nothing left half-applied


def test_lora_whose_keys_match_only_part_of_the_model_is_refused(tmp_path, sd_dir, sd_lora, capfd, caplog):
    from safetensors.torch import load_file, save_file

    state = load_file(str(sd_lora / "pytorch_lora_weights.safetensors"))
    moved = {k.replace("up_blocks.1.", "up_blocks.7."): v for k, v in state.items()}  # half the layers: absent
    (tmp_path / "half").mkdir()
    save_file(moved, str(tmp_path / "half" / "pytorch_lora_weights.safetensors"))
    bb = create_backbone(sd_dir)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300])
    before = bb.predict_eps(x, t, bb.conditions(["a red cat"]))
    msg = _one_line_refusal(capfd, caplog, bb, tmp_path / "half", r"16 of its 32 layers")
    assert "up_blocks.7." in msg, msg
    assert not any("lora_A" in n for n, _ in bb.named_modules())  # never scored half-applied
    torch.testing.assert_close(bb.predict_eps(x, t, bb.conditions(["a red cat"])), before)
    assert not bb.info.name.endswith("+lora")


@pytest.mark.parametrize("content", [b"garbage garbage garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}", b""])
def test_garbage_lora_file_is_one_line(tmp_path, sd_dir, content, capfd, caplog):
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(content)
    msg = _one_line_refusal(capfd, caplog, create_backbone(sd_dir), p, "not a readable safetensors")
    assert str(p) in msg


def test_valid_lora_still_loads_quietly(sd_dir, sd_lora, capfd, recwarn):
    bb = create_backbone(sd_dir)
    capfd.readouterr()
    recwarn.clear()
    load_lora(bb, sd_lora)
    out = capfd.readouterr()
    assert bb.info.name.endswith("+lora") and out.err == "", out.err[:500]
    assert not [str(w.message)[:80] for w in recwarn.list]  # no scheduler-config FutureWarnings either


# ---------------------------------------------------------------------- option errors name the flags
def test_option_errors_name_the_flags(tmp_path, sd_dir):
    with pytest.raises(DiffdiscError, match="--no-t5") as err:
        create_backbone(sd_dir, no_t5=True)
    assert "'no_t5'" not in str(err.value)
    with pytest.raises(DiffdiscError, match="--distilled-guidance"):
        create_backbone(sd_dir, guidance=3.5)
    with pytest.raises(DiffdiscError, match="--image-size"):
        create_backbone(sd_dir, image_size=64)


def test_flux_guidance_errors_name_the_flag():
    from types import SimpleNamespace

    from diffdisc.backbones.flux import resolve_guidance

    schnell = SimpleNamespace(transformer=SimpleNamespace(config={"guidance_embeds": False}))
    dev = SimpleNamespace(transformer=SimpleNamespace(config={"guidance_embeds": True}))
    for pipe, value in ((schnell, 3.5), (dev, "abc")):
        with pytest.raises(DiffdiscError, match="^--distilled-guidance") as err:
            resolve_guidance(pipe, value)
        assert "option guidance" not in str(err.value)


# ---------------------------------------------------------------------- diffusers private calls: one module
def test_every_private_diffusers_symbol_exists_in_the_installed_diffusers():
    import diffusers

    from diffdisc.backbones import compat

    missing = compat.missing()
    assert not missing, f"diffusers {diffusers.__version__} lacks {missing}: update backbones/compat.py or pin"


def test_a_vanished_private_symbol_fails_naming_the_diffusers_version(monkeypatch):
    import diffusers
    from diffusers import FluxPipeline

    from diffdisc.backbones import compat

    monkeypatch.delattr(FluxPipeline, "_pack_latents")
    assert compat.missing() == ["FluxPipeline._pack_latents"]
    with pytest.raises(DiffdiscError, match=rf"diffusers {diffusers.__version__}.*FluxPipeline\._pack_latents"):
        compat.check()
    with pytest.raises(DiffdiscError, match=rf"diffusers {diffusers.__version__}"):
        compat.pack_latents(FluxPipeline, torch.zeros(1, 4, 2, 2))


def test_no_private_diffusers_access_outside_compat():
    """Every private attribute and internal import of diffusers in src/ goes through `backbones/compat.py`."""
    import re
    from pathlib import Path

    import diffdisc
    from diffdisc.backbones import compat

    src = Path(diffdisc.__file__).parent
    offenders = []
    for p in src.rglob("*.py"):
        text = p.read_text() if p.name != "compat.py" else ""
        for module, path in compat.PRIVATE.values():
            owner, _, attr = path.rpartition(".")
            if attr.startswith("_") and re.search(rf"\.{attr}\b", text):
                offenders.append(f"{p.relative_to(src)}: .{attr}")
            if re.search(rf"from {re.escape(module)} import[^\n]*\b{owner or attr}\b", text):
                offenders.append(f"{p.relative_to(src)}: from {module} import {owner or attr}")
        offenders += [f"{p.relative_to(src)}: {m}" for m in re.findall(r"\._attention_backend|\._parallel_config", text)]
    assert not offenders, offenders


def test_diffusers_pin_covers_the_installed_version():
    import re
    from pathlib import Path

    import diffusers

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    m = re.search(r'"diffusers>=([\d.]+),<([\d.]+)"', pyproject)
    assert m, "diffusers is pinned below the next untested minor release"
    version = tuple(int(x) for x in diffusers.__version__.split(".")[:2])
    low, high = (tuple(int(x) for x in g.split(".")[:2]) for g in m.groups())
    assert low <= version < high
