"""Class-conditional backbones: pixel `UNet2DModel` with `num_class_embeds`, and DiT (`Transformer2DModel`) + VAE.

Candidates are class ids or class names (names come from the `diffdisc.json` sidecar or DiT's id2label).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DiffdiscError
from .base import Backbone, diffusion_args, load_model, read_config, read_metadata, refuse_options
from .capabilities import DIFFUSION, Capability
from .families import config_class, pipeline_class, register_family
from .loading import LoadSpec, load_error
from .process import load_scheduler


class ClassCondBackbone(Backbone):
    denoiser = "model"
    capabilities = DIFFUSION | {Capability.CLASS_CONDITIONS}

    def __init__(self, model, scheduler, vae=None, name="classcond", root: Path | None = None, class_names=(), null_class=None):
        super().__init__(*diffusion_args(model.config, scheduler))
        self.model, self.vae = model, vae
        self.scheduler_config = dict(scheduler.config)
        self.is_dit = not hasattr(model.config, "num_class_embeds")
        meta = read_metadata(root) if root else {}
        class_names = tuple(meta.get("class_names", class_names))
        n_embeds = model.config.num_embeds_ada_norm if self.is_dit else model.config.num_class_embeds
        if not n_embeds:
            raise DiffdiscError(f"{name}: model has no class embeddings (num_class_embeds is not set)")
        # DiT reserves index num_classes for the null class; our UNets store it in metadata.
        self.null_class = meta.get("null_class", null_class if null_class is not None else n_embeds if self.is_dit else None)
        self.num_classes = len(class_names) or (n_embeds if self.is_dit else n_embeds - (self.null_class is not None))
        sample = model.config.sample_size
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.info = self._make_info(
            name, "classcond", "class", root, meta, image_size=int(sample if isinstance(sample, int) else sample[0]) * scale,
            image_channels=vae.config.in_channels if vae is not None else model.config.in_channels,
            latent=vae is not None, class_names=class_names,
        )  # fmt: skip

    @classmethod
    def from_pretrained(cls, root: str | Path, name: str | None = None, spec: LoadSpec | None = None,
                        **options) -> ClassCondBackbone:  # fmt: skip
        """`spec`: the denoiser's weights dtype, quantization and device map, and the VAE's dtype."""
        refuse_options(options, "class-conditional")
        from diffusers import AutoencoderKL

        root, spec = Path(root), spec or LoadSpec()
        if (root / "transformer").is_dir():
            from diffusers import DiTTransformer2DModel as model_cls

            model_dir = root / "transformer"
        else:
            from diffusers import UNet2DModel as model_cls

            model_dir = root / "unet" if (root / "unet").is_dir() else root
        try:
            model = load_model(model_cls, model_dir, **spec.model_kwargs(model_dir))
        except (ValueError, RuntimeError, ImportError, TypeError) as e:
            if spec.quantize == "none" and not spec.device_map:
                raise
            raise load_error(spec, e) from None
        sched_dir = root / "scheduler"
        if not (sched_dir / "scheduler_config.json").is_file():
            raise DiffdiscError(f"incomplete model directory: missing {sched_dir / 'scheduler_config.json'}")
        scheduler = load_scheduler(root)
        vae = None
        if (root / "vae").is_dir():
            vae = load_model(AutoencoderKL, root / "vae",
                             torch_dtype=spec.vae_dtype_for(read_config(root / "vae" / "config.json")))  # fmt: skip
        id2label = {}
        mi = root / "model_index.json"
        if mi.is_file():
            id2label = read_config(mi).get("id2label", {}) or {}
        names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
        bb = cls(model, scheduler, vae, name=name or root.name, root=root, class_names=names)
        bb.weights_dtype = spec.torch_dtype
        return bb.eval().requires_grad_(False)

    def class_id(self, c) -> int:
        if isinstance(c, str) and not c.isdigit():
            names = [n.lower() for n in self.info.class_names]
            if c.lower() not in names:
                known = ", ".join(self.info.class_names[:12]) or "none recorded; pass class ids"
                raise DiffdiscError(f"unknown class {c!r} for {self.info.name} (known: {known})")
            return names.index(c.lower())
        i = int(c)
        if not 0 <= i < self.num_classes:
            raise DiffdiscError(f"class id {i} out of range 0..{self.num_classes - 1} for {self.info.name}")
        return i

    def _condition_batch(self, candidates):
        return torch.tensor([self.class_id(c) for c in candidates], dtype=torch.long, device=self.device)

    def _null_condition(self):
        if self.null_class is None:
            raise DiffdiscError(f"{self.info.name} has no null class (trained without classifier-free dropout)")
        return torch.tensor(self.null_class, dtype=torch.long, device=self.device)

    def model_output(self, x_t, t, cond):
        x_t = self.denoiser_input(x_t)
        if self.is_dit:
            return self.model(x_t, timestep=self.timestep_input(t), class_labels=cond).sample
        return self.model(x_t, self.timestep_input(t), class_labels=cond).sample


DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


def _detect(root: Path) -> bool:
    if (root / "transformer").is_dir():  # SD3 / FLUX / PixArt keep theirs in transformer/ too
        cfg = root / "transformer" / "config.json"
        own = read_config(cfg).get("_class_name", "") if cfg.is_file() else ""
        return own in ("", *DIT_CLASSES) and pipeline_class(root) in ("", "DiTPipeline")
    return config_class(root) == "UNet2DModel"


register_family("classcond", _detect, ClassCondBackbone.from_pretrained, priority=10,
                expects="unet/ or config.json of a UNet2DModel, transformer/ (DiT)", pipelines=("DiTPipeline",), loading=True)  # fmt: skip
