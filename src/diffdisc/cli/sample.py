"""`diffdisc sample`: a labelled grid of samples, to see what a diffusion model has learned."""

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import (
    Device,
    LoadOptions,
    Scheduler,
    Seed,
    load,
    parse_classes,
)


@app.command(epilog="Examples: diffdisc sample fmnist-classcond --out samples.png\n\n"
                    "diffdisc sample fmnist-scenes-text --captions 'a red sneaker;a blue bag to the left of a white shirt'")
def sample(
    model: Annotated[str, typer.Argument(help="Shipped name or model directory (class- or text-conditional).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("samples.png"),
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes, or @FILE (one per line; default: the model's).")] = None,
    captions: Annotated[str | None, typer.Option(help="Semicolon-separated captions (text models).")] = None,
    per_row: Annotated[int, typer.Option(help="Samples per class / caption.")] = 8,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 3.0,
    scheduler: Scheduler = "ddim",
    seed: Seed = 0,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
):
    """Draw a labelled grid of samples, to see what a diffusion model has learned before using it as a classifier."""
    from ..tasks.sample import SampleConfig, sample_grid

    keys = [c.strip() for c in captions.split(";")] if captions else parse_classes(classes)
    bb = load(model, device, **loading.kwargs())
    config = SampleConfig(per_key=per_row, guidance=guidance, steps=steps, scheduler=scheduler, seed=seed)
    typer.echo(f"wrote {sample_grid(bb, keys, config, out=out)}")
