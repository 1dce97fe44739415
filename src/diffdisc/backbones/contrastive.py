"""Contrastive baseline: an open_clip model in its `local-dir:` layout, scored through the same task code.

A user comparing a diffusion discriminator with CLIP wants both in one table. This wrapper gives an open_clip
model the parts of the backbone interface that tasks use (`info` with family "clip", `encode` to image
embeddings, `conditions` to text embeddings); it declares MATCH and ENCODE_TEXT and no diffusion capability
(`capabilities.py`), so its scorer (the negated scaled cosine, no U-Net calls) is
`scoring.contrastive.ContrastiveScorer` and tasks that need a denoiser refuse it in one line; results, metrics,
calibration and reports need no special case.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import DiffdiscError
from .base import BackboneInfo, fingerprint, read_metadata
from .capabilities import Capability
from .families import register_family

CONFIG = "open_clip_config.json"


class ContrastiveModel(nn.Module):
    """An open_clip model with the backbone parts tasks use; `scoring.contrastive` scores it."""

    capabilities = frozenset({Capability.MATCH, Capability.ENCODE_TEXT})

    def __init__(self, model, tokenizer, preprocess_cfg: dict, name: str = "clip", root: Path | None = None):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        mean = torch.tensor(preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = torch.tensor(preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        size = model.visual.image_size
        meta = read_metadata(root) if root else {}
        self.info = BackboneInfo(
            name=name, family="clip", conditioning="text", prediction_type="none", num_train_timesteps=0,
            image_size=int(size[0] if isinstance(size, (tuple, list)) else size), image_channels=3, latent=False,
            fingerprint=fingerprint(root) if root else "in-memory",
            class_names=tuple(meta.get("class_names", ())), metadata=meta,
        )  # fmt: skip
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, root: str | Path, name: str | None = None) -> ContrastiveModel:
        import open_clip

        root = Path(root)
        if not (root / CONFIG).is_file():
            raise DiffdiscError(f"incomplete open_clip directory: missing {root / CONFIG}")
        if not list(root.glob("*.safetensors")):
            pickles = [p.name for p in root.glob("*") if p.suffix in (".bin", ".pth", ".pt")]
            why = f" (only pickle files {pickles}: not loaded, they can run code)" if pickles else ""
            raise DiffdiscError(f"{root} has no .safetensors weights{why}")
        cfg = json.loads((root / CONFIG).read_text())
        model = open_clip.create_model(f"local-dir:{root}", load_weights=True)
        tok = open_clip.get_tokenizer(f"local-dir:{root}")
        bb = cls(model, tok, cfg.get("preprocess_cfg", {}), name=name or root.name, root=root)
        return bb.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (already resized by the data loader) -> L2-normalised image embeddings."""
        x = ((images.to(self.device).float() + 1) / 2 - self.mean) / self.std
        return self.model.encode_image(x, normalize=True).float()

    @torch.inference_mode()
    def conditions(self, prompts: list) -> torch.Tensor:
        """L2-normalised text embeddings, cached per prompt."""
        new = [str(p) for p in dict.fromkeys(prompts) if str(p) not in self._cache]
        limit = getattr(self.tokenizer, "context_length", None)
        for p in new:
            if not p.strip():
                raise DiffdiscError("empty caption/prompt")
            if limit and hasattr(self.tokenizer, "tokenizer") and len(self.tokenizer.tokenizer(p)["input_ids"]) > limit:
                warnings.warn(f"prompt {p!r} is longer than {limit} tokens; truncated", stacklevel=2)
        for i in range(0, len(new), 256):
            emb = self.model.encode_text(self.tokenizer(new[i : i + 256]).to(self.device), normalize=True).float()
            self._cache.update(zip(new[i : i + 256], emb, strict=True))
        return torch.stack([self._cache[str(p)] for p in prompts])


register_family("clip", lambda root: (root / CONFIG).is_file(), ContrastiveModel.from_pretrained, priority=30,
                expects="open_clip_config.json (open_clip)")  # fmt: skip
