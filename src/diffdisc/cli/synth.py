"""`diffdisc synth generate | merge | train`: synthetic training sets from class names, and classifiers on them."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import group
from .options import (
    ClassifierJson,
    Device,
    LoadOptions,
    MaxMinutes,
    MixedPrecision,
    Scheduler,
    Seed,
    TimmTraining,
    json_flag,
    load,
    parse_classes,
    quiet_flag,
)

synth_app = group("synth", "Synthetic training sets from class names (diversity tricks) and timm classifiers.")


@synth_app.command("generate", epilog="Example: diffdisc synth generate --model fmnist-scenes-text --per-class 200 "
                                      "--tricks template,domain,guidance --out runs/synth-all")
def synth_generate(
    out: Annotated[Path, typer.Option(help="Output ImageFolder (+ metadata.jsonl); rerun to resume.")],
    model: Annotated[str, typer.Option(help="Diffusion model (text- or class-conditional).")] = "fmnist-scenes-text",
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names, or @FILE (one per line; default: the model's).")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class.")] = 100,
    tricks: Annotated[str, typer.Option(help="Comma-separated: template, domain, guidance (empty: none).")] = "",
    guidance: Annotated[float, typer.Option(help="Fixed guidance scale (without the guidance trick).")] = 3.0,
    guidance_range: Annotated[str, typer.Option(help="LO,HI for the per-image random guidance trick.")] = "1.5,6",
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 25,
    scheduler: Scheduler = "ddim",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed (every image's prompt, guidance and noise derive from it).")] = 0,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print {out, images, classes} as JSON only.") = False,
    quiet: quiet_flag("No progress lines.") = False,
):
    """Generate a labelled training set from class names with classifier-free guidance and diversity tricks."""
    from ..progress import step_progress
    from ..tasks.synth import SynthConfig, generate

    try:
        lo, hi = (float(v) for v in guidance_range.split(","))
    except ValueError:
        raise DiffdiscError(f"bad --guidance-range {guidance_range!r}: expected LO,HI") from None
    cfg = SynthConfig(per_class=per_class, tricks=tuple(t for t in tricks.split(",") if t), guidance=guidance,
                      guidance_range=(lo, hi), steps=steps, scheduler=scheduler, seed=seed, batch_size=batch_size)  # fmt: skip
    names = parse_classes(classes)
    bb = load(model, device, **loading.kwargs())
    names = names or list(bb.info.class_names)
    with step_progress("synth generate", enabled=not (quiet or json_out)) as cb:
        path = generate(bb, names, cfg, out=out, progress=cb)
    if json_out:
        typer.echo(json.dumps({"out": str(path), "images": per_class * len(names), "classes": names}))
        return
    typer.echo(f"wrote {path}")


@synth_app.command("merge", epilog="Example: diffdisc synth merge runs/synth-template runs/synth-domain --out runs/synth-all")
def synth_merge(
    sources: Annotated[list[Path], typer.Argument(help="Generated sets to combine.")],
    out: Annotated[Path, typer.Option(help="Merged ImageFolder.")],
):
    """Merge sets generated with different tricks into one ImageFolder (metadata kept per image)."""
    from ..tasks.synth import merge

    typer.echo(f"wrote {merge(sources, out)}")


@synth_app.command("train", epilog="Example: diffdisc synth train --data runs/synth-all --model resnet18 --out runs/clf")
def synth_train(
    data: Annotated[Path, typer.Option(help="(Synthetic) ImageFolder to train on.")],
    out: Annotated[Path, typer.Option(help="Output dir (checkpoints/, model.safetensors); rerun to resume.")],
    training: TimmTraining = TimmTraining(),
    mixed_precision: MixedPrecision = "no",
    seed: Seed = 0,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each synthetic class held out for model selection.")] = 0.1,
    max_minutes: MaxMinutes = None,
    test: Annotated[Path | None, typer.Option(help="Real labelled ImageFolder to evaluate the best model on (recorded for `diffdisc report`).")] = None,
    json_out: ClassifierJson = False,
    quiet: quiet_flag("No per-epoch lines.") = False,
):
    """Train a timm classifier from scratch; model selection on a held-out part of the synthetic set only."""
    from ..tasks.baseline import ClassifierConfig
    from .baseline import train_classifier  # not at the top: baseline's group is registered after synth's

    cfg = ClassifierConfig(**asdict(training), mixed_precision=mixed_precision, seed=seed, val_fraction=val_fraction)
    train_classifier("synth train", data, out, cfg, max_minutes, test, json_out, quiet, synthetic=True)
