"""`diffdisc baseline train | eval`: a supervised timm classifier beside the diffusion runs (also `synth train`'s
trainer)."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from . import group
from .options import (
    ClassifierJson,
    MaxMinutes,
    MixedPrecision,
    TimmTraining,
    json_flag,
    quiet_flag,
)

baseline_app = group("baseline", "Supervised baseline: train any timm classifier on an ImageFolder, evaluate it on "
                                 "others; `diffdisc report` shows it beside the diffusion runs.")  # fmt: skip


def train_classifier(what: str, data: Path, out: Path, cfg, max_minutes: float | None, test: Path | None,
                     json_out: bool, quiet: bool, synthetic: bool) -> None:  # fmt: skip
    """`synth train` and `baseline train`: one trainer; the best model is scored once on --test, and recorded."""
    from ..progress import step_progress
    from ..runtime import quiet_libraries
    from ..tasks.baseline import evaluate_classifier
    from ..tasks.baseline import train_classifier as run

    quiet_libraries()
    log = (lambda m: None) if (quiet or json_out) else (lambda m: typer.echo(m, err=True))
    with step_progress(what, enabled=not (quiet or json_out)) as cb:
        res = run(data, cfg, out=out, log=log, progress=cb, max_minutes=max_minutes, synthetic=synthetic)
    path = res.path
    m = evaluate_classifier(path, test, record=True) if test else None
    if json_out:
        typer.echo(json.dumps({"model_dir": str(path), "test": m}))
    elif m:  # of the kept (best validation) epoch, which the last epoch line need not be
        typer.echo(f"{'real ' if synthetic else ''}test accuracy {m['accuracy']:.1%} (top-5 {m['top5']:.1%}, mean per class "
                   f"{m['mean_per_class_accuracy']:.1%}) on {m['n_images']} images, of the model kept from epoch "
                   f"{res.meta.get('epoch', '?')}")  # fmt: skip


@baseline_app.command("train", epilog="Example: diffdisc baseline train --data train/ --model resnet18 --out runs/cnn "
                                      "--test test/ --max-minutes 10  (then: diffdisc report runs/cnn runs/x)")
def baseline_train(
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder to train on (the validation split is carved from it).")],
    out: Annotated[Path, typer.Option(help="Output dir (checkpoints/, model.safetensors, classifier.json); rerun to resume.")],
    training: TimmTraining = TimmTraining(),
    image_size: Annotated[int, typer.Option(help="Images are resized (bicubic, shorter side) and centre-cropped to this size, 3 channels.")] = 32,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each class held out for model selection.")] = 0.1,
    mixed_precision: MixedPrecision = "no",
    seed: Annotated[int, typer.Option(help="Seed (initialisation, split, batches, augmentation).")] = 0,
    max_minutes: MaxMinutes = None,
    test: Annotated[Path | None, typer.Option(help="Labelled ImageFolder to score the best model on, once (recorded for `diffdisc report`).")] = None,
    json_out: ClassifierJson = False,
    quiet: quiet_flag("No progress or per-epoch lines.") = False,
):
    """Train a timm classifier from scratch on your ImageFolder: would a plain CNN beat the diffusion classifier?"""
    from ..tasks.baseline import ClassifierConfig

    cfg = ClassifierConfig(**asdict(training), image_size=image_size, val_fraction=val_fraction,
                           mixed_precision=mixed_precision, seed=seed)  # fmt: skip
    train_classifier("baseline train", data, out, cfg, max_minutes, test, json_out, quiet, synthetic=False)


@baseline_app.command("eval", epilog="Example: diffdisc baseline eval runs/cnn --data test/  (adds to runs/cnn/evaluations.json)")
def baseline_eval(
    model_dir: Annotated[Path, typer.Argument(help="Output dir of `diffdisc baseline train` (or `synth train`).")],
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder with the training classes (aligned by name).")],
    json_out: json_flag("Print the metrics as JSON only.") = False,
    quiet: quiet_flag("Only the result line.") = False,
):
    """Score a trained classifier on a labelled folder; recorded in MODEL_DIR/evaluations.json for `diffdisc report`."""
    from ..tasks.baseline import EVALUATIONS_JSON, evaluate_classifier

    m = evaluate_classifier(model_dir, data, record=True)
    if json_out:
        typer.echo(json.dumps(m))
        return
    typer.echo(f"{m['model']} on {data}: accuracy {m['accuracy']:.1%} (top-5 {m['top5']:.1%}, mean per class "
               f"{m['mean_per_class_accuracy']:.1%}) on {m['n_images']} images")  # fmt: skip
    if not quiet:
        typer.echo(f"recorded in {model_dir / EVALUATIONS_JSON}", err=True)
