"""Training recipes: frozen, fully resolved configs, saved with every run so a resume can refuse a change."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..config import ConfigMixin
from ..errors import DiffdiscError


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """`fmnist-classcond`: class-conditional pixel UNet2DModel (2.8M params), 32x32 grey, cosine schedule.

    Documented CPU setting: `CPU_SETTINGS` below (shown by `diffdisc train --help`). Measured in the shipped
    run with other jobs on the cores: 3.1-3.5 s/step beside light load, 5.6-9.7 s/step when test runs took
    one to two cores (set OMP_WAIT_POLICY=PASSIVE there; spinning threads doubled it).
    `layers_per_block=1` is the size whose accuracy was measured (87.3%); 2 would be 4.0M params and ~1.45x
    slower per step.
    `data` is None for Fashion-MNIST (train split) or a user's ImageFolder (class names from folder names).
    `name` labels the exported model (diffdisc.json); None means `default_name`. It does not change the weights,
    so a resumed run may change it.
    """

    config_label = "training config"

    recipe: str = "fmnist-classcond"
    name: str | None = None
    kind: str = "classcond"  # classcond | text (UNet2DConditionModel + CLIPTextModel) | clip (open_clip)
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
    # Fine-tuning: start from this model directory (or shipped name) of the same kind and architecture instead
    # of random weights; its tokenizer is kept so token ids mean the same. Optimiser and EMA start fresh.
    init_from: str | None = None
    # text / clip recipes: scenes drawn from the Fashion-MNIST train split (when `data` is None)
    scenes: int = 0
    pair_fraction: float = 0.5  # share of two-item scenes
    class_only_p: float = 0.0  # captions without colour words ("a sneaker"): class-name prompts in-distribution
    # P(item takes its class colour `scenes.class_colour`), else uniform: colour becomes a class cue that the
    # cue-conflict probe then contradicts. 0 = colour carries no class information (the shipped models).
    colour_correlation: float = 0.0
    max_length: int = 20  # tokens incl. <bos>/<eos>
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    # clip: ViT image tower on 32x32 (patch 4 -> 64 tokens)
    vision_width: int = 128
    vision_layers: int = 4
    patch_size: int = 4
    embed_dim: int = 128

    def __post_init__(self):
        if not 0.0 <= self.colour_correlation <= 1.0:
            raise DiffdiscError(f"colour_correlation must be in [0, 1], got {self.colour_correlation}")
        if self.colour_correlation and (self.kind == "classcond" or self.data):
            raise DiffdiscError("colour_correlation applies to generated scenes (text and clip recipes without data)")


# The shipped weights were trained on an H100 (see world/assets/README.md); CPU_SETTINGS below are what a
# 2-core CPU manages.
_TEXT = dict(
    kind="text", channels=3, scenes=60000, class_only_p=0.2, attention_levels=(False, True, True),
    block_out_channels=(32, 64, 128), steps=4000,
)  # fmt: skip
_CLIP = dict(kind="clip", channels=3, scenes=60000, class_only_p=0.2, batch_size=256, lr=5e-4, warmup_steps=200,
             weight_decay=0.1, cond_dropout=0.0, steps=4000, ema_decay=0.998)  # fmt: skip

# Colour-correlated variants for the cue-conflict probe: 90% of items wear their class colour. Meant to be
# fine-tuned from the shipped uncorrelated models on a CPU (`--init-from fmnist-scenes-text`, see
# docs/results.md for the settings measured); from scratch they train like their parents.
_CC = dict(colour_correlation=0.9)

RECIPES = {
    "fmnist-classcond": TrainConfig(),
    # Text-conditional pixel U-Net with cross-attention + a small CLIP text encoder, trained jointly on scenes
    # ("a red sneaker", "a blue shirt to the left of a yellow bag"); cond_dropout -> empty caption (CFG).
    "fmnist-scenes-text": TrainConfig(recipe="fmnist-scenes-text", **_TEXT),
    # The contrastive baseline on the same scenes and captions: open_clip ViT + text transformer, InfoNCE.
    "fmnist-scenes-clip": TrainConfig(recipe="fmnist-scenes-clip", **_CLIP),
    "fmnist-scenes-text-cc": TrainConfig(recipe="fmnist-scenes-text-cc", **_TEXT, **_CC),
    "fmnist-scenes-clip-cc": TrainConfig(recipe="fmnist-scenes-clip-cc", **_CLIP, **_CC),
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
    "tiny-text": TrainConfig(
        recipe="tiny-text", kind="text", channels=3, scenes=64, image_size=16, block_out_channels=(8, 16),
        attention_levels=(False, True), batch_size=8, steps=6, warmup_steps=2, checkpoint_every=3,
        text_width=16, text_layers=1, text_heads=2, class_only_p=0.2,
    ),  # fmt: skip
    "tiny-clip": TrainConfig(
        recipe="tiny-clip", kind="clip", channels=3, scenes=64, image_size=16, batch_size=8, steps=6,
        warmup_steps=2, checkpoint_every=3, text_width=16, text_layers=1, text_heads=2, vision_width=16,
        vision_layers=1, embed_dim=16, cond_dropout=0.0, class_only_p=0.2,
    ),  # fmt: skip
}


@dataclass(frozen=True)
class CpuSetting:
    """A documented setting for the 2-core CPU and the seconds per step measured there (low, high: the range
    other jobs on the cores produced), so `diffdisc train --help` can say what to expect before a run."""

    steps: int
    batch_size: int
    s_per_step: tuple[float, float]
    note: str = ""

    def line(self, recipe: str) -> str:
        lo, hi = self.s_per_step
        rate = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        mins = [self.steps * s / 60 for s in self.s_per_step]
        took = f"{mins[0]:.0f}" if round(mins[0]) == round(mins[1]) else f"{mins[0]:.0f}-{mins[1]:.0f}"
        took = f"{took} min" if mins[1] >= 1 else "seconds"
        return f"{recipe:<22}{self.steps:>6}{self.batch_size:>6}  {rate:>9} s/step  {took}{self.note}"


CPU_SETTINGS = {
    # DESIGN.md: 1,139 steps in 40 min idle; the shipped run 3.1-3.5 s/step beside light load.
    "fmnist-classcond": CpuSetting(2000, 128, (2.1, 3.5)),
    # Measured with two other jobs on the cores; ~4-5 s/step expected idle from the forward cost.
    "fmnist-scenes-text": CpuSetting(1000, 128, (9, 14), "  (idle ~4-5)"),
    "fmnist-scenes-clip": CpuSetting(2500, 256, (2.0, 2.0)),
    # Fine-tuned with --init-from the shipped parent in 25 min (docs/results.md has the full settings).
    "fmnist-scenes-text-cc": CpuSetting(526, 32, (1.8, 4.0), "  (fine-tune)"),
    "fmnist-scenes-clip-cc": CpuSetting(678, 128, (0.9, 3.8), "  (fine-tune)"),
    "tiny": CpuSetting(20, 8, (0.03, 0.07)),
}


def cpu_settings_text() -> str:
    """The table `diffdisc train --help` shows (one line per recipe; rich keeps the line breaks of an epilog)."""
    head = f"{'recipe':<22}{'steps':>6}{'batch':>6}  measured on 2 CPU cores (range: load)"
    return "\n".join([head, *(s.line(r) for r, s in CPU_SETTINGS.items())])


def default_name(cfg: TrainConfig) -> str:
    """The label of a trained model (`diffdisc train --name` overrides it): its recipe, plus the data folder's
    name when trained on a user's data (`fmnist-classcond-mydata`): every export is a folder called `model`."""
    if not cfg.data:
        return cfg.recipe
    p = Path(cfg.data).expanduser().resolve()
    return f"{cfg.recipe}-{(p.parent if p.is_file() else p).name}"  # a captions.jsonl file names its folder


def get_recipe(recipe: str, /, **overrides) -> TrainConfig:
    """A named recipe with overrides applied; None values mean 'keep the recipe's value' (CLI defaults).
    Positional-only, so `name=` is the option (the model's label), not the recipe."""
    if recipe not in RECIPES:
        raise DiffdiscError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    bad = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if bad:
        raise DiffdiscError(f"unknown training option {bad[0]!r}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    return replace(RECIPES[recipe], **overrides)
