"""Users' diffusers-format LoRA fine-tunes load with --lora through the pipeline's own loader; a LoRA for
another base model is refused."""

import pytest
import torch

from conftest import make_sd_dir
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.tasks.attention import load_lora


def save_unet_lora(unet, out, seed=0):
    """A LoRA as diffusers' train_text_to_image_lora.py saves it: peft adapter on the U-Net's attention
    projections, written by the pipeline's `save_lora_weights`."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    for n, p in unet.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # peft zero-initialises B: give the LoRA an effect to measure
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory, sd_dir):
    bb = create_backbone(sd_dir)
    return save_unet_lora(bb.unet, tmp_path_factory.mktemp("lora"))


def test_user_lora_changes_the_predictions_and_the_identity(sd_dir, sd_lora):
    plain, tuned = create_backbone(sd_dir), create_backbone(sd_dir)
    load_lora(tuned, sd_lora)
    assert tuned.info.name.endswith("+lora") and tuned.info.fingerprint != plain.info.fingerprint
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, c = torch.tensor([100, 600]), plain.conditions(["a red cat", "a blue dog"])
    assert not torch.allclose(plain.predict_eps(x, t, c), tuned.predict_eps(x, t, c), atol=1e-4)
    # the file itself works too
    again = create_backbone(sd_dir)
    load_lora(again, sd_lora / "pytorch_lora_weights.safetensors")
    torch.testing.assert_close(again.predict_eps(x, t, c), tuned.predict_eps(x, t, c))


def test_lora_for_another_base_model_is_refused(tmp_path, sd_dir):
    other = create_backbone(make_sd_dir(tmp_path / "other", seed=1))
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=48, attention_head_dim=8, norm_num_groups=8)  # fmt: skip
    lora = save_unet_lora(wide, tmp_path / "wide")
    with pytest.raises(DiffdiscError, match="does not fit|matches no layer"):
        load_lora(other, lora)


def test_pickled_or_missing_lora_is_refused(tmp_path, sd_dir):
    bb = create_backbone(sd_dir)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pytorch_lora_weights.bin").write_bytes(b"x")
    with pytest.raises(DiffdiscError, match="safetensors only"):
        load_lora(bb, tmp_path / "p")
    with pytest.raises(DiffdiscError, match="does not exist"):
        load_lora(bb, tmp_path / "nope")
