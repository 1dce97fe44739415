"""`diffdisc noise fit`: one learned noise per timestep (NoOp), fitted on labelled training images."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import group
from .options import (
    FamilyOptions,
    UnetBatchSize,
    json_flag,
    load,
    parse_classes,
    quiet_flag,
    timesteps_option,
)

noise_app = group(
    "noise",
    "Learned noise (NoOp): one ε per timestep, fitted on labelled training images (classify --noise).",
)


@noise_app.command(
    "fit",
    epilog="Example: diffdisc noise fit --model fmnist-classcond --data data/train --timesteps 5 "
    "--max-images 100 --steps 30 --out runs/noise5.safetensors  (cost: about 3 x steps x "
    "--batch-images x classes x timesteps U-Net calls, the backward pass included)",
)
def noise_fit(
    model: Annotated[str, typer.Option(help="Shipped model name, diffusers directory or cached hub id.")],
    data: Annotated[
        Path,
        typer.Option(
            help="Labelled TRAINING images (ImageFolder, or a flat folder + --labels), never the test images."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Noise file to write (.safetensors).")],
    timesteps: timesteps_option(
        "Timesteps to learn a noise for (classify then uses these):",
        then="Give classify's --timesteps N here to cover its grid.",
    ) = "10",
    max_images: Annotated[
        int | None, typer.Option(min=2, help="Only N images: a seeded subset, stratified by class.")
    ] = None,
    holdout: Annotated[
        float,
        typer.Option(
            help="Share of each class held out to check the noise against random noise (0: no check)."
        ),
    ] = 0.2,
    steps: Annotated[int, typer.Option(min=1, help="Adam steps per timestep.")] = 50,
    batch_images: Annotated[int, typer.Option(min=1, help="Images per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Learning rate of the noise parameters.")] = 0.05,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names, or @FILE (default: the data's or model's)."),
    ] = None,
    templates: Annotated[
        list[str] | None, typer.Option("--template", help="Prompt template(s) or set name (text models).")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat folder.")] = None,
    loss: Annotated[str, typer.Option(help="l2 | l1 | huber (as classify will use).")] = "l2",
    weighting: Annotated[
        str | None, typer.Option(help="As classify will use (default: uniform; cosmap for flow models).")
    ] = None,
    sigmas: Annotated[
        str, typer.Option(help="Flow models: scheduler | uniform | logit_normal (as classify will use).")
    ] = "scheduler",
    batch_size: UnetBatchSize = 64,
    seed: Annotated[
        int,
        typer.Option(
            help="Noise seed (the start of the fit and the random noise it is checked against), subset and split seed."
        ),
    ] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    family: FamilyOptions = FamilyOptions(),
    json_out: json_flag("Print the file's metadata as JSON only.") = False,
    quiet: quiet_flag("No progress.") = False,
):
    """Learn one noise per timestep on labelled training images (classify --noise).

    Each ε_t is optimised through the frozen denoiser so that the right class's denoising error is smallest
    relative to the others (cross-entropy over -errors/τ), kept a white-noise sample (unit magnitude at every
    frequency: unit variance, flat spectrum), then checked on held-out training images against random noise."""
    from ..scoring.config import ScoreConfig, default_weighting
    from ..tasks.noise_fit import NoiseFitConfig, fit_learned_noise, recommended, verdict

    if out.suffix != ".safetensors":
        raise DiffdiscError(f"--out {out}: a learned noise file is written as .safetensors")
    from ..scoring.schedule import _timestep_spec

    spec = _timestep_spec(timesteps)
    bb = load(model, device, **family.kwargs())
    score = ScoreConfig(
        loss=loss, weighting=weighting or default_weighting(bb), batch_size=batch_size, seed=seed
    )
    cfg = NoiseFitConfig(timesteps=spec if isinstance(spec, int) else tuple(spec), max_images=max_images, seed=seed,
                         steps=steps, lr=lr, batch_images=batch_images, holdout=holdout, score=score, sigmas=sigmas,
                         classes=parse_classes(classes), templates=templates or None, labels_csv=labels)  # fmt: skip
    show = not (quiet or json_out)

    def progress(p: dict) -> None:
        if show and p["step"] == p["steps"]:
            typer.echo(
                f"t = {p['t']} ({p['k'] + 1}/{p['of']}): {p['steps']} steps, last loss {p['loss']:.3f}",
                err=True,
            )

    noise = fit_learned_noise(bb, data, cfg, out=out, progress=progress)
    if json_out:
        typer.echo(json.dumps({**noise.metadata(), "fit": noise.fit}))
        return
    fit = noise.fit
    typer.echo(
        f"learned noise for {len(noise.timesteps)} timesteps in {noise.path} ({fit['images']} fitting images)"
    )
    for t, a, b, ca, cb in zip(noise.timesteps, fit["loss_before"], fit["loss_after"], fit["accuracy_before"],
                               fit["accuracy_after"], strict=True):  # fmt: skip
        typer.echo(
            f"  t = {t}: fitting loss {a:.3f} -> {b:.3f}, accuracy at this t alone {ca:.1%} -> {cb:.1%}"
        )
    typer.echo(verdict(noise))
    if recommended(noise):
        typer.echo(f"use with: diffdisc classify ... --noise {noise.path} (its timesteps: {noise.timesteps})")
