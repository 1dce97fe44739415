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
    LoadOptions,
    UnetBatchSize,
    json_flag,
    load,
    parse_classes,
    quiet_flag,
)

timesteps_app = group("timesteps", "Timesteps that carry the information: weights fitted on labelled training images.")
BUDGETS = (1, 2, 5, 10, 20, 50)  # the calibration curve's rows printed (all of them are in the file)


@timesteps_app.command("fit", epilog="Example: diffdisc timesteps fit --model fmnist-classcond --data data/train "
                                     "--out runs/ts/timestep_weights.json --max-images 200 --grid 20  (cost: images x "
                                     "classes x grid U-Net calls, here 200 x 10 x 20 = 40,000; the default --grid 50 "
                                     "costs 100,000)")
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
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print the weights file as JSON only.") = False,
    quiet: quiet_flag("No progress bar.") = False,
):
    """Fit which timesteps discriminate, and their weights, on labelled training images (--timestep-weights of classify).

    Scores every image for every class at --grid timesteps (a classify run; its cost is said first), then fits
    weights w_t >= 0 and an order (most informative first), and checks them on held-out training images (k-fold
    cross-validation) against the even grid at each number of timesteps. At a number where nothing learned beat
    the even grid the file says so, is not recommended there, and classify scores the even grid instead."""
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
    bb = load(model, device, **loading.kwargs())
    score = ScoreConfig(loss=loss, weighting=weighting or default_weighting(bb), batch_size=batch_size, dtype=dtype,
                        seed=seed, scorer=scorer)  # fmt: skip
    cfg = TimestepFitConfig(grid=grid, max_images=max_images, seed=seed, folds=folds, score=score, sigmas=sigmas,
                            classes=parse_classes(classes), templates=templates or None, labels_csv=labels,
                            chunk_images=chunk)  # fmt: skip
    run = run or target.parent / f"{target.stem}-calibration-grid{grid}"
    if not (quiet or json_out):
        from ..tasks.timestep_fit import calibration_cost

        c = calibration_cost(bb, data, cfg)
        typer.echo(f"calibration: {c['images']} images x {c['conditions']} classes/prompts x {c['grid']} timesteps = "
                   f"{c['calls']:,} U-Net calls (a rerun resumes {run})", err=True)  # fmt: skip
    with classify_progress("calibration", enabled=not (quiet or json_out)) as cb:
        weights = fit_timesteps(bb, data, cfg, out=target, run_dir=run, progress=cb)
    if json_out:
        typer.echo(json.dumps(weights.to_dict()))
        return
    print_weights(weights)


def _not_training_dir(record: logging.LogRecord) -> bool:
    return "is a training directory" not in record.getMessage()


def print_weights(weights) -> None:
    """The order the timesteps are taken in, the held-out check at each number of timesteps, and in plain words
    where the file helps and where it does not."""
    from rich.console import Console
    from rich.table import Table

    cal = weights.calibration
    g = len(weights.grid)
    top = Table(title=f"timestep weights in {weights.path}: the order the learned timesteps are taken in",
                caption="each next t is the one that most improved the first ones on the training images (greedy), "
                        "so the order is not by weight")  # fmt: skip
    for c in ("rank", "t", "weight", "accuracy alone"):
        top.add_column(c, justify="right")
    alone = dict(zip(weights.grid, weights.informativeness["accuracy"], strict=True))
    for i, (t, w) in enumerate(zip(weights.order[:10], weights.weights, strict=False), start=1):
        top.add_row(str(i), str(t), f"{w:.3f}", f"{alone[t]:.3f}")
    curve = Table(title=f"accuracy on held-out training images ({weights.n_images} images, each scored by a fit "
                        f"that had not seen it: {cal['folds']}-fold cross-validation)")  # fmt: skip
    cols = ["timesteps", "learned timesteps", "even grid + weights", "even grid", "the file uses"]
    for c in cols:
        curve.add_column(c, justify="right")
    budgets = sorted({b for b in BUDGETS if b < g} | {g})
    words = {"learned": "learned t", "even_weighted": "even + weights", "even": "nothing (even grid)"}
    for n in budgets:
        c = weights.budget_check(n)
        ew = "-" if c["even_weighted"] is None else f"{c['even_weighted']:.3f}"
        curve.add_row(str(n), f"{c['learned']:.3f}", ew, f"{c['even']:.3f}", words[weights.plan(n)])
    console = Console()
    console.print(top)
    console.print(curve)
    lam = cal["l2"]
    tried = [float(v) for v in cal.get("l2_cv", {})] or [lam]
    strongest = " (the strongest tried: the weights stay close to each timestep's average evidence)" if lam == max(tried) else ""
    console.print(f"{len(weights.informative)} of {g} timesteps have a weight above 0; L2 penalty {lam:g}, chosen by "
                  f"cross-validation{strongest}.")  # fmt: skip
    good = [n for n in budgets if weights.recommended(n)]
    bad = [n for n in budgets if not weights.recommended(n)]
    if good:
        console.print(f"Recommended at --timesteps {', '.join(map(str, good))}: diffdisc classify ... --timestep-weights "
                      f"{weights.path} --timesteps N")  # fmt: skip
    if bad:
        console.print(f"Not recommended at --timesteps {', '.join(map(str, bad))}: nothing learned beat the even grid on "
                      "held-out training images there; classify ignores the file at those numbers and scores the "
                      "even grid (with a warning)." if good else "Not recommended at any number of timesteps: nothing "
                      "learned beat the even grid on held-out training images; classify without --timestep-weights.")  # fmt: skip
