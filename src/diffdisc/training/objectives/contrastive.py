"""The `clip` objective: an open_clip model trained contrastively on the same captioned scenes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DiffdiscError
from .base import load_init
from .captions import Captioned


class ContrastiveObjective(Captioned):
    """open_clip CLIP (ViT on 32x32 + text transformer) trained with the symmetric InfoNCE loss on the same
    scenes; saved as an open_clip `local-dir:` model (open_clip_config.json + open_clip_model.safetensors +
    tokenizer files), which `open_clip.create_model_and_transforms('local-dir:DIR')` loads."""

    def model_cfg(self) -> dict:
        cfg, tok = self.cfg, self.tokenizer
        return {
            "embed_dim": cfg.model.embed_dim,
            "vision_cfg": {"image_size": cfg.image_size, "patch_size": cfg.model.patch_size, "width": cfg.model.vision_width,
                           "layers": cfg.model.vision_layers, "head_width": 32 if cfg.model.vision_width >= 64 else 8},
            "text_cfg": {"context_length": cfg.model.max_length, "vocab_size": len(tok), "width": cfg.model.text_width,
                         "heads": cfg.model.text_heads, "layers": cfg.model.text_layers, "pad_id": tok.pad_token_id,
                         "eos_id": tok.eos_token_id, "pool_type": "eos", "hf_tokenizer_name": "local",
                         "tokenizer_kwargs": {"clean": "lower"}},
        }  # fmt: skip

    def build(self) -> nn.Module:
        from open_clip.model import CLIP

        c = self.model_cfg()
        text_cfg = {k: v for k, v in c["text_cfg"].items() if k != "tokenizer_kwargs"}
        return CLIP(c["embed_dim"], c["vision_cfg"], text_cfg, output_dict=True)

    def init_weights(self, model, src: Path) -> None:
        from safetensors.torch import load_file

        weights = src / "open_clip_model.safetensors"
        if not weights.is_file():
            raise DiffdiscError(f"init_from {src} has no {weights.name} (a contrastive model)")
        load_init(model, load_file(str(weights)), src)

    def loss(self, model, g: torch.Generator, dev) -> torch.Tensor:
        idx, ids = self._batch(g, unique=True)
        x = (self.images[idx].float() / 127.5 - 1).to(dev)
        ids = ids.to(dev)
        out = model(x, ids)
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        logits = scale * img.float() @ txt.float().T
        # Identical captions in a batch ("a red sneaker" twice) are not negatives: spread the target over them.
        same = (ids[:, None] == ids[None]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def save(self, model, dest: Path) -> dict:
        from safetensors.torch import save_file

        dest.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest / "open_clip_model.safetensors"))
        pre = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
        (dest / "open_clip_config.json").write_text(json.dumps({"model_cfg": self.model_cfg(), "preprocess_cfg": pre}, indent=2))
        self._save_tokenizer(dest)
        return {"class_names": self.names, "templates": ["{a} {}"]}

