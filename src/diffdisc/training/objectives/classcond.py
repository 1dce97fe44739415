"""The `classcond` objective: a class-conditional pixel U-Net on an ImageFolder or Fashion-MNIST."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DiffdiscError
from ..config import TrainConfig
from .base import (
    DiffusionObjective,
    data_hash,
    fmnist_train,
    load_init,
    make_scheduler,
    open_images,
    resize_note,
    to_u8,
)


class ClassCondObjective(DiffusionObjective):
    """Pixel UNet2DModel with n_classes + 1 class embeddings (the last is the CFG null class)."""

    def __init__(self, cfg: TrainConfig):
        from ...data.images import array_to_tensor

        self.cfg = cfg
        if cfg.data:
            from ...data.folders import open_image_dataset

            ds = open_image_dataset(cfg.data)
            if not ds.class_names or not len(ds):
                raise DiffdiscError(f"{cfg.data}: training needs an ImageFolder (one subfolder of images per class)")
            names = list(ds.class_names)
            images, self.resize_note = open_images([it.path for it in ds.items], cfg)
            y = torch.tensor(ds.label_index(names))
        else:
            from ...datasets.fashion_mnist import CLASS_NAMES

            imgs, labels = fmnist_train(cfg)
            names = list(CLASS_NAMES)
            images = to_u8([array_to_tensor(a, cfg.image_size, cfg.channels) for a in imgs])
            self.resize_note = resize_note(Counter({imgs.shape[1:3][::-1]: len(imgs)}), Counter({"L": 1}), cfg)
            y = torch.from_numpy(labels)
        self.images, self.labels, self.names = images, y.long(), names
        self.data_hash = data_hash(self.images, self.labels)

    def build(self) -> nn.Module:
        from diffusers import UNet2DModel

        cfg = self.cfg
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.model.attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.model.attention_levels))
        return UNet2DModel(
            sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
            block_out_channels=cfg.model.block_out_channels, layers_per_block=cfg.model.layers_per_block,
            down_block_types=down, up_block_types=up, num_class_embeds=len(self.names) + 1,
            norm_num_groups=min(32, cfg.model.block_out_channels[0]),
        )  # fmt: skip

    def init_weights(self, model, src: Path) -> None:
        from diffusers import UNet2DModel

        if not (src / "unet").is_dir():
            raise DiffdiscError(f"init_from {src} has no unet/ directory")
        load_init(model, UNet2DModel.from_pretrained(src / "unet").state_dict(), src)

    def loss(self, model, g: torch.Generator, dev) -> torch.Tensor:
        cfg = self.cfg
        idx = torch.randint(0, len(self.images), (cfg.batch_size,), generator=g)
        x0 = self.images[idx].float() / 127.5 - 1
        labels = self.labels[idx].clone()
        labels[torch.rand(cfg.batch_size, generator=g) < cfg.cond_dropout] = len(self.names)
        x_t, t, target = self._noised(x0, g)
        pred = model(x_t.to(dev), t.to(dev), class_labels=labels.to(dev)).sample
        return F.mse_loss(pred.float(), target.to(dev))

    def save(self, model, dest: Path) -> dict:
        model.save_pretrained(dest / "unet", safe_serialization=True)
        make_scheduler(self.cfg).save_pretrained(dest / "scheduler")
        return {"class_names": self.names, "null_class": len(self.names)}

