"""The `text` objective: a text-conditional pixel U-Net and its text encoder, trained jointly."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DiffdiscError
from .base import DiffusionObjective, load_init, make_scheduler
from .captions import Captioned


class TextToImage(nn.Module):
    """U-Net + text encoder as one module, so accelerate, the optimiser and EMA see one state dict."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, x_t, t, ids):
        return self.unet(x_t, t, encoder_hidden_states=self.text_encoder(ids)[0]).sample


class TextObjective(Captioned, DiffusionObjective):
    """UNet2DConditionModel (cross-attention) + small CLIPTextModel, trained jointly from scratch; saved in the
    Stable Diffusion layout without a VAE (pixel space: 32x32 needs no autoencoder), so it loads through the
    same `SDBackbone` as real SD checkpoints."""

    def build(self) -> nn.Module:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg, tok = self.cfg, self.tokenizer
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=cfg.model.text_width, intermediate_size=4 * cfg.model.text_width,
            num_hidden_layers=cfg.model.text_layers, num_attention_heads=cfg.model.text_heads,
            max_position_embeddings=cfg.model.max_length, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ))  # fmt: skip
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.model.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.model.attention_levels))
        unet = UNet2DConditionModel(
            sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
            block_out_channels=cfg.model.block_out_channels, layers_per_block=cfg.model.layers_per_block,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=cfg.model.text_width, attention_head_dim=8,
            norm_num_groups=min(32, cfg.model.block_out_channels[0]),
        )  # fmt: skip
        return TextToImage(unet, text)

    def init_weights(self, model, src: Path) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        if not ((src / "unet").is_dir() and (src / "text_encoder").is_dir()):
            raise DiffdiscError(f"init_from {src} needs unet/ and text_encoder/ (a text-conditional model)")
        base = TextToImage(UNet2DConditionModel.from_pretrained(src / "unet"),
                           CLIPTextModel.from_pretrained(src / "text_encoder"))  # fmt: skip
        load_init(model, base.state_dict(), src)

    def loss(self, model, g: torch.Generator, dev) -> torch.Tensor:
        idx, ids = self._batch(g)
        x0 = self.images[idx].float() / 127.5 - 1
        x_t, t, target = self._noised(x0, g)
        pred = model(x_t.to(dev), t.to(dev), ids.to(dev))
        return F.mse_loss(pred.float(), target.to(dev))

    def save(self, model, dest: Path) -> dict:
        model.unet.save_pretrained(dest / "unet", safe_serialization=True)
        model.text_encoder.save_pretrained(dest / "text_encoder", safe_serialization=True)
        self._save_tokenizer(dest / "tokenizer")
        make_scheduler(self.cfg).save_pretrained(dest / "scheduler")
        # Class names let `classify` run without --classes; "{a} {}" matches the class-only training captions.
        return {"class_names": self.names, "templates": ["{a} {}"]}

