"""Command line: parses arguments, builds configs, calls the Python API, prints. No logic of its own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import DiffdiscError

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    help="diffdisc: diffusion models as discriminators (zero-shot classification from denoising error).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False):
    _state["debug"] = debug


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _load(model: str, device: str | None = None, lora: Path | None = None):
    """A backbone by name or directory, with a LoRA adapter from `diffdisc attention tune` if given."""
    from .backbones.registry import create_backbone

    bb = create_backbone(model, device=device)
    if lora:
        from .tasks.attention import load_lora

        load_lora(bb, lora)
    return bb


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",")] if s else None


@app.command(epilog="Example: diffdisc classify --model fmnist-classcond --data imgs/ --strategy halving --out runs/x")
def classify(
    model: Annotated[str, typer.Option(help="Shipped model name, diffusers directory or cached hub id.")],
    data: Annotated[Path, typer.Option(help="ImageFolder (class subfolders) or a flat folder of images.")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names (default: the data's or model's).")] = None,
    templates: Annotated[list[str] | None, typer.Option("--template", help="Prompt template(s) or set name (text models).")] = None,
    strategy: Annotated[str, typer.Option(help="exhaustive | halving | ttest")] = "exhaustive",
    timesteps: Annotated[int, typer.Option(help="Timesteps per candidate (exhaustive).")] = 50,
    timestep_schedule: Annotated[str, typer.Option(help="even (official grid) | stratified")] = "even",
    stages: Annotated[str, typer.Option(help="Halving stages n_t:keep,... (last keep must be 1).")] = "20:3,50:1",
    min_scores: Annotated[int, typer.Option(help="t-test: scores before the first test.")] = 20,
    max_scores: Annotated[int, typer.Option(help="t-test: cap on scores per candidate.")] = 100,
    p_value: Annotated[float, typer.Option(help="t-test: drop a candidate below this p.")] = 2e-3,
    exit_z: Annotated[float, typer.Option(help="halving: stop an image after a stage when its leader beats the runner-up by this many standard errors (0 = off).")] = 0.0,
    loss: Annotated[str, typer.Option(help="l2 | l1 | huber")] = "l2",
    weighting: Annotated[str, typer.Option(help="uniform | clark | min_snr")] = "uniform",
    batch_size: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast)")] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser (GPU: worth it).")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC activations.")] = False,
    scorer: Annotated[str, typer.Option(help="denoise | attention (Discffusion; text models)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter dir from `diffdisc attention tune`.")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory (resumable).")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat folder.")] = None,
    on_error: Annotated[str, typer.Option(help="fail | skip unreadable images.")] = "fail",
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    chunk: Annotated[int, typer.Option(help="Images scored together (fills U-Net batches).")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature for probabilities.")] = None,
    rank: Annotated[int, typer.Option(envvar="RANK", help="This process's shard (set by torchrun / accelerate launch).")] = 0,
    world_size: Annotated[int, typer.Option(envvar="WORLD_SIZE", help="Number of processes sharing the run.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Zero-shot classify images with a diffusion model (Li et al. / Clark & Jaini)."""
    _quiet_libraries()
    from .progress import classify_progress
    from .scoring.config import AdaptiveConfig, ScoreConfig, parse_stages
    from .tasks.classify import classify as run

    score = ScoreConfig(loss=loss, weighting=weighting, batch_size=batch_size, dtype=dtype, seed=seed,
                        compile=compile, channels_last=channels_last, scorer=scorer)
    adaptive = AdaptiveConfig(strategy=strategy, n_timesteps=timesteps, timesteps=timestep_schedule, stages=parse_stages(stages),
                              min_scores=min_scores, max_scores=max_scores, p_value=p_value, exit_z=exit_z)  # fmt: skip
    if not 0 <= rank < world_size:
        raise DiffdiscError(f"rank {rank} is outside 0..{world_size - 1}")
    if device is None and world_size > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    bb = _load(model, device, lora)
    out = out or Path("runs") / f"classify-{bb.info.name.replace('/', '_')}-{strategy}"
    with classify_progress("classify", enabled=not (quiet or json_out)) as cb:
        result = run(bb, data, _split(classes), templates=templates or None, score=score, adaptive=adaptive, out=out,
                     labels_csv=labels, on_error=on_error, limit=limit, chunk_images=chunk, temperature=temperature, progress=cb,
                     rank=rank, world_size=world_size)  # fmt: skip
    if not (out / "metrics.json").is_file():
        typer.echo(f"shard {rank}/{world_size} done; other shards still running: run `diffdisc merge {out}` when all finish")
        return
    metrics = json.loads((out / "metrics.json").read_text())
    for image_id, why in getattr(result, "skipped", []):
        typer.echo(f"skipped {image_id}: {why}", err=True)
    _print_metrics(metrics, out, json_out)


def _print_metrics(metrics: dict, out: Path, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"results in {out}")
    for k in ("n_images", "accuracy", "top5", "ece", "ece_temperature_scaled", "unet_calls_per_image"):
        if k in metrics and metrics[k] is not None:
            v = metrics[k]
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)


@app.command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="A labelled classify run to fit on.")],
    apply_to: Annotated[Path | None, typer.Option("--apply-to", help="Rewrite this run's metrics with the fitted T.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
):
    """Fit softmax temperature (and Platt a, b on log U-Net calls) on a labelled run."""
    from .results import ClassificationResult, atomic_write_text
    from .scoring.calibrate import fit_platt_calls, fit_temperature
    from .tasks.classify import finalize

    res = ClassificationResult.load(run_dir)
    lab = res.labels >= 0
    if lab.sum() < 2:
        raise DiffdiscError(f"{run_dir} has fewer than 2 labelled images; calibration needs labels")
    T = fit_temperature(res.scores[lab], res.labels[lab])
    a, b = fit_platt_calls(res.calls[lab], res.predictions[lab] == res.labels[lab])
    cal = {"temperature": T, "platt_log_calls": {"a": a, "b": b}, "fitted_on": str(run_dir), "n": int(lab.sum())}
    atomic_write_text(Path(run_dir) / "calibration.json", json.dumps(cal, indent=2))
    if apply_to:
        cal["applied_metrics"] = finalize(Path(apply_to), ClassificationResult.load(apply_to), T)
    typer.echo(json.dumps(cal, indent=None if json_out else 2))


@app.command()
def merge(run_dir: Annotated[Path, typer.Argument(help="Run directory written by one or more processes.")]):
    """Merge shards of a (multi-process) run into results.jsonl, predictions.jsonl and metrics.json."""
    from .results import ClassificationResult
    from .tasks.classify import finalize

    res = ClassificationResult.load(run_dir)
    _print_metrics(finalize(run_dir, res, res.settings.get("temperature")), run_dir, False)


@app.command(epilog="Example: diffdisc train fmnist-classcond --out runs/train --max-minutes 60  (rerun to resume)")
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe name: fmnist-classcond | tiny")],
    out: Annotated[Path, typer.Option(help="Output directory (checkpoints/, model/); rerun to resume.")],
    steps: Annotated[int | None, typer.Option(help="Total optimiser steps.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your own ImageFolder instead of Fashion-MNIST.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (checkpointed) after this many minutes.")] = None,
):
    """Train a shipped-model recipe (resumable: checkpoints every N steps, EMA weights exported to OUT/model)."""
    _quiet_libraries()
    from .world.recipes import get_recipe
    from .world.train import train as run

    cfg = get_recipe(recipe, steps=steps, data=str(data) if data else None, batch_size=batch_size, seed=seed)
    model_dir = run(cfg, out, max_minutes=max_minutes, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"model exported to {model_dir}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where results and index.html go.")] = Path("runs/demo"),
    per_class: Annotated[int, typer.Option(help="Shipped test images per class.")] = 3,
):
    """Zero-shot classify shipped real Fashion-MNIST test images with the shipped model; table + HTML page."""
    _quiet_libraries()
    from rich.console import Console
    from rich.table import Table

    from .demo import run_demo
    from .progress import classify_progress

    r = run_demo(out, per_class, progress_factory=lambda name: classify_progress(name))
    t = Table(title="diffdisc demo: zero-shot Fashion-MNIST (halving 10:3,20:1; t-test min 10 max 20 p 0.02)")
    for h in r["header"]:
        t.add_column(h)
    for row in r["rows"]:
        t.add_row(*row)
    Console().print(t)
    if r["banner"]:
        Console().print(f"[bold red]{r['banner']}[/]")
    typer.echo(f"report: {r['page']}")


def _fmt(m: dict) -> str:
    return f"{m['mean']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"


@app.command(epilog="Example: diffdisc match --model fmnist-scenes-text --groups groups.jsonl --out runs/match")
def match(
    model: Annotated[str, typer.Option(help="Shipped name or model directory (diffusion or open_clip).")],
    groups: Annotated[Path, typer.Option(help="groups.jsonl / .csv (images + captions), or a Winoground dir.")],
    out: Annotated[Path, typer.Option(help="Run directory (resumable).")] = Path("runs/match"),
    timesteps: Annotated[int, typer.Option(help="Evenly spaced timesteps per pair.")] = 20,
    batch_size: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16")] = "fp32",
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    scorer: Annotated[str, typer.Option(help="denoise | attention (Discffusion)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter dir from `diffdisc attention tune`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
):
    """Score every (image, caption) pair of each group: Winoground text/image/group scores, R@1/R@5."""
    _quiet_libraries()
    from .data.groups import load_groups
    from .progress import classify_progress
    from .scoring.config import ScoreConfig
    from .tasks.match import match as run

    gs = load_groups(groups)
    bb = _load(model, device, lora)
    score = ScoreConfig(batch_size=batch_size, dtype=dtype, seed=seed, scorer=scorer)
    with classify_progress("match", enabled=not as_json) as cb:
        run(bb, gs, score=score, n_timesteps=timesteps, out=out, progress=cb)
    m = json.loads((out / "metrics.json").read_text())
    if as_json:
        typer.echo(json.dumps(m, indent=2))
        return
    for k, v in m.items():
        if isinstance(v, dict) and "mean" in v:
            typer.echo(f"{k:10s} {_fmt(v)}")
    typer.echo(f"results: {out}")


@app.command(epilog="Example: diffdisc probe binding spatial --model fmnist-scenes-text --model fmnist-scenes-clip")
def probe(
    names: Annotated[list[str] | None, typer.Argument(help="binding | spatial | object | colour (default: all)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Model(s) to compare; repeat the option.")] = None,
    n: Annotated[int, typer.Option(help="Groups per probe.")] = 200,
    seed: Annotated[int, typer.Option(help="Probe generation seed.")] = 0,
    timesteps: Annotated[int, typer.Option(help="Timesteps per pair (diffusion).")] = 20,
    out: Annotated[Path, typer.Option(help="Where runs go (resumable).")] = Path("runs/probes"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    scorer: Annotated[str, typer.Option(help="denoise | attention (diffusion models)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter for the diffusion model(s).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
):
    """Compositional probes (attribute binding, spatial relation, object/colour-swap controls), diffusion vs
    contrastive, with chance levels and bootstrap 95% intervals."""
    _quiet_libraries()
    from rich.console import Console
    from rich.table import Table

    from .backbones.registry import create_backbone
    from .progress import classify_progress
    from .scoring.config import ScoreConfig
    from .tasks.probe import run_probes

    names_ = model or ["fmnist-scenes-text", "fmnist-scenes-clip"]
    models = [create_backbone(m, device=device) for m in names_]
    if lora:
        from .tasks.attention import load_lora

        for bb in models:
            if not getattr(bb, "is_contrastive", False):
                load_lora(bb, lora)
    rows = run_probes(models, names or None, n=n, seed=seed, n_timesteps=timesteps, out=out, score=ScoreConfig(scorer=scorer),
                      progress_factory=None if as_json else (lambda d: classify_progress(d)))  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"probes (n={n}, seed={seed}; chance: text 25%, image 25%, group 16.7%)")
    for h in ("probe", "model", "kind", "text score", "image score", "group score", "calls/group"):
        t.add_column(h)
    for r in rows:
        t.add_row(r["probe"], r["model"], r["kind"], _fmt(r["text"]), _fmt(r["image"]), _fmt(r["group"]),
                  f"{r['calls_per_group']:.0f}")  # fmt: skip
    Console().print(t)


attention_app = typer.Typer(help="Discffusion cross-attention scoring: few-shot LoRA tuning and heat maps.",
                            no_args_is_help=True)
app.add_typer(attention_app, name="attention")


@attention_app.command("tune", epilog="Example: diffdisc attention tune --model fmnist-scenes-text --shots 32 "
                                      "--probe binding --probe spatial --out runs/lora-32")
def attention_tune(
    out: Annotated[Path, typer.Option(help="Adapter directory to write (safetensors + adapter_config.json).")],
    model: Annotated[str, typer.Option(help="Text-conditional diffusion model.")] = "fmnist-scenes-text",
    shots: Annotated[int, typer.Option(help="Training groups (K).")] = 32,
    probe: Annotated[list[str] | None, typer.Option(help="Embedded probes to draw training groups from.")] = None,
    groups: Annotated[Path | None, typer.Option(help="Or: your groups.jsonl / Winoground dir.")] = None,
    seed: Annotated[int, typer.Option(help="Training seed; embedded training groups use seed 1000+seed.")] = 0,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 4,
    margin: Annotated[float, typer.Option(help="Hinge margin.")] = 0.1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    epochs: Annotated[int, typer.Option(help="Passes over the K groups.")] = 1,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="Attention score only (no denoising bias).")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
):
    """Few-shot prompt learning: LoRA on the U-Net's attention, hinge loss on matching vs other captions."""
    _quiet_libraries()
    from .progress import console
    from .tasks.attention import tune
    from .world.probes import make_probe

    if shots < 1:
        raise DiffdiscError("--shots must be >= 1 (K = 0 is the untuned model)")
    if groups:
        from .data.groups import load_groups

        train = load_groups(groups)[:shots]
    else:
        names = probe or ["binding", "spatial"]
        per = -(-shots // len(names))  # held-out from evaluation: eval probes use seed 0, training 1000+seed
        train = [g for name in names for g in make_probe(name, per, 1000 + seed)][:shots]
    bb = _load(model, device)
    path = tune(bb, train, out, rank=rank, margin=margin, lr=lr, epochs=epochs, bias=not no_bias, seed=seed,
                progress=lambda s, n, loss: console.print(f"step {s}/{n} loss {loss:.4f}") if s % 8 == 0 or s == n else None)  # fmt: skip
    typer.echo(f"adapter saved to {path}")


@attention_app.command("heatmap", epilog="Example: diffdisc attention heatmap --image x.png --caption 'a red bag'")
def attention_heatmap(
    image: Annotated[Path, typer.Option(help="Image file.")],
    caption: Annotated[str, typer.Option(help="Caption whose tokens are mapped.")],
    model: Annotated[str, typer.Option(help="Text-conditional diffusion model.")] = "fmnist-scenes-text",
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("heatmap.png"),
    t: Annotated[int, typer.Option(help="Timestep.")] = 300,
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter dir.")] = None,
):
    """Per-token cross-attention heat maps over the image (last down/mid/up cross-attention layers averaged)."""
    _quiet_libraries()
    from .tasks.attention import attention_heatmaps

    bb = _load(model, None, lora)
    if not 0 <= t < bb.num_train_timesteps:
        raise DiffdiscError(f"timestep {t} out of range 0..{bb.num_train_timesteps - 1}")
    typer.echo(f"wrote {attention_heatmaps(bb, image, caption, out, t=t)}")


@app.command(epilog="Examples: diffdisc sample fmnist-classcond --out samples.png\n\n"
                    "diffdisc sample fmnist-scenes-text --captions 'a red sneaker;a blue bag to the left of a white shirt'")
def sample(
    model: Annotated[str, typer.Argument(help="Shipped name or model directory (class- or text-conditional).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("samples.png"),
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes (default: the model's).")] = None,
    captions: Annotated[str | None, typer.Option(help="Semicolon-separated captions (text models).")] = None,
    per_row: Annotated[int, typer.Option(help="Samples per class / caption.")] = 8,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 3.0,
    scheduler: Annotated[str, typer.Option(help="ddim | dpm | euler | ddpm")] = "ddim",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
):
    """Draw a labelled grid of samples, to see what a diffusion model has learned before using it as a classifier."""
    _quiet_libraries()
    from .tasks.sample import sample_grid

    bb = _load(model, device)
    if getattr(bb, "is_contrastive", False):
        raise DiffdiscError(f"{model} is a contrastive model: it cannot generate images")
    keys = [c.strip() for c in captions.split(";")] if captions else _split(classes)
    typer.echo(f"wrote {sample_grid(bb, keys, per_row, guidance=guidance, steps=steps, scheduler=scheduler, seed=seed, out=out)}")


synth_app = typer.Typer(help="Synthetic training sets from class names (diversity tricks) and timm classifiers.",
                        no_args_is_help=True)
app.add_typer(synth_app, name="synth")


@synth_app.command("generate", epilog="Example: diffdisc synth generate --model fmnist-scenes-text --per-class 200 "
                                      "--tricks template,domain,guidance --out runs/synth-all")
def synth_generate(
    out: Annotated[Path, typer.Option(help="Output ImageFolder (+ metadata.jsonl); rerun to resume.")],
    model: Annotated[str, typer.Option(help="Diffusion model (text- or class-conditional).")] = "fmnist-scenes-text",
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names (default: the model's).")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class.")] = 100,
    tricks: Annotated[str, typer.Option(help="Comma-separated: template, domain, guidance (empty: none).")] = "",
    guidance: Annotated[float, typer.Option(help="Fixed guidance scale (without the guidance trick).")] = 3.0,
    guidance_range: Annotated[str, typer.Option(help="LO,HI for the per-image random guidance trick.")] = "1.5,6",
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 25,
    scheduler: Annotated[str, typer.Option(help="ddim | dpm | euler | ddpm")] = "ddim",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed (every image's prompt, guidance and noise derive from it).")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
):
    """Generate a labelled training set from class names with classifier-free guidance and diversity tricks."""
    _quiet_libraries()
    from .progress import console
    from .tasks.synth import SynthConfig, generate

    try:
        lo, hi = (float(v) for v in guidance_range.split(","))
    except ValueError:
        raise DiffdiscError(f"bad --guidance-range {guidance_range!r}: expected LO,HI") from None
    cfg = SynthConfig(per_class=per_class, tricks=tuple(t for t in tricks.split(",") if t), guidance=guidance,
                      guidance_range=(lo, hi), steps=steps, scheduler=scheduler, seed=seed, batch_size=batch_size)  # fmt: skip
    bb = _load(model, device)
    names = _split(classes) or list(bb.info.class_names)
    path = generate(bb, names, out, cfg, progress=lambda d, n: console.print(f"{d}/{n} images"))
    typer.echo(f"wrote {path}")


@synth_app.command("merge")
def synth_merge(
    sources: Annotated[list[Path], typer.Argument(help="Generated sets to combine.")],
    out: Annotated[Path, typer.Option(help="Merged ImageFolder.")],
):
    """Merge sets generated with different tricks into one ImageFolder (metadata kept per image)."""
    from .tasks.synth import merge

    typer.echo(f"wrote {merge(sources, out)}")


@synth_app.command("train", epilog="Example: diffdisc synth train --data runs/synth-all --model resnet18 --out runs/clf")
def synth_train(
    data: Annotated[Path, typer.Option(help="(Synthetic) ImageFolder to train on.")],
    out: Annotated[Path, typer.Option(help="Output dir (checkpoints/, model.safetensors); rerun to resume.")],
    model: Annotated[str, typer.Option(help="Any timm model name, trained from scratch.")] = "resnet18",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine schedule).")] = 2e-3,
    mixed_precision: Annotated[str, typer.Option(help="no | bf16 | fp16 (accelerate)")] = "no",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    test: Annotated[Path | None, typer.Option(help="Real labelled ImageFolder to evaluate the best model on.")] = None,
):
    """Train a timm classifier from scratch; model selection on a held-out part of the synthetic set only."""
    _quiet_libraries()
    from .tasks.synth_train import ClassifierConfig, evaluate_classifier, train_classifier

    cfg = ClassifierConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, mixed_precision=mixed_precision, seed=seed)
    path = train_classifier(data, out, cfg, log=lambda m: typer.echo(m, err=True))
    if test:
        m = evaluate_classifier(path, test)
        typer.echo(f"real test accuracy {m['accuracy']:.1%} on {m['n_images']} images")


@app.command()
def doctor():
    """Check the installation: library versions, device, Fashion-MNIST files, shipped models loading."""
    _quiet_libraries()
    import importlib.metadata as md

    import torch

    from .backbones.registry import create_backbone, list_backbones
    from .world.fashion_mnist import DEFAULT_DIR, FILES, INSTALL_HINT

    ok = True
    for pkg in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "open_clip_torch", "safetensors",
                "torchmetrics", "peft", "timm"):  # fmt: skip
        try:
            typer.echo(f"{pkg:16s} {md.version(pkg)}")
        except md.PackageNotFoundError:
            ok = False
            typer.echo(f"{pkg:16s} MISSING")
    dev = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    typer.echo(f"{'device':16s} {dev}")
    missing = [f for fs in FILES.values() for f in fs if not (DEFAULT_DIR / f).is_file()]
    typer.echo(f"{'fashion-mnist':16s} " + (f"{DEFAULT_DIR}" if not missing else f"not found ({INSTALL_HINT}); the shipped 1,000 test images still work"))
    for name in list_backbones():
        try:
            bb = create_backbone(name)
            typer.echo(f"{name:16s} loads ({bb.info.family}, {bb.info.metadata.get('steps', '?')} steps)")
        except DiffdiscError as e:
            ok = False
            typer.echo(f"{name:16s} FAILS: {e}")
    if not ok:
        raise typer.Exit(1)


@app.command()
def models():
    """List the shipped models."""
    from .backbones.base import read_metadata
    from .backbones.registry import list_backbones, shipped_models_dir

    names = list_backbones()
    if not names:
        typer.echo("no shipped models installed")
    for n in names:
        meta = read_metadata(shipped_models_dir() / n)
        typer.echo(f"{n}\t{meta.get('recipe', '')}\tsteps={meta.get('steps', '?')}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except DiffdiscError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished images are saved; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
