"""`diffdisc train`: a shipped-model recipe on Fashion-MNIST or your own ImageFolder (resumable, --dry-run)."""

from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from ..training.recipes import RECIPES, cpu_settings_text  # light: the help of `train` lists them
from . import app
from .options import quiet_flag


@app.command(epilog=f"Documented CPU settings (`--dry-run` times this machine instead):\n{cpu_settings_text()}\n\n"
                    "Example: diffdisc train fmnist-classcond --data train/ --out runs/train --max-minutes 60  "
                    "(rerun with just --out to resume)")  # fmt: skip
def train(
    recipe: Annotated[str, typer.Argument(help=f"Recipe name: {' | '.join(RECIPES)}.")],
    out: Annotated[Path | None, typer.Option(help="Output directory (checkpoints/, train_config.json, model/); rerun "
                                                  "to resume with the settings stored there. Required unless --dry-run.")] = None,
    steps: Annotated[int | None, typer.Option(help="Total optimiser steps.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your own ImageFolder instead of Fashion-MNIST (resized to the "
                                                   "model's size; the log says how).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (checkpointed) after this many minutes; the log says "
                                                           "early on which step that reaches.")] = None,
    init_from: Annotated[str | None, typer.Option(help="Fine-tune: start from this model dir or shipped name.")] = None,
    colour_correlation: Annotated[float | None, typer.Option(help="P(item wears its class colour) in scenes.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (e.g. lower when fine-tuning).")] = None,
    name: Annotated[str | None, typer.Option(help="The model's name in its diffdisc.json, shown by reports "
                                                  "(default: the --out folder's name with --data, else RECIPE).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Time a few steps here and print steps, batch and the "
                                                            "estimated time; trains and writes nothing.")] = False,
    quiet: quiet_flag("No progress bar or log lines.") = False,
):
    """Train a shipped-model recipe (resumable: checkpoints every N steps, EMA weights exported to OUT/model)."""
    from ..runtime import quiet_libraries
    from ..training.train import estimate, resolve_config
    from ..training.train import train as run

    quiet_libraries()
    log = (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))
    if out is None and not dry_run:
        raise DiffdiscError("train needs --out DIR (or --dry-run to time the recipe without training)")
    cfg = resolve_config(recipe, out, log=log, steps=steps, data=str(data) if data else None, batch_size=batch_size,
                         seed=seed, init_from=str(Path(init_from).resolve()) if init_from and "/" in init_from else init_from,
                         colour_correlation=colour_correlation, lr=lr, name=name)  # fmt: skip
    if dry_run:
        r = estimate(cfg, out, max_minutes=max_minutes)
        doc = r["cpu_setting"]
        head = f"{r['name']} ({r['recipe']})" if r["name"] else f"{r['recipe']} on {cfg.data} (named after --out)"
        lines = [f"{head}: {r['steps']} steps ({r['done']} done), batch {r['batch_size']}, "
                 f"{r['images']} images, {r['params']:,} params, {r['device']}",
                 r["resize"], f"data loaded in {r['data_s']} s; {r['timed_steps']} steps timed after "
                              f"{r['warmup_steps']} untimed warm-up steps", r["plan"],
                 doc and (f"documented CPU setting: --steps {doc['steps']} --batch-size {doc['batch_size']}, "
                          f"{'-'.join(f'{x:g}' for x in dict.fromkeys(doc['s_per_step']))} s/step on 2 cores"),
                 "dry run: nothing trained or written"]  # fmt: skip
        typer.echo("\n".join(line for line in lines if line))
        return
    try:
        model_dir = run(cfg, out, max_minutes=max_minutes, log=log, quiet=quiet)
    except KeyboardInterrupt as e:  # the trainer says which step it checkpointed; not the classify hint (images)
        typer.echo(str(e) or "interrupted before the first step (checkpoints are kept); rerun the same command to "
                   "resume", err=True)  # fmt: skip
        raise typer.Exit(130) from None
    typer.echo(f"model exported to {model_dir}")
