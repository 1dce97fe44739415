"""The training config: what every run shares, one model config per kind, and the optimiser's settings.

A run saves it flat (train_config.json, and `config` in a model's diffdisc.json): the keys below in the
order the first shipped runs wrote them, with the other kinds' model keys at their defaults. Resumes
compare that dict with the new config's, so the flat form never moves; the split is for the code that
reads it (the loop reads `optimizer`, an objective reads `model`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..config import ConfigMixin, check_choice
from ..errors import DiffdiscError


@dataclass(frozen=True)
class OptimizerConfig(ConfigMixin):
    """AdamW (betas at torch's defaults) with a linear warmup to a constant lr, and an EMA of the weights."""

    config_label = "optimizer config"

    lr: float = 1e-3
    warmup_steps: int = 100  # then constant: a run's `steps` may change on resume without changing step s
    weight_decay: float = 0.0
    ema_decay: float = 0.999  # the exported weights are the EMA's
    ema_warmup: bool = True  # decay min(ema_decay, (1+s)/(10+s)): early exports are not mostly init weights


@dataclass(frozen=True)
class UNetConfig(ConfigMixin):
    """`classcond`: a pixel UNet2DModel with one class embedding per class plus the null class (CFG).

    `layers_per_block=1` is the size whose accuracy was measured (87.3%); 2 would be 4.0M params and ~1.45x
    slower per step.
    """

    config_label = "classcond model config"

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, True, True)  # AttnDown/UpBlock2D where True
    beta_schedule: str = "squaredcos_cap_v2"
    # epsilon: VP noising at uniform t, ε-MSE (DDPMScheduler). flow: rectified flow as diffusers' SD3 training
    # example (σ = the FlowMatchEulerDiscreteScheduler row at u ~ logit-normal(0, 1), x = (1-σ)x0 + σε,
    # v-MSE against ε - x0, timestep 1000σ); beta_schedule is then unused
    objective: str = "epsilon"

    def __post_init__(self):
        check_choice("objective", self.objective, ("epsilon", "flow"))


@dataclass(frozen=True)
class TextEncoderConfig(ConfigMixin):
    """The small transformer text tower both caption-conditioned kinds train from scratch."""

    max_length: int = 20  # tokens incl. <bos>/<eos>
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4


@dataclass(frozen=True)
class TextUNetConfig(UNetConfig, TextEncoderConfig):
    """`text`: UNet2DConditionModel (cross-attention) + CLIPTextModel, trained jointly (the SD layout, no VAE)."""

    config_label = "text model config"


@dataclass(frozen=True)
class ClipConfig(TextEncoderConfig):
    """`clip`: open_clip CLIP, a ViT image tower on 32x32 (patch 4 -> 64 tokens) + the text tower, InfoNCE."""

    config_label = "clip model config"

    vision_width: int = 128
    vision_layers: int = 4
    patch_size: int = 4
    embed_dim: int = 128  # the shared image-text embedding


MODEL_CONFIGS: dict[str, type[ConfigMixin]] = {"classcond": UNetConfig, "text": TextUNetConfig, "clip": ClipConfig}

# The flat form's keys, in the order train_config.json has always had them.
SAVED_KEYS = (
    "recipe", "name", "kind", "data", "image_size", "channels", "block_out_channels", "layers_per_block",
    "attention_levels", "steps", "batch_size", "lr", "warmup_steps", "weight_decay", "ema_decay", "ema_warmup",
    "cond_dropout", "beta_schedule", "checkpoint_every", "seed", "init_from", "scenes", "pair_fraction",
    "class_only_p", "colour_correlation", "max_length", "text_width", "text_layers", "text_heads", "vision_width",
    "vision_layers", "patch_size", "embed_dim", "objective", "fmnist_images",
)  # fmt: skip
ADDED_KEYS = {"objective": "epsilon", "fmnist_images": 0}


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls)}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


MODEL_DEFAULTS = {k: v for c in MODEL_CONFIGS.values() for k, v in _defaults(c).items()}  # every kind's keys
assert all(_defaults(c).items() <= MODEL_DEFAULTS.items() for c in MODEL_CONFIGS.values()), "one default a key"
OPTIMIZER_KEYS = tuple(_defaults(OptimizerConfig))


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """One training run: recipe, data, loop settings, plus `model` (the kind's config) and `optimizer`.

    `data` is None for Fashion-MNIST (train split; the text and clip kinds draw `scenes` from it) or a user's
    ImageFolder / captions.jsonl. `name` labels the exported model (diffdisc.json); None means
    `recipes.default_name`. It does not change the weights, so a resumed run may change it.
    `model` None means the defaults of `kind`'s model config. Build one from flat options (the keys of
    train_config.json) with `from_dict` or `with_options`.
    """

    config_label: ClassVar[str] = "training config"

    recipe: str = "fmnist-classcond"
    name: str | None = None
    kind: str = "classcond"  # classcond | text | clip: picks `model`'s config (MODEL_CONFIGS)
    data: str | None = None
    image_size: int = 32
    channels: int = 1
    steps: int = 2000
    batch_size: int = 128
    cond_dropout: float = 0.1  # condition -> null class / empty caption (CFG); clip: 0
    checkpoint_every: int = 100
    seed: int = 0
    # Fine-tuning: start from this model directory (or shipped name) of the same kind and architecture instead
    # of random weights; its tokenizer is kept so token ids mean the same. Optimiser and EMA start fresh.
    init_from: str | None = None
    # text / clip without `data`: scenes drawn from the Fashion-MNIST train split
    scenes: int = 0
    # without `data`: 0 = the whole Fashion-MNIST train split (Debian); N = a stratified seeded N of it, from the
    # shipped 1,000 train images when N <= 1,000 (so small runs need no system dataset)
    fmnist_images: int = 0
    pair_fraction: float = 0.5  # share of two-item scenes
    class_only_p: float = 0.0  # captions without colour words ("a sneaker"): class-name prompts in-distribution
    # P(item takes its class colour `scenes.class_colour`), else uniform: colour becomes a class cue that the
    # cue-conflict probe then contradicts. 0 = colour carries no class information (the shipped models).
    colour_correlation: float = 0.0
    model: Any = None  # UNetConfig | TextUNetConfig | ClipConfig, as `kind` says
    optimizer: OptimizerConfig = OptimizerConfig()

    def __post_init__(self):
        check_choice("model kind", self.kind, MODEL_CONFIGS)
        if self.model is None:
            object.__setattr__(self, "model", MODEL_CONFIGS[self.kind]())
        if type(self.model) is not MODEL_CONFIGS[self.kind]:
            raise DiffdiscError(f"a {self.kind!r} run needs a {MODEL_CONFIGS[self.kind].__name__}, "
                                f"got {type(self.model).__name__}")  # fmt: skip
        if not 0.0 <= self.colour_correlation <= 1.0:
            raise DiffdiscError(f"colour_correlation must be in [0, 1], got {self.colour_correlation}")
        if self.fmnist_images < 0:
            raise DiffdiscError(f"fmnist_images must be 0 (the whole train split) or a count, got {self.fmnist_images}")
        if self.colour_correlation and (self.kind == "classcond" or self.data):
            raise DiffdiscError("colour_correlation applies to generated scenes (text and clip recipes without data)")

    def options(self) -> dict[str, Any]:
        """The flat form with values as held (tuples stay tuples): `SAVED_KEYS` in order."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "optimizer")}
        flat = {**MODEL_DEFAULTS, **vars(self.model), **vars(self.optimizer), **own}
        # keys added since runs were first saved, left out at their default: older runs' files stay identical
        return {k: flat[k] for k in SAVED_KEYS if not (k in ADDED_KEYS and flat[k] == ADDED_KEYS[k])}

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.options().items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of a flat dict (train_config.json, a recipe file); keys it lacks keep their defaults.

        Another kind's model keys are accepted at their defaults (every saved file has them) and refused
        otherwise: they would change nothing in this run.
        """
        unknown = sorted(set(d) - set(SAVED_KEYS))
        if unknown:
            raise DiffdiscError(f"unknown {cls.config_label} key {unknown[0]!r} (known: {', '.join(sorted(SAVED_KEYS))})")
        kind = d.get("kind", cls.kind)
        check_choice("model kind", kind, MODEL_CONFIGS)
        model_cls = MODEL_CONFIGS[kind]

        def part(c) -> dict:
            return {f.name: d[f.name] for f in fields(c) if f.name in d}

        model_keys = part(model_cls)
        for k, v in d.items():
            if k in MODEL_DEFAULTS and k not in model_keys and _plain(v) != _plain(MODEL_DEFAULTS[k]):
                raise DiffdiscError(f"option {k} does not apply to a {kind!r} model (recipe {d.get('recipe', cls.recipe)!r})")
        shared = {k: v for k, v in d.items() if k not in MODEL_DEFAULTS and k not in OPTIMIZER_KEYS}
        return cls(**shared, model=model_cls.from_dict(model_keys), optimizer=OptimizerConfig.from_dict(part(OptimizerConfig)))

    def with_options(self, **options) -> TrainConfig:
        """This config with flat options changed (`lr=5e-4`, `text_width=32`): the way overrides reach it."""
        bad = sorted(set(options) - set(SAVED_KEYS))
        if bad:
            raise DiffdiscError(f"unknown training option {bad[0]!r}")
        return self.from_dict({**self.to_dict(), **options})
