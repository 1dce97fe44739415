"""Command line: parses arguments, builds configs, calls the Python API, prints. No logic of its own."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from .errors import DiffdiscError

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _Interrupted(Exception):
    """Ctrl-C inside a command. Typer turns a KeyboardInterrupt into a bare exit code (Exit(130), or click's Abort
    in older versions) before `main()` could print the resume hint; this carries it past typer instead."""


@functools.cache
def _threads_option():
    """The `--threads` option every command shares, built by typer itself from an annotated parameter."""
    probe = typer.Typer()

    @probe.command()
    def _(threads: Annotated[int | None, typer.Option(min=1, metavar="N", help="torch CPU threads (default: torch's).")] = None):
        pass

    return typer.main.get_command(probe).params[0]


class _Command(TyperCommand):
    """Every diffdisc command: a shared `--threads N`; Ctrl-C -> `_Interrupted`; under --quiet / --json, Python
    warnings (prompt truncated, missing glyph, ...) and library log warnings are silenced, so the output is only
    the result."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(_threads_option())

    def invoke(self, ctx):
        threads = ctx.params.pop("threads", None)  # not a parameter of the command's function
        _state["threads"] = threads
        if threads:
            import torch

            torch.set_num_threads(threads)
            with contextlib.suppress(RuntimeError):  # settable once per process, before any inter-op work
                torch.set_num_interop_threads(threads)
        with contextlib.ExitStack() as stack:
            if any(ctx.params.get(k) for k in ("quiet", "json_out", "as_json")):
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
                stack.callback(logging.disable, logging.root.manager.disable)
                logging.disable(logging.WARNING)
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                raise _Interrupted from None


class _Typer(typer.Typer):
    """typer.Typer whose commands are `_Command`s."""

    def command(self, name=None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or _Command, **kwargs)


app = _Typer(
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


def _classes(s: str | None) -> list[str] | None:
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


@app.command(epilog="Example: diffdisc classify --model fmnist-classcond --data imgs/ --strategy halving --out runs/x")
def classify(
    model: Annotated[str, typer.Option(help="Shipped model name, diffusers directory or cached hub id.")],
    data: Annotated[Path, typer.Option(help="ImageFolder (class subfolders) or a flat folder of images.")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names, or @FILE (one per line; default: the data's or model's).")] = None,
    templates: Annotated[list[str] | None, typer.Option("--template", help="Prompt template(s) or set name (text models).")] = None,
    strategy: Annotated[str, typer.Option(help="exhaustive | halving | ttest")] = "exhaustive",
    timesteps: Annotated[int, typer.Option(help="Timesteps per candidate (exhaustive). Default 20: 89.0 % at 200 U-Net calls/image (10 classes, shipped fmnist-classcond, docs/results.md).")] = 20,
    timestep_schedule: Annotated[str, typer.Option(help="even (official grid) | stratified")] = "even",
    stages: Annotated[str, typer.Option(help="Halving stages n_t:keep,... (last keep must be 1). Default: 0.5 points below exhaustive 20 t at 130 vs 200 calls/image (docs/results.md).")] = "10:3,20:1",
    min_scores: Annotated[int, typer.Option(help="t-test: scores before the first test.")] = 20,
    max_scores: Annotated[int, typer.Option(help="t-test: cap on scores per candidate.")] = 100,
    p_value: Annotated[float, typer.Option(help="t-test: drop a candidate below this p.")] = 2e-3,
    exit_z: Annotated[float, typer.Option(help="halving: stop an image after a stage when its leader beats the runner-up by this many standard errors (0 = off).")] = 0.0,
    loss: Annotated[str, typer.Option(help="l2 | l1 | huber")] = "l2",
    weighting: Annotated[str, typer.Option(help="uniform | clark | min_snr")] = "uniform",
    batch_size: Annotated[int, typer.Option(help="U-Net batch size (0 = auto-tune to memory and speed).")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast)")] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser (GPU: worth it).")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC activations.")] = False,
    scorer: Annotated[str, typer.Option(help="denoise | attention (Discffusion; text models)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter dir from `diffdisc attention tune`.")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory (resumable).")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat folder.")] = None,
    on_error: Annotated[str, typer.Option(help="fail | skip unreadable images.")] = "fail",
    limit: Annotated[int | None, typer.Option(help="Only N images: a seeded subset, stratified (classes taken in turn) when labels are known, else random; a larger N keeps a smaller N's images.")] = None,
    limit_seed: Annotated[int, typer.Option(help="Seed of the --limit subset (separate from the noise --seed).")] = 0,
    chunk: Annotated[int, typer.Option(help="Images scored together (fills U-Net batches).")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature for probabilities.")] = None,
    rank: Annotated[int, typer.Option(envvar="RANK", help="This process's shard (set by torchrun / accelerate launch).")] = 0,
    world_size: Annotated[int, typer.Option(envvar="WORLD_SIZE", help="Number of processes sharing the run.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Zero-shot classify images with a diffusion model (Li et al. / Clark & Jaini)."""
    names = _classes(classes)
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
        elif not _state.get("threads"):  # share the cores unless --threads said otherwise
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    bb = _load(model, device, lora)
    out = out or Path("runs") / f"classify-{bb.info.label.replace('/', '_')}-{strategy}"
    with classify_progress("classify", enabled=not (quiet or json_out)) as cb:
        result = run(bb, data, names, templates=templates or None, score=score, adaptive=adaptive, out=out,
                     labels_csv=labels, on_error=on_error, limit=limit, limit_seed=limit_seed, chunk_images=chunk,
                     temperature=temperature, progress=cb, rank=rank, world_size=world_size)  # fmt: skip
    if not (out / "metrics.json").is_file():
        typer.echo(f"shard {rank}/{world_size} done; other shards still running: run `diffdisc merge {out}` when all finish")
        return
    metrics = json.loads((out / "metrics.json").read_text())
    for image_id, why in getattr(result, "skipped", []):
        typer.echo(f"skipped {image_id}: {why}", err=True)
    for note in getattr(result, "notes", []):
        typer.echo(f"note: {note}", err=True)
    _print_metrics(metrics, out, json_out)


def _print_metrics(metrics: dict, out: Path, as_json: bool) -> None:
    """Accuracy, then calibrated ECE first: at the run's temperature, or cross-fitted when it has none (T = 1
    softmax of denoising errors is far from calibrated, so that figure comes last, labelled as such)."""
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"results in {out}")
    for c in ("metric", "value", "how"):
        t.add_column(c, justify="right" if c == "value" else "left")

    def row(label: str, key: str, how: str = "") -> None:
        if metrics.get(key) is not None:
            v = metrics[key]
            t.add_row(label, f"{v:.4f}" if isinstance(v, float) else str(v), how)

    for k in ("n_images", "accuracy", "top5", "mean_per_class_accuracy", "unet_calls_per_image"):
        row(k, k)
    cross = "T fitted on one half of these images, ECE on the other, and back"
    if "ece_uncalibrated" in metrics:  # no temperature: the headline `ece` is the cross-fitted one
        row("ece (cross-fitted T)", "ece", cross)
        row("ece (uncalibrated, T=1)", "ece_uncalibrated", "softmax(-score) as is")
    elif "ece" in metrics:
        row(f"ece (T={metrics['temperature']:.4g})", "ece", "the temperature below")
        row("ece (cross-fitted T)", "ece_temperature_scaled", cross)
    if "temperature" in metrics:
        t.add_row("temperature", f"{metrics['temperature']:.4g}", metrics.get("temperature_source", ""))
    Console().print(t)


@app.command(epilog="Example: diffdisc calibrate runs/val --apply-to runs/test  (fit T on a labelled run, use it on another)")
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="A labelled classify run to fit on.")],
    apply_to: Annotated[Path | None, typer.Option("--apply-to", help="Rewrite this run's metrics with the fitted T.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One line of JSON (default: indented).")] = False,
):
    """Fit softmax temperature (and Platt a, b on log U-Net calls) on a labelled run.

    A run with images scored without U-Net calls (contrastive models) gets the temperature only (Platt: null)."""
    from .results import ClassificationResult
    from .runs.io import atomic_write_text
    from .scoring.calibrate import fit_platt_calls, fit_temperature
    from .tasks.classify import finalize

    res = ClassificationResult.load(run_dir)
    lab = res.labels >= 0
    if lab.sum() < 2:
        raise DiffdiscError(f"{run_dir} has fewer than 2 labelled images; calibration needs labels")
    T = fit_temperature(res.scores[lab], res.labels[lab])
    platt, calls = None, res.calls[lab]
    if (calls > 0).all() and len(set(calls.tolist())) > 1:
        a, b = fit_platt_calls(calls, res.predictions[lab] == res.labels[lab])
        platt = {"a": a, "b": b}
    else:  # log(0), or one call count for every image (exhaustive): a fit would be meaningless, not (0, 0)
        why = "images scored without U-Net calls (a contrastive model?)" if not (calls > 0).all() else \
            "the same number of U-Net calls for every image (an exhaustive run)"
        typer.echo(f"note: {run_dir} has {why}: fitted the temperature only, no Platt scaling on log U-Net calls",
                   err=True)  # fmt: skip
    cal = {"temperature": T, "platt_log_calls": platt, "fitted_on": str(run_dir), "n": int(lab.sum())}
    atomic_write_text(Path(run_dir) / "calibration.json", json.dumps(cal, indent=2))
    if apply_to:
        cal["applied_metrics"] = finalize(Path(apply_to), ClassificationResult.load(apply_to), T)
    typer.echo(json.dumps(cal, indent=None if json_out else 2))


@app.command(epilog="Example: diffdisc merge runs/x  (after `torchrun ... classify --out runs/x` shards finish)")
def merge(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by one or more processes.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON only.")] = False,
):
    """Merge shards of a (multi-process) run into results.jsonl, predictions.jsonl and metrics.json."""
    from .results import ClassificationResult
    from .tasks.classify import finalize

    res = ClassificationResult.load(run_dir)
    _print_metrics(finalize(run_dir, res, res.settings.get("temperature")), run_dir, json_out)


from .world.recipes import RECIPES, cpu_settings_text  # noqa: E402 (light: the help of `train` lists them)


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
                                                  "(default: RECIPE-DATAFOLDER, or RECIPE).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Time a few steps here and print steps, batch and the "
                                                            "estimated time; trains and writes nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or log lines.")] = False,
):
    """Train a shipped-model recipe (resumable: checkpoints every N steps, EMA weights exported to OUT/model)."""
    _quiet_libraries()
    from .world.train import estimate, resolve_config
    from .world.train import train as run

    log = (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))
    if out is None and not dry_run:
        raise DiffdiscError("train needs --out DIR (or --dry-run to time the recipe without training)")
    cfg = resolve_config(recipe, out, log=log, steps=steps, data=str(data) if data else None, batch_size=batch_size,
                         seed=seed, init_from=str(Path(init_from).resolve()) if init_from and "/" in init_from else init_from,
                         colour_correlation=colour_correlation, lr=lr, name=name)  # fmt: skip
    if dry_run:
        r = estimate(cfg, out, max_minutes=max_minutes)
        doc = r["cpu_setting"]
        lines = [f"{r['name']} ({r['recipe']}): {r['steps']} steps ({r['done']} done), batch {r['batch_size']}, "
                 f"{r['images']} images, {r['params']:,} params, {r['device']}",
                 r["resize"], f"data loaded in {r['data_s']} s; {r['timed_steps']} steps timed", r["plan"],
                 doc and (f"documented CPU setting: --steps {doc['steps']} --batch-size {doc['batch_size']}, "
                          f"{'-'.join(f'{x:g}' for x in dict.fromkeys(doc['s_per_step']))} s/step on 2 cores"),
                 "dry run: nothing trained or written"]  # fmt: skip
        typer.echo("\n".join(line for line in lines if line))
        return
    model_dir = run(cfg, out, max_minutes=max_minutes, log=log, quiet=quiet)
    typer.echo(f"model exported to {model_dir}")


@app.command(epilog="Example: diffdisc demo --per-class 3 --out runs/demo  (then: diffdisc report runs/demo)")
def demo(
    out: Annotated[Path, typer.Option(help="Where results and index.html go.")] = Path("runs/demo"),
    per_class: Annotated[int, typer.Option(help="Shipped test images per class.")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON rows only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Zero-shot classify shipped real Fashion-MNIST test images with the shipped model; table + HTML page."""
    _quiet_libraries()
    from rich.console import Console
    from rich.table import Table

    from .demo import run_demo
    from .progress import classify_progress

    r = run_demo(out, per_class, progress_factory=lambda name: classify_progress(name, enabled=not (quiet or json_out)),
                 echo=lambda m: typer.echo(m, err=True))  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"rows": [dict(zip(r["header"], row, strict=True)) for row in r["rows"]], "page": r["page"],
                               "banner": r["banner"]}))  # fmt: skip
        return
    t = Table(title="diffdisc demo: zero-shot Fashion-MNIST (halving 10:3,20:1; t-test min 10 max 20 p 0.02)")
    for h in r["header"]:
        t.add_column(h)
    for row in r["rows"]:
        t.add_row(*row)
    Console().print(t)
    if r["banner"]:
        Console().print(f"[bold red]{r['banner']}[/]")
    typer.echo(f"report: {r['page']}")


@app.command(epilog="Examples: diffdisc report runs/x --out report.html\n\n"
                    "diffdisc report runs/halving runs/ttest runs/probes --out compare.html  (runs side by side)")
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories (classify, probe, features sweep, heat maps, synth).")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="Page title.")] = "diffdisc report",
    json_out: Annotated[bool, typer.Option("--json", help="Print what was found as JSON.")] = False,
):
    """One self-contained HTML page (figures inline, no network) for one or more runs, side by side."""
    from .report.load import load_runs

    runs = load_runs(run_dirs)  # a mistyped path fails here, before the heavy imports
    from .report.html import write_runs

    path = write_runs(runs, out, title=title)
    if json_out:
        typer.echo(json.dumps({"out": str(path), "runs": [
            {"name": r.name, "path": str(r.path), "classification": r.classification is not None,
             "probes": len(r.matchings), "sweeps": len(r.sweeps), "overlays": len(r.overlays), "synth": len(r.synth),
             "problems": r.problems} for r in runs]}))  # fmt: skip
        return
    for r in runs:
        for p in r.problems:
            typer.echo(f"{r.name}: {p}", err=True)
    typer.echo(f"wrote {path}")


def _fmt(m: dict) -> str:
    return f"{m['mean']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"


@app.command(epilog="Example: diffdisc match --model fmnist-scenes-text --groups groups.jsonl --out runs/match")
def match(
    model: Annotated[str, typer.Option(help="Shipped name or model directory (diffusion or open_clip).")],
    groups: Annotated[Path, typer.Option(help="groups.jsonl / .csv (images + captions), or a Winoground dir.")],
    out: Annotated[Path, typer.Option(help="Run directory (resumable).")] = Path("runs/match"),
    timesteps: Annotated[int, typer.Option(help="Evenly spaced timesteps per pair.")] = 20,
    batch_size: Annotated[int, typer.Option(help="U-Net batch size (0 = auto-tune to memory and speed).")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16")] = "fp32",
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    scorer: Annotated[str, typer.Option(help="denoise | attention (Discffusion)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter dir from `diffdisc attention tune`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Score every (image, caption) pair of each group: Winoground text/image/group scores, R@1/R@5."""
    _quiet_libraries()
    from .data.groups import load_groups
    from .progress import classify_progress
    from .scoring.config import ScoreConfig
    from .tasks.match import MatchConfig
    from .tasks.match import match as run

    gs = load_groups(groups)
    bb = _load(model, device, lora)
    score = ScoreConfig(batch_size=batch_size, dtype=dtype, seed=seed, scorer=scorer)
    with classify_progress("match", enabled=not (as_json or quiet)) as cb:
        run(bb, gs, MatchConfig(n_timesteps=timesteps), score=score, out=out, progress=cb)
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
    names: Annotated[list[str] | None, typer.Argument(help="binding | spatial | object | colour | cue-conflict "
                                                     "(default: all)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Model(s) to compare; repeat the option.")] = None,
    n: Annotated[int, typer.Option(help="Groups per probe.")] = 200,
    seed: Annotated[int, typer.Option(help="Probe generation seed.")] = 0,
    timesteps: Annotated[int, typer.Option(help="Timesteps per pair (diffusion).")] = 20,
    out: Annotated[Path, typer.Option(help="Where runs go (resumable).")] = Path("runs/probes"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    scorer: Annotated[str, typer.Option(help="denoise | attention (diffusion models)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter for the diffusion model(s).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Compositional probes (attribute binding, spatial relation, object/colour-swap controls) and shape bias on
    cue-conflict items (shape of one class, class colour of another), diffusion vs contrastive, with chance
    levels and bootstrap 95% intervals."""
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
                      progress_factory=None if (as_json or quiet) else (lambda d: classify_progress(d)))  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"probes (n={n}, seed={seed}; chance: text 25%, image 25%, group 16.7%; "
                    "cue-conflict: text score = shape bias, chance 50%)")
    for h in ("probe", "model", "kind", "text score", "image score", "group score", "calls/group"):
        t.add_column(h)
    for r in rows:
        image, group = (_fmt(r[k]) if k in r else "-" for k in ("image", "group"))
        t.add_row(r["probe"], r["model"], r["kind"], _fmt(r["text"]), image, group,
                  f"{r['calls_per_group']:.0f}")  # fmt: skip
    Console().print(t)


attention_app = _Typer(help="Discffusion cross-attention scoring: few-shot LoRA tuning and heat maps.",
                       no_args_is_help=True)
app.add_typer(attention_app, name="attention")


@attention_app.command("tune", epilog="Example: diffdisc attention tune --model fmnist-scenes-text --shots 32 "
                                      "--probe binding --probe spatial --out runs/lora-32")
def attention_tune(
    out: Annotated[Path, typer.Option(help="Adapter directory to write (safetensors + adapter_config.json).")],
    model: Annotated[str, typer.Option(help="Text-conditional diffusion model.")] = "fmnist-scenes-text",
    shots: Annotated[int, typer.Option(help="Training groups (K).")] = 32,
    probe: Annotated[list[str] | None, typer.Option(help="Embedded probes to draw training groups from (Fashion-MNIST train items; evaluation uses test items).")] = None,
    groups: Annotated[Path | None, typer.Option(help="Or: your groups.jsonl / Winoground dir.")] = None,
    seed: Annotated[int, typer.Option(help="Training seed; embedded training groups use seed 1000+seed.")] = 0,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 4,
    margin: Annotated[float, typer.Option(help="Hinge margin.")] = 0.1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    epochs: Annotated[int, typer.Option(help="Passes over the K groups.")] = 1,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="Attention score only (no denoising bias).")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print {adapter, shots} as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-step loss lines.")] = False,
):
    """Few-shot prompt learning: LoRA on the U-Net's attention, hinge loss on matching vs other captions."""
    _quiet_libraries()
    from .progress import console
    from .tasks.attention import LoraConfig, tune, tuning_groups

    if shots < 1:
        raise DiffdiscError("--shots must be >= 1 (K = 0 is the untuned model)")
    if groups:
        from .data.groups import load_groups

        train = load_groups(groups)[:shots]
    else:
        train = tuning_groups(probe or ["binding", "spatial"], shots, seed)
    bb = _load(model, device)
    show = not (quiet or json_out)
    cfg = LoraConfig(rank=rank, margin=margin, lr=lr, epochs=epochs, bias=not no_bias, seed=seed)
    path = tune(bb, train, out, config=cfg,
                progress=lambda s, n, loss: console.print(f"step {s}/{n} loss {loss:.4f}") if show and (s % 8 == 0 or s == n) else None)  # fmt: skip
    typer.echo(json.dumps({"adapter": str(path), "shots": len(train)}) if json_out else f"adapter saved to {path}")


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
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes, or @FILE (one per line; default: the model's).")] = None,
    captions: Annotated[str | None, typer.Option(help="Semicolon-separated captions (text models).")] = None,
    per_row: Annotated[int, typer.Option(help="Samples per class / caption.")] = 8,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 3.0,
    scheduler: Annotated[str, typer.Option(help="ddim | dpm | euler | ddpm")] = "ddim",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
):
    """Draw a labelled grid of samples, to see what a diffusion model has learned before using it as a classifier."""
    keys = [c.strip() for c in captions.split(";")] if captions else _classes(classes)
    _quiet_libraries()
    from .tasks.sample import sample_grid

    bb = _load(model, device)
    if getattr(bb, "is_contrastive", False):
        raise DiffdiscError(f"{model} is a contrastive model: it cannot generate images")
    typer.echo(f"wrote {sample_grid(bb, keys, per_row, guidance=guidance, steps=steps, scheduler=scheduler, seed=seed, out=out)}")


synth_app = _Typer(help="Synthetic training sets from class names (diversity tricks) and timm classifiers.",
                   no_args_is_help=True)
app.add_typer(synth_app, name="synth")


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
    scheduler: Annotated[str, typer.Option(help="ddim | dpm | euler | ddpm")] = "ddim",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed (every image's prompt, guidance and noise derive from it).")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print {out, images, classes} as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
):
    """Generate a labelled training set from class names with classifier-free guidance and diversity tricks."""
    _quiet_libraries()
    from .progress import step_progress
    from .tasks.synth import SynthConfig, generate

    try:
        lo, hi = (float(v) for v in guidance_range.split(","))
    except ValueError:
        raise DiffdiscError(f"bad --guidance-range {guidance_range!r}: expected LO,HI") from None
    cfg = SynthConfig(per_class=per_class, tricks=tuple(t for t in tricks.split(",") if t), guidance=guidance,
                      guidance_range=(lo, hi), steps=steps, scheduler=scheduler, seed=seed, batch_size=batch_size)  # fmt: skip
    names = _classes(classes)
    bb = _load(model, device)
    names = names or list(bb.info.class_names)
    with step_progress("synth generate", enabled=not (quiet or json_out)) as cb:
        path = generate(bb, names, out, cfg, progress=cb)
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
    val_fraction: Annotated[float, typer.Option(help="Fraction of each synthetic class held out for model selection.")] = 0.1,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (checkpointed mid-epoch) after this many minutes; rerun to continue.")] = None,
    test: Annotated[Path | None, typer.Option(help="Real labelled ImageFolder to evaluate the best model on (recorded for `diffdisc report`).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print {model_dir, test} as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch lines.")] = False,
):
    """Train a timm classifier from scratch; model selection on a held-out part of the synthetic set only."""
    from .tasks.baseline import ClassifierConfig

    cfg = ClassifierConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, mixed_precision=mixed_precision, seed=seed,
                           val_fraction=val_fraction)  # fmt: skip
    _train_classifier("synth train", data, out, cfg, max_minutes, test, json_out, quiet, synthetic=True)


def _train_classifier(what: str, data: Path, out: Path, cfg, max_minutes: float | None, test: Path | None, json_out: bool,
                      quiet: bool, synthetic: bool) -> None:  # fmt: skip
    """`synth train` and `baseline train`: one trainer; the best model is scored once on --test, and recorded."""
    _quiet_libraries()
    from .progress import step_progress
    from .tasks.baseline import evaluate_classifier, train_classifier

    log = (lambda m: None) if (quiet or json_out) else (lambda m: typer.echo(m, err=True))
    with step_progress(what, enabled=not (quiet or json_out)) as cb:
        path = train_classifier(data, out, cfg, log=log, progress=cb, max_minutes=max_minutes, synthetic=synthetic)
    m = evaluate_classifier(path, test, record=True) if test else None
    if json_out:
        typer.echo(json.dumps({"model_dir": str(path), "test": m}))
    elif m:
        typer.echo(f"{'real ' if synthetic else ''}test accuracy {m['accuracy']:.1%} (top-5 {m['top5']:.1%}, mean per class "
                   f"{m['mean_per_class_accuracy']:.1%}) on {m['n_images']} images")  # fmt: skip


baseline_app = _Typer(help="Supervised baseline: train any timm classifier on an ImageFolder, evaluate it on others; "
                           "`diffdisc report` shows it beside the diffusion runs.", no_args_is_help=True)  # fmt: skip
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("train", epilog="Example: diffdisc baseline train --data train/ --model resnet18 --out runs/cnn "
                                      "--test test/ --max-minutes 10  (then: diffdisc report runs/cnn runs/x)")
def baseline_train(
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder to train on (the validation split is carved from it).")],
    out: Annotated[Path, typer.Option(help="Output dir (checkpoints/, model.safetensors, classifier.json); rerun to resume.")],
    model: Annotated[str, typer.Option(help="Any timm model name, trained from scratch.")] = "resnet18",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine schedule).")] = 2e-3,
    image_size: Annotated[int, typer.Option(help="Images are resized (bicubic, shorter side) and centre-cropped to this size, 3 channels.")] = 32,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each class held out for model selection.")] = 0.1,
    mixed_precision: Annotated[str, typer.Option(help="no | bf16 | fp16 (accelerate)")] = "no",
    seed: Annotated[int, typer.Option(help="Seed (initialisation, split, batches, augmentation).")] = 0,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (checkpointed mid-epoch) after this many minutes; rerun to continue.")] = None,
    test: Annotated[Path | None, typer.Option(help="Labelled ImageFolder to score the best model on, once (recorded for `diffdisc report`).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print {model_dir, test} as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or per-epoch lines.")] = False,
):
    """Train a timm classifier from scratch on your ImageFolder: would a plain CNN beat the diffusion classifier?"""
    from .tasks.baseline import ClassifierConfig

    cfg = ClassifierConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                           val_fraction=val_fraction, mixed_precision=mixed_precision, seed=seed)  # fmt: skip
    _train_classifier("baseline train", data, out, cfg, max_minutes, test, json_out, quiet, synthetic=False)


@baseline_app.command("eval", epilog="Example: diffdisc baseline eval runs/cnn --data test/  (adds to runs/cnn/evaluations.json)")
def baseline_eval(
    model_dir: Annotated[Path, typer.Argument(help="Output dir of `diffdisc baseline train` (or `synth train`).")],
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder with the training classes (aligned by name).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the result line.")] = False,
):
    """Score a trained classifier on a labelled folder; recorded in MODEL_DIR/evaluations.json for `diffdisc report`."""
    from .tasks.baseline import EVALUATIONS_JSON, evaluate_classifier

    m = evaluate_classifier(model_dir, data, record=True)
    if json_out:
        typer.echo(json.dumps(m))
        return
    typer.echo(f"{m['model']} on {data}: accuracy {m['accuracy']:.1%} (top-5 {m['top5']:.1%}, mean per class "
               f"{m['mean_per_class_accuracy']:.1%}) on {m['n_images']} images")  # fmt: skip
    if not quiet:
        typer.echo(f"recorded in {model_dir / EVALUATIONS_JSON}", err=True)


# ---------------------------------------------------------------------- features (issue 6)
features_app = _Typer(help="Diffusion features (Mukhopadhyay et al.): U-Net activations at (block, t) + light heads.",
                      no_args_is_help=True)
app.add_typer(features_app, name="features")
_FEATURE_CACHE = Path("runs/features-cache")


def _feature_data(data: Path, test_data: Path | None, labels: Path | None, max_train: int | None = None, seed: int = 0):
    from .data.labelled import LabelledImages

    train = LabelledImages.from_folder(data, labels_csv=labels, max_images=max_train, seed=seed)
    test = LabelledImages.from_folder(test_data, class_names=train.class_names) if test_data else None
    return train, test


def _head_config(head: str, optimizer: str, weight_decays: str | None, seed: int):
    from .features.heads import HeadConfig

    try:
        wds = tuple(float(v) for v in weight_decays.split(",")) if weight_decays else None
    except ValueError:
        raise DiffdiscError(f"bad --weight-decays {weight_decays!r}: comma-separated numbers") from None
    return HeadConfig(kind=head, optimizer=optimizer, weight_decays=wds, seed=seed)


_MAX_TRAIN_HELP = ("Use only N training images: a seeded subset (--seed) with the classes as even as they allow, "
                   "chosen before decoding.")  # fmt: skip


def _timesteps(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise DiffdiscError(f"bad --timesteps {s!r}: comma-separated integers") from None


@features_app.command("blocks", epilog="Example: diffdisc features blocks --model fmnist-classcond --detail")
def features_blocks(
    model: Annotated[str, typer.Option(help="Diffusion model (shipped name or directory).")],
    detail: Annotated[bool, typer.Option("--detail", help="Also list each block's resnets and attentions.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print [{name, module, shape}] as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the list (no warnings).")] = False,
):
    """List the tappable blocks (stable names for --blocks) with their output shape [C, H, W]."""
    _quiet_libraries()
    from .features.taps import describe_blocks

    found = describe_blocks(_load(model, device), detail)
    if json_out:
        typer.echo(json.dumps([{"name": b.name, "module": b.module, "shape": list(b.shape)} for b in found]))
        return
    for b in found:
        typer.echo(f"{b.name:18s} {b.module:24s} {'x'.join(map(str, b.shape))}")


@features_app.command("extract", epilog="Example: diffdisc features extract --model fmnist-classcond --data imgs/ "
                                        "--blocks mid,up.0 --timesteps 50,150 --pooling gap,avg2")
def features_extract(
    model: Annotated[str, typer.Option(help="Diffusion model (shipped name or directory).")],
    data: Annotated[Path, typer.Option(help="ImageFolder or flat folder of images.")],
    blocks: Annotated[str | None, typer.Option(help="Comma-separated block names (default: all top-level blocks).")] = None,
    timesteps: Annotated[str, typer.Option(help="Comma-separated timesteps.")] = "50,150,300",
    pooling: Annotated[str, typer.Option(help="Comma-separated: gap | avgK (avg2, avg4) | flat.")] = "gap",
    condition: Annotated[str, typer.Option(help="null | class:NAME | caption:TEXT (same for every image).")] = "null",
    seed: Annotated[int, typer.Option(help="Noise seed (ε per image and t).")] = 0,
    batch_size: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast)")] = "fp32",
    cache: Annotated[Path, typer.Option(help="Feature cache directory.")] = _FEATURE_CACHE,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the counts as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; only the summary line.")] = False,
):
    """Fill the feature cache (one U-Net forward per image per timestep, all blocks and poolings at once)."""
    _quiet_libraries()
    from .data.labelled import LabelledImages
    from .features.cache import cached_features
    from .features.taps import ExtractStats, block_modules, denoiser
    from .progress import step_progress

    bb = _load(model, device)
    names = _split(blocks) or list(block_modules(denoiser(bb)))
    imgs = LabelledImages.from_folder(data)
    x = imgs.tensors(bb.info.image_size, bb.info.image_channels)
    stats = ExtractStats()
    with step_progress("features", enabled=not (quiet or json_out)) as cb:
        cached_features(bb, x, imgs.keys, names, _timesteps(timesteps), tuple(_split(pooling)), cache=cache, condition=condition,
                        seed=seed, batch_size=batch_size, dtype=dtype, stats=stats, progress=cb, load=False)  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"images": len(imgs), "blocks": names, "timesteps": _timesteps(timesteps), "poolings": _split(pooling),
                               "unet_forwards": stats.forwards, "cache_shards_reused": stats.cache_hits,
                               "stale_cells_recomputed": stats.stale, "cache": str(cache)}))  # fmt: skip
        return
    typer.echo(f"{len(imgs)} images x {len(names)} blocks x {len(_timesteps(timesteps))} t: {stats.forwards} U-Net forwards, "
               f"{stats.cache_hits} cached shard(s) reused, {stats.stale} stale cell(s) recomputed; cache {cache}")  # fmt: skip


@features_app.command("sweep", epilog="Example: diffdisc features sweep --model fmnist-classcond --data train/ "
                                      "--test-data test/ --blocks down.2,mid,up.0 --timesteps 25,100,250 --out runs/feat")
def features_sweep(
    model: Annotated[str, typer.Option(help="Diffusion model (shipped name or directory).")],
    data: Annotated[Path, typer.Option(help="Labelled training ImageFolder (the validation split is carved from it).")],
    out: Annotated[Path, typer.Option(help="Writes features_sweep.json, features_sweep.png, details and the best head.")],
    test_data: Annotated[Path | None, typer.Option(help="Labelled test ImageFolder: scored once, at the chosen cell.")] = None,
    blocks: Annotated[str | None, typer.Option(help="Comma-separated block names (default: all top-level blocks).")] = None,
    timesteps: Annotated[str, typer.Option(help="Comma-separated timesteps.")] = "50,150,300",
    pooling: Annotated[str, typer.Option(help="gap | avgK (avg2, avg4) | flat")] = "gap",
    head: Annotated[str, typer.Option(help="linear | attention (needs avgK/flat pooling)")] = "linear",
    optimizer: Annotated[str, typer.Option(help="Linear head: lbfgs (full batch) | adamw.")] = "lbfgs",
    weight_decays: Annotated[str | None, typer.Option(help="Comma-separated decay grid (chosen on validation).")] = None,
    condition: Annotated[str, typer.Option(help="null | class:NAME | caption:TEXT (same for every image).")] = "null",
    val_fraction: Annotated[float, typer.Option(help="Fraction of each training class held out for validation.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Noise, split and head seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast)")] = "fp32",
    cache: Annotated[Path, typer.Option(help="Feature cache directory.")] = _FEATURE_CACHE,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat training folder.")] = None,
    max_train: Annotated[int | None, typer.Option(min=1, help=_MAX_TRAIN_HELP)] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print features_sweep.json only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table: only the best-cell line.")] = False,
):
    """Validation accuracy over blocks x timesteps, heat map, best cell chosen on validation, test scored once."""
    _quiet_libraries()
    from .features.taps import block_modules, denoiser
    from .progress import step_progress
    from .tasks.features import FeatureConfig, sweep

    bb = _load(model, device)
    train, test = _feature_data(data, test_data, labels, max_train, seed)
    names = _split(blocks) or list(block_modules(denoiser(bb)))
    fcfg = FeatureConfig(pooling=pooling, condition=condition, seed=seed, batch_size=batch_size, dtype=dtype, val_fraction=val_fraction)
    r = sweep(bb, train, test, names, _timesteps(timesteps), features=fcfg, head=_head_config(head, optimizer, weight_decays, seed),
              cache=cache, out=out, progress_factory=None if (quiet or as_json) else (lambda d: step_progress(d)))  # fmt: skip
    test_s = f"; test {r.test_acc:.2%} on {r.n_test} images" if r.test_acc is not None else ""
    best = f"best {r.best['block']} @ t={r.best['t']}: val {r.best['val_acc']:.2%}{test_s}"
    if as_json or quiet:
        typer.echo(json.dumps(r.to_json(), indent=2) if as_json else best)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"validation accuracy, {r.head} head on {r.pooling} features ({r.n_train} train / {r.n_val} val)")
    t.add_column("block")
    for ts in r.timesteps:
        t.add_column(f"t={ts}", justify="right")
    for b, row in zip(r.blocks, r.val_acc, strict=True):
        t.add_row(b, *[f"{v:.1%}" for v in row])
    Console().print(t)
    typer.echo(best)
    typer.echo(f"wrote {out / 'features_sweep.json'} and {out / 'features_sweep.png'}")


@features_app.command("probe", epilog="Example: diffdisc features probe --model fmnist-classcond --data train/ --test-data test/ "
                                      "--cells mid@100,up.0@100 --pooling avg4 --head attention")
def features_probe(
    model: Annotated[str, typer.Option(help="Diffusion model (shipped name or directory).")],
    data: Annotated[Path, typer.Option(help="Labelled training ImageFolder (the validation split is carved from it).")],
    cells: Annotated[str, typer.Option(help="BLOCK@T[,BLOCK@T...]: several cells are fused by concatenation.")],
    test_data: Annotated[Path | None, typer.Option(help="Labelled test ImageFolder.")] = None,
    pooling: Annotated[str, typer.Option(help="gap | avgK (avg2, avg4) | flat")] = "gap",
    head: Annotated[str, typer.Option(help="linear | attention (needs avgK/flat pooling)")] = "linear",
    optimizer: Annotated[str, typer.Option(help="Linear head: lbfgs | adamw.")] = "lbfgs",
    weight_decays: Annotated[str | None, typer.Option(help="Comma-separated decay grid (chosen on validation).")] = None,
    condition: Annotated[str, typer.Option(help="null | class:NAME | caption:TEXT")] = "null",
    val_fraction: Annotated[float, typer.Option(help="Fraction of each training class held out for validation.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Noise, split and head seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="U-Net batch size.")] = 64,
    cache: Annotated[Path, typer.Option(help="Feature cache directory.")] = _FEATURE_CACHE,
    save: Annotated[Path | None, typer.Option(help="Save the trained head here (safetensors + head.json).")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat training folder.")] = None,
    max_train: Annotated[int | None, typer.Option(min=1, help=_MAX_TRAIN_HELP)] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar: only the result line.")] = False,
):
    """Train one head on fixed cell(s) (fusion when several); validation and test accuracy."""
    _quiet_libraries()
    from .progress import step_progress
    from .tasks.features import FeatureConfig, parse_cells, probe

    bb = _load(model, device)
    train, test = _feature_data(data, test_data, labels, max_train, seed)
    fcfg = FeatureConfig(pooling=pooling, condition=condition, seed=seed, batch_size=batch_size, val_fraction=val_fraction)
    r, fitted = probe(bb, train, test, parse_cells(cells), features=fcfg, head=_head_config(head, optimizer, weight_decays, seed),
                      cache=cache, progress_factory=None if (quiet or as_json) else (lambda d: step_progress(d)))  # fmt: skip
    if save:
        fitted.save_pretrained(save)
        if not (quiet or as_json):
            typer.echo(f"saved the head to {save}", err=True)
    if as_json:
        typer.echo(json.dumps(r.to_dict(), indent=2))
        return
    test_s = f", test {r.test_acc:.2%} on {r.n_test} images" if r.test_acc is not None else ""
    typer.echo(f"{r.representation}: val {r.val_acc:.2%}{test_s} ({r.dims} dims, weight decay {r.weight_decay:g}; "
               f"{r.n_train} train / {r.n_val} val)")  # fmt: skip


@app.command(epilog="Example: diffdisc doctor --json  (exit 1 when something is missing or a shipped model fails)")
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON only.")] = False):
    """Check the installation: library versions, device, Fashion-MNIST files, shipped models loading."""
    _quiet_libraries()
    import importlib.metadata as md

    import torch

    from .backbones.registry import create_backbone, list_backbones
    from .world.fashion_mnist import DEFAULT_DIR, FILES, INSTALL_HINT

    checks = []  # (name, what was found, ok)
    for pkg in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "open_clip_torch", "safetensors",
                "torchmetrics", "peft", "timm"):  # fmt: skip
        try:
            checks.append((pkg, md.version(pkg), True))
        except md.PackageNotFoundError:
            checks.append((pkg, "MISSING", False))
    dev = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    checks.append(("device", dev, True))
    missing = [f for fs in FILES.values() for f in fs if not (DEFAULT_DIR / f).is_file()]
    checks.append(("fashion-mnist", f"{DEFAULT_DIR}" if not missing else
                   f"not found ({INSTALL_HINT}); the shipped 1,000 test images still work", True))  # fmt: skip
    for name in list_backbones():
        try:
            bb = create_backbone(name)
            checks.append((name, f"loads ({bb.info.family}, {bb.info.metadata.get('steps', '?')} steps)", True))
        except DiffdiscError as e:
            checks.append((name, f"FAILS: {e}", False))
    ok = all(c[2] for c in checks)
    if json_out:
        typer.echo(json.dumps({"ok": ok, "checks": [{"name": n, "value": v, "ok": k} for n, v, k in checks]}))
    else:
        for n, v, _ in checks:
            typer.echo(f"{n:16s} {v}")
    if not ok:
        raise typer.Exit(1)


@app.command(epilog="Example: diffdisc models --json")
def models(json_out: Annotated[bool, typer.Option("--json", help="Print name, recipe and steps as JSON.")] = False):
    """List the shipped models."""
    from .backbones.base import read_metadata
    from .backbones.registry import list_backbones, shipped_models_dir

    names = list_backbones()
    rows = []
    for n in names:
        meta = read_metadata(shipped_models_dir() / n)
        rows.append({"name": n, "recipe": meta.get("recipe", ""), "steps": meta.get("steps")})
    if json_out:
        typer.echo(json.dumps(rows))
        return
    if not names:
        typer.echo("no shipped models installed")
    for r in rows:
        typer.echo(f"{r['name']}\t{r['recipe']}\tsteps={r['steps'] if r['steps'] is not None else '?'}")


def main() -> None:
    """Exit codes: 0 ok, 1 user error or a failed `doctor` check, 2 usage (click), 130 interrupted."""
    try:
        # Under standalone_mode=False, typer.Exit (doctor's failed check) comes back as the return value.
        code = app(standalone_mode=False)
    except DiffdiscError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, _Interrupted):
        typer.echo("interrupted: finished images are saved; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:  # click's usage errors and Abort
        # Matched by shape, not class: typer >= 0.29 raises its own vendored copies of click's exceptions.
        code = getattr(e, "exit_code", None)
        if isinstance(code, int) and callable(getattr(e, "show", None)):
            e.show()  # usage error: message (and usage line) to stderr, exit 2
            sys.exit(code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
