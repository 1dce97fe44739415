"""Training recipes: resolved, frozen configs saved with every checkpoint (nanoGPT style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import DiffdiscError


@dataclass(frozen=True)
class TrainConfig:
    """`fmnist-classcond`: class-conditional pixel UNet2DModel, 32x32 grayscale, cosine schedule, CFG dropout.

    Measured on the 2-core CPU: ~1.9 s/step at batch 128 (3.2M params); the documented CPU setting
    (`steps=2000`) takes ~65 minutes.
    """

    recipe: str = "fmnist-classcond"
    data: str | None = None  # ImageFolder to train on instead of Fashion-MNIST
    image_size: int = 32
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, True, True)
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    beta_schedule: str = "squaredcos_cap_v2"
    checkpoint_every: int = 100
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


RECIPES = {
    "fmnist-classcond": TrainConfig(),
    "tiny": TrainConfig(recipe="tiny", image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
                        batch_size=8, steps=20, warmup_steps=2, checkpoint_every=5),  # fmt: skip
}


def get_recipe(name: str, **overrides) -> TrainConfig:
    if name not in RECIPES:
        raise DiffdiscError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
