"""Training recipes: frozen, fully resolved configs, saved with every run so a resume can refuse a change."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..errors import DiffdiscError


@dataclass(frozen=True)
class TrainConfig:
    """`fmnist-classcond`: class-conditional pixel UNet2DModel (2.8M params), 32x32 grey, cosine schedule.

    Documented CPU setting: `steps=2000`. Measured on the 2-core CPU at batch 128: ~2.1 s/step on an idle
    machine (DESIGN.md: 1,139 steps in 40 min), so 2000 steps take ~70 min. Measured in the shipped run
    with other jobs on the cores: 3.1-3.5 s/step beside light load, 5.6-9.7 s/step when test runs took
    one to two cores (set OMP_WAIT_POLICY=PASSIVE there; spinning threads doubled it).
    `layers_per_block=1` is the size whose accuracy was measured (87.3%); 2 would be 4.0M params and ~1.45x
    slower per step.
    `data` is None for Fashion-MNIST (train split) or a user's ImageFolder (class names from folder names).
    """

    recipe: str = "fmnist-classcond"
    data: str | None = None
    image_size: int = 32
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, True, True)  # AttnDown/UpBlock2D where True
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1+s)/(10+s)): early exports are not mostly init weights
    cond_dropout: float = 0.1  # labels -> null class (= number of classes) for classifier-free guidance
    beta_schedule: str = "squaredcos_cap_v2"
    checkpoint_every: int = 100
    seed: int = 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DiffdiscError(
                f"unknown training config key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


RECIPES = {
    "fmnist-classcond": TrainConfig(),
    # Tests and the random-weights demo fallback: 16x16, 2 levels, 20 steps, checkpoint every 5.
    "tiny": TrainConfig(
        recipe="tiny",
        image_size=16,
        block_out_channels=(8, 16),
        attention_levels=(False, True),
        batch_size=8,
        steps=20,
        warmup_steps=2,
        checkpoint_every=5,
    ),  # fmt: skip
}


def get_recipe(name: str, **overrides) -> TrainConfig:
    """A named recipe with overrides applied; None values mean 'keep the recipe's value' (CLI defaults)."""
    if name not in RECIPES:
        raise DiffdiscError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    bad = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if bad:
        raise DiffdiscError(f"unknown training option {bad[0]!r}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    return replace(RECIPES[name], **overrides)
