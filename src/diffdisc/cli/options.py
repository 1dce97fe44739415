"""Options several commands share, declared once: as `Annotated` aliases (the default stays at the parameter), or
as an `OptionGroup` where commands take several together; and the parsers of their comma-separated values."""

import functools
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from ..scoring.timestep_help import TIMESTEPS_HELP


def json_flag(help: str):
    """`--json`: print only the machine-readable result (what it is differs per command)."""
    return Annotated[bool, typer.Option("--json", help=help)]


def quiet_flag(help: str):
    """`--quiet` / `-q`: no progress output (what remains differs per command)."""
    return Annotated[bool, typer.Option("--quiet", "-q", help=help)]


def timesteps_option(help: str, count_only: bool = False, then: str = ""):
    """`--timesteps`, parsed by `scoring.schedule.parse_timesteps` (or `timestep_count` where the command's strategy
    places the timesteps itself and so takes only a count)."""
    if count_only:
        spec = "N evenly spaced timesteps (the official grid); a count only here, not a list of timesteps."
        return Annotated[str, typer.Option(metavar="N", help=f"{help} {spec} {then}".strip())]
    return Annotated[str, typer.Option(metavar="N|T1,T2,...", help=f"{help} {TIMESTEPS_HELP}. {then}".strip())]


Device = Annotated[str | None, typer.Option(help="cpu, cuda, ...")]
Lora = Annotated[Path | None, typer.Option(help="LoRA: an adapter dir from `diffdisc attention tune`, or a diffusers-format LoRA fine-tune (pytorch_lora_weights.safetensors, or its folder).")]
NoiseSeed = Annotated[int, typer.Option(help="Noise seed.")]
Seed = Annotated[int, typer.Option(help="Seed.")]
UnetBatchSize = Annotated[int, typer.Option(help="U-Net batch size (0 = auto-tune to memory and speed).")]
Dtype = Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast)")]
Scheduler = Annotated[str, typer.Option(help="ddim | dpm | euler | ddpm")]

# features extract / sweep / probe
FeatureModel = Annotated[str, typer.Option(help="Diffusion model (shipped name or directory).")]
FeatureTrainData = Annotated[Path, typer.Option(help="Labelled training ImageFolder (the validation split is carved "
                                                     "from it).")]  # fmt: skip
FeatureBatchSize = Annotated[int, typer.Option(help="U-Net batch size.")]
Pooling = Annotated[str, typer.Option(help="gap | avgK (avg2, avg4) | flat")]
Head = Annotated[str, typer.Option(help="linear | attention (needs avgK/flat pooling)")]
WeightDecays = Annotated[str | None, typer.Option(help="Comma-separated decay grid (chosen on validation).")]
ValFraction = Annotated[float, typer.Option(help="Fraction of each training class held out for validation.")]
HeadSeed = Annotated[int, typer.Option(help="Noise, split and head seed.")]
TrainLabels = Annotated[Path | None, typer.Option(help="CSV image,label for a flat training folder.")]
MaxTrain = Annotated[int | None, typer.Option(min=1, help="Use only N training images: a seeded subset (--seed) with "
                                                          "the classes as even as they allow, chosen before decoding.")]  # fmt: skip

# synth train / baseline train
MixedPrecision = Annotated[str, typer.Option(help="no | bf16 | fp16 (accelerate)")]
MaxMinutes = Annotated[float | None, typer.Option(help="Stop (checkpointed mid-epoch) after this many minutes; rerun "
                                                       "to continue.")]  # fmt: skip
ClassifierJson = json_flag("Print {model_dir, test} as JSON only.")


def split(s: str | None) -> list[str] | None:
    """A comma-separated option value as a list (None when not given)."""
    return [x.strip() for x in s.split(",")] if s else None


def parse_classes(s: str | None) -> list[str] | None:
    """--classes: comma-separated names, or @FILE with one name per line (for names that contain commas; blank
    lines ignored). None (option not given) means the data's or model's classes; an empty list is an error, not
    a silent fall back to those."""
    if s is None:
        return None
    if s.startswith("@"):
        try:
            lines = Path(s[1:]).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DiffdiscError(f"--classes {s}: cannot read {s[1:]} ({e.strerror})") from None
        names = [x.strip() for x in lines if x.strip()]
    else:
        names = [x.strip() for x in s.split(",")]
    if not names or not all(names):
        raise DiffdiscError(f"--classes {s!r} has {'an empty class name' if names else 'no class names'}: "
                            "give comma-separated names or @FILE with one name per line")  # fmt: skip
    return names


NoT5 = Annotated[bool, typer.Option("--no-t5", help="SD3: load without the T5 encoder (zeros for its part, as the pipeline does).")]
Guidance = Annotated[float | None, typer.Option("--distilled-guidance", help="FLUX.1-dev: its guidance-embedding value (default 3.5, the pipeline's; not CFG).")]
ImageSize = Annotated[int | None, typer.Option(help="Pipeline models (SDXL, SD3, FLUX, PixArt): image side to score at (default: the model's).")]


WeightsDtype = Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16: the dtype the denoiser and text encoders load in (auto: bf16 on a GPU that has it, fp16 on one without, fp32 on the CPU). --dtype is autocast on top.")]
VaeDtype = Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16 for the VAE (default: the weights dtype, but fp32 under fp16 weights when the VAE's config says force_upcast).")]
Quantize = Annotated[str, typer.Option(help="none | int8 | nf4 | fp8: quantize the denoiser (and T5) as it loads (int8: pip install torchao, or the diffdisc quant extra; nf4: bitsandbytes on a CUDA GPU).")]
Offload = Annotated[str, typer.Option(help="none | model | group: the denoiser stays in CPU memory, moved to the accelerator whole for each call (model) or block by block (group: fits one larger than the GPU).")]
DeviceMap = Annotated[str | None, typer.Option(help="balanced: split the denoiser over all visible GPUs (diffusers' device_map).")]
ConditionCache = Annotated[str, typer.Option(help="Where encoded prompts are kept across runs: auto ($XDG_CACHE_HOME/diffdisc/conditions, for models with large text encoders), a directory, or off.")]


class OptionGroup:
    """Options several commands take together, declared once as a frozen dataclass of `Annotated` fields: a
    command declares one parameter of the group's type (defaulting to the group's defaults), typer is shown one
    option per field in its place and the command gets the group's object (`spell_out`, which every command goes
    through: `cli._Typer.command`)."""


@dataclass(frozen=True)
class FamilyOptions(OptionGroup):
    """The options only some model families take."""

    no_t5: NoT5 = False
    distilled_guidance: Guidance = None
    image_size: ImageSize = None

    def kwargs(self) -> dict:
        """The options given (not at their default) as `create_backbone`'s keywords: it passes the family's to the
        model's family, which refuses those it does not take, and decides the loading ones itself
        (`loading.LoadSpec`)."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        return {("guidance" if k == "distilled_guidance" else k): v for k, v in given.items()}


@dataclass(frozen=True)
class LoadOptions(FamilyOptions):
    """The family options and how the weights load: what every command that loads a model takes."""

    weights_dtype: WeightsDtype = "auto"
    vae_dtype: VaeDtype = None
    quantize: Quantize = "none"
    offload: Offload = "none"
    device_map: DeviceMap = None
    condition_cache: ConditionCache = "auto"


@dataclass(frozen=True)
class TimmTraining(OptionGroup):
    """synth train / baseline train: the classifier and its optimisation (`tasks.baseline.ClassifierConfig`'s)."""

    model: Annotated[str, typer.Option(help="Any timm model name, trained from scratch.")] = "resnet18"
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 15
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine schedule).")] = 2e-3


def spell_out(command):
    """`command` with each `OptionGroup` parameter replaced, in its place, by one parameter per field (typer reads
    `__signature__`), and the group's object made from them when it runs; `command` itself when it has none."""
    sig = inspect.signature(command)
    groups = {p.name: p for p in sig.parameters.values() if isinstance(p.annotation, type) and issubclass(p.annotation, OptionGroup)}
    if not groups:
        return command
    flags = {name: [inspect.Parameter(f.name, p.kind, default=f.default, annotation=f.type) for f in fields(p.annotation)]
             for name, p in groups.items()}  # fmt: skip

    @functools.wraps(command)
    def spelled_out(**kwargs):
        for name, p in groups.items():
            kwargs[name] = p.annotation(**{f.name: kwargs.pop(f.name) for f in flags[name]})
        return command(**kwargs)

    spelled_out.__signature__ = sig.replace(parameters=[q for p in sig.parameters.values() for q in flags.get(p.name, [p])])
    return spelled_out


def load(model: str, device: str | None = None, lora: Path | None = None, **options):
    """A backbone by name or directory (`options`: `LoadOptions.kwargs()`), with a LoRA adapter if given; the
    libraries' own progress bars and info logs are turned off first (diffdisc prints its own)."""
    from ..backbones.registry import create_backbone
    from ..runtime import quiet_libraries

    quiet_libraries()
    bb = create_backbone(model, device=device, **options)
    if lora:
        from ..tasks.attention import load_lora

        load_lora(bb, lora)
    return bb
