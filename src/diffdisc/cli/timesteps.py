"""`diffdisc timesteps fit`: which timesteps discriminate, learned from labelled training images."""

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import group
from .options import (
    Dtype,
    Guidance,
    ImageSize,
    NoT5,
    UnetBatchSize,
    json_flag,
    load,
    model_options,
    parse_classes,
    quiet_flag,
)

timesteps_app = group("timesteps", "Timesteps that carry the information: weights fitted on labelled training images.")
BUDGETS = (1, 2, 5, 10, 20, 50)  # the calibration curve's rows printed (all of them are in the file)


@timesteps_app.command("fit", epilog="Example: diffdisc timesteps fit --model fmnist-classcond --data data/train "
                                     "--out runs/ts/timestep_weights.json --max-images 200")
def timesteps_fit(
    model: Annotated[str, typer.Option(help="Shipped model name, diffusers directory or cached hub id.")],
    data: Annotated[Path, typer.Option(help="Labelled TRAINING images (ImageFolder, or a flat folder + --labels): a calibration split, never the test images.")],
    out: Annotated[Path, typer.Option(help="Weights file to write (a directory gets timestep_weights.json); not inside the model directory.")],
    grid: Annotated[int, typer.Option(help="Candidate timesteps: N evenly spaced (the official grid), each scored for every image and class.")] = 50,
    max_images: Annotated[int | None, typer.Option(min=2, help="Only N images: a seeded subset, stratified by class.")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names, or @FILE (default: the data's or model's).")] = None,
    templates: Annotated[list[str] | None, typer.Option("--template", help="Prompt template(s) or set name (text models).")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat folder.")] = None,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds over the calibration images (chooses the L2 penalty, measures the gain).")] = 3,
    loss: Annotated[str, typer.Option(help="l2 | l1 | huber (as classify will use).")] = "l2",
    weighting: Annotated[str | None, typer.Option(help="As classify will use: uniform | clark | min_snr | velocity | sigma_sqrt | cosmap. Default: uniform; cosmap for flow models (measured, docs/results.md).")] = None,
    scorer: Annotated[str, typer.Option(help="denoise | attention (as classify will use)")] = "denoise",
    sigmas: Annotated[str, typer.Option(help="Flow models: scheduler | uniform | logit_normal (as classify will use).")] = "scheduler",
    batch_size: UnetBatchSize = 64,
    dtype: Dtype = "fp32",
    seed: Annotated[int, typer.Option(help="Noise, subset and fold seed.")] = 0,
    run: Annotated[Path | None, typer.Option(help="Calibration run directory (resumable; default: beside --out).")] = None,
    chunk: Annotated[int, typer.Option(help="Images scored together (fills U-Net batches).")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    no_t5: NoT5 = False,
    distilled_guidance: Guidance = None,
    image_size: ImageSize = None,
    json_out: json_flag("Print the weights file as JSON only.") = False,
    quiet: quiet_flag("No progress bar.") = False,
):
    """Fit which timesteps discriminate, and their weights, on labelled training images (--timestep-weights of classify).

    Scores every image for every class at --grid timesteps (a classify run), then fits weights w_t >= 0 and an
    order (most informative first) with cross-validation over the images, and reports the cross-validated
    accuracy of the fitted weighting beside the even grid's at each budget of timesteps."""
    from ..backbones.registry import resolve_model_dir
    from ..progress import classify_progress
    from ..scoring.config import ScoreConfig, default_weighting
    from ..scoring.timestep_weights import FILENAME
    from ..tasks.timestep_fit import TimestepFitConfig, fit_timesteps

    target = out / FILENAME if out.is_dir() or not out.suffix else out
    logger = logging.getLogger("diffdisc")
    logger.addFilter(_not_training_dir)  # load() below says it once; this early check would say it twice
    try:
        root = resolve_model_dir(model).resolve()
    finally:
        logger.removeFilter(_not_training_dir)
    if target.resolve().is_relative_to(root):
        raise DiffdiscError(f"--out {out} is inside the model directory {root}: a file there changes the model's "
                            "fingerprint (its runs and these weights would no longer match it); write it elsewhere")  # fmt: skip
    bb = load(model, device, **model_options(no_t5, distilled_guidance, image_size))
    score = ScoreConfig(loss=loss, weighting=weighting or default_weighting(bb), batch_size=batch_size, dtype=dtype,
                        seed=seed, scorer=scorer)  # fmt: skip
    cfg = TimestepFitConfig(grid=grid, max_images=max_images, seed=seed, folds=folds, score=score, sigmas=sigmas,
                            classes=parse_classes(classes), templates=templates or None, labels_csv=labels,
                            chunk_images=chunk)  # fmt: skip
    run = run or target.parent / f"{target.stem}-calibration-grid{grid}"
    with classify_progress("calibration", enabled=not (quiet or json_out)) as cb:
        weights = fit_timesteps(bb, data, cfg, out=target, run_dir=run, progress=cb)
    if json_out:
        typer.echo(json.dumps(weights.to_dict()))
        return
    print_weights(weights)


def _not_training_dir(record: logging.LogRecord) -> bool:
    return "is a training directory" not in record.getMessage()


def print_weights(weights) -> None:
    """The most informative timesteps, then calibration accuracy of the fitted weighting vs the even grid."""
    from rich.console import Console
    from rich.table import Table

    cal = weights.calibration
    top = Table(title=f"timestep weights in {weights.path}")
    for c in ("rank", "t", "weight", "accuracy alone"):
        top.add_column(c, justify="right")
    alone = dict(zip(weights.grid, weights.informativeness["accuracy"], strict=True))
    for i, (t, w) in enumerate(zip(weights.order[:10], weights.weights, strict=False), start=1):
        top.add_row(str(i), str(t), f"{w:.3f}", f"{alone[t]:.3f}")
    curve = Table(title=f"calibration accuracy, {cal['folds']}-fold cross-validated over {weights.n_images} training images")
    for c in ("timesteps", "fitted (first n)", "even grid"):
        curve.add_column(c, justify="right")
    n_all = cal["curve"]["n"]
    for n in sorted({b for b in BUDGETS if b < len(n_all)} | {len(n_all)}):
        curve.add_row(str(n), f"{cal['curve']['fitted'][n - 1]:.3f}", f"{cal['curve']['even'][n - 1]:.3f}")
    console = Console()
    console.print(top)
    console.print(curve)
    console.print(f"{len(weights.informative)} of {len(weights.grid)} timesteps weighted (L2 {cal['l2']:g}); "
                  f"use with: diffdisc classify ... --timestep-weights {weights.path}")  # fmt: skip
