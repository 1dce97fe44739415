"""Options several commands share, declared once as `Annotated` aliases (the default stays at the parameter), and
the parsers of their comma-separated values."""

from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError

# scoring.schedule.TIMESTEPS_HELP, which its errors quote; copied (a test keeps them equal) because importing
# scoring.schedule imports torch, and `diffdisc --help` must not (seconds and hundreds of MB)
TIMESTEPS_HELP = "N: N evenly spaced timesteps (the official grid); T1,T2,...: exactly those (one timestep: T1,)"


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
TimmModel = Annotated[str, typer.Option(help="Any timm model name, trained from scratch.")]
Epochs = Annotated[int, typer.Option(help="Epochs.")]
BatchSize = Annotated[int, typer.Option(help="Batch size.")]
PeakLr = Annotated[float, typer.Option(help="AdamW peak learning rate (cosine schedule).")]
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


def model_options(no_t5: bool = False, guidance: float | None = None, image_size: int | None = None,
                  weights_dtype: str = "auto", vae_dtype: str | None = None, quantize: str = "none",
                  offload: str = "none", device_map: str | None = None, condition_cache: str = "auto") -> dict:  # fmt: skip
    """The loader options given on the command line (`create_backbone` passes the family's to the model's
    family, which refuses those it does not take, and decides the loading ones itself: `loading.LoadSpec`)."""
    family = {"no_t5": no_t5 or None, "guidance": guidance, "image_size": image_size}
    loading = {"weights_dtype": weights_dtype, "vae_dtype": vae_dtype, "quantize": quantize, "offload": offload,
               "device_map": device_map, "condition_cache": condition_cache}  # fmt: skip
    defaults = {"weights_dtype": "auto", "quantize": "none", "offload": "none", "condition_cache": "auto"}
    given = {k: v for k, v in loading.items() if v is not None and v != defaults.get(k)}  # create_backbone's defaults
    return {k: v for k, v in {**family, **given}.items() if v is not None}


def load(model: str, device: str | None = None, lora: Path | None = None, **options):
    """A backbone by name or directory (`options`: `model_options`), with a LoRA adapter if given; the
    libraries' own progress bars and info logs are turned off first (diffdisc prints its own)."""
    from ..backbones.registry import create_backbone
    from ..runtime import quiet_libraries

    quiet_libraries()
    bb = create_backbone(model, device=device, **options)
    if lora:
        from ..tasks.attention import load_lora

        load_lora(bb, lora)
    return bb
