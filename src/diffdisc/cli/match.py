"""`diffdisc match` and `diffdisc probe`: image-caption matching (Winoground scores, recall) and the embedded
compositional / cue-conflict probes, diffusion vs contrastive."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import app, state
from .options import (
    Device,
    LoadOptions,
    Lora,
    NoiseSeed,
    UnetBatchSize,
    json_flag,
    load,
    quiet_flag,
    timesteps_option,
)


def _fmt(m: dict) -> str:
    return f"{m['mean']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"


@app.command(epilog="Example: diffdisc match --model fmnist-scenes-text --groups groups.jsonl --out runs/match\n\n"
                     "diffdisc match --model MODEL_DIR --dataset winoground --root ~/data/winoground --out runs/wino")
def match(
    model: Annotated[str, typer.Option(help="Shipped name or model directory (diffusion or open_clip).")],
    groups: Annotated[Path | None, typer.Option(help="groups.jsonl / .csv (images + captions), or a Winoground dir (or --dataset).")] = None,
    dataset: Annotated[str | None, typer.Option(help="A matching benchmark by name at --root: winoground (as Hugging Face ships it) | sugar_crepe/<task> (add_att, swap_obj, ...; as clip_benchmark reads it) | aro/<task> (vg_relation, vg_attribution, coco_order, flickr30k_order) | eqben, eqben/<subset> | clevr/<task> (pair_binding_color, ...); also writes clip_benchmark's result JSON.")] = None,
    root: Annotated[Path | None, typer.Option(help="--dataset: the folder holding it (nothing is downloaded).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory (resumable).")] = Path("runs/match"),
    timesteps: timesteps_option("Timesteps per pair:", count_only=True) = 20,
    batch_size: UnetBatchSize = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16")] = "fp32",
    seed: NoiseSeed = 0,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    scorer: Annotated[str, typer.Option(help="denoise | attention (Discffusion)")] = "denoise",
    lora: Lora = None,
    json_out: json_flag("Print metrics as JSON.") = False,
    quiet: quiet_flag("No progress bar.") = False,
):
    """Score every (image, caption) pair of each group: Winoground text/image/group scores (per tag too), R@1/R@5."""
    from ..progress import classify_progress
    from ..runtime import launch_rank, process_device
    from ..scoring.config import ScoreConfig
    from ..scoring.schedule import timestep_count
    from ..tasks.match import MatchConfig
    from ..tasks.match import match as run

    n_timesteps = timestep_count(timesteps, "match")
    gs, bench = _groups(groups, dataset, root)
    rank, world_size = launch_rank()  # torchrun / accelerate launch: this process scores its share of the groups
    bb = load(model, process_device(rank, world_size, device, state["threads"]), lora, **loading.kwargs())
    score = ScoreConfig(batch_size=batch_size, dtype=dtype, seed=seed, scorer=scorer)
    with classify_progress("match", enabled=not (json_out or quiet)) as cb:
        res = run(bb, gs, MatchConfig(n_timesteps=n_timesteps), score=score, out=out, progress=cb, benchmark=bench,
                  rank=rank, world_size=world_size)  # fmt: skip
    m = res.stored_metrics  # what metrics.json holds
    if m is None:
        typer.echo(f"shard {rank}/{world_size} done; the last process to finish writes {out / 'metrics.json'}")
        return
    cb_file = None
    if bench is not None:  # a diffusion row beside CLIP rows in one clip_benchmark table
        from ..results.clip_benchmark import write_clip_benchmark_json

        calls = res.calls
        cb_file = write_clip_benchmark_json(out, bench["name"], bb.info.label, m, task="image_caption_selection",
                                            extra={"unet_calls_per_group": sum(calls) / len(calls), "n_groups": m["n_groups"]})  # fmt: skip
    if json_out:
        typer.echo(json.dumps(m, indent=2))
        return
    for k, v in m.items():
        if isinstance(v, dict) and "mean" in v:
            typer.echo(f"{k:10s} {_fmt(v)}")
    for tag, t in m.get("by_tag", {}).items():
        scores = "  ".join(f"{k} {_fmt(t[k])}" for k in ("text", "image", "group") if k in t)
        typer.echo(f"{tag:10s} n={t['n_groups']:<5d} {scores}")
    if cb_file is not None:
        typer.echo(f"clip_benchmark: {cb_file}")
    typer.echo(f"results: {out}")


def _groups(groups: Path | None, dataset: str | None, root: Path | None):
    """--groups or --dataset (with --root) -> (groups, the benchmark the run's settings record: None for --groups)."""
    from ..data.groups import load_groups
    from ..data.winoground import MATCH_BENCHMARKS, open_match_benchmark

    if (groups is None) == (dataset is None):
        raise DiffdiscError("give exactly one of --groups (a groups file or folder) and --dataset (a benchmark by name, with --root)")
    if groups is not None:
        if root is not None:
            raise DiffdiscError("--root goes with --dataset (the folder holding the benchmark); --groups is a path itself")
        return load_groups(groups), None
    name = dataset.strip().lower()
    if name not in MATCH_BENCHMARKS:
        raise DiffdiscError(f"unknown matching benchmark {dataset!r}; known: {', '.join(MATCH_BENCHMARKS)}")
    if root is None:
        raise DiffdiscError(f"--dataset {dataset} needs --root, the folder that holds it (nothing is downloaded)")
    gs = open_match_benchmark(name, root)  # a missing root or a wrong layout: the reader says what goes there
    return gs, {"name": name, "root": str(root.expanduser().resolve())}


@app.command(epilog="Example: diffdisc probe binding spatial --model fmnist-scenes-text --model fmnist-scenes-clip")
def probe(
    names: Annotated[list[str] | None, typer.Argument(help="binding | spatial | object | colour | cue-conflict "
                                                     "(default: all)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Model(s) to compare; repeat the option.")] = None,
    n: Annotated[int, typer.Option(help="Groups per probe.")] = 200,
    seed: Annotated[int, typer.Option(help="Probe generation seed.")] = 0,
    timesteps: timesteps_option("Timesteps per pair (diffusion):", count_only=True) = 20,
    out: Annotated[Path, typer.Option(help="Where runs go (resumable).")] = Path("runs/probes"),
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    scorer: Annotated[str, typer.Option(help="denoise | attention (diffusion models)")] = "denoise",
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter for the diffusion model(s).")] = None,
    json_out: json_flag("Print rows as JSON.") = False,
    quiet: quiet_flag("No progress bars.") = False,
):
    """Compositional probes (attribute binding, spatial relation, object/colour-swap controls) and shape bias on
    cue-conflict items (shape of one class, class colour of another), diffusion vs contrastive, with chance
    levels and bootstrap 95% intervals."""
    from rich.console import Console
    from rich.table import Table

    from ..backbones.capabilities import Capability
    from ..progress import classify_progress
    from ..scoring.config import ScoreConfig
    from ..scoring.schedule import timestep_count
    from ..tasks.probe import ProbeConfig, run_probes

    n_timesteps = timestep_count(timesteps, "probe")
    names_ = model or ["fmnist-scenes-text", "fmnist-scenes-clip"]
    models = [load(m, device, **loading.kwargs()) for m in names_]
    if lora:
        from ..tasks.attention import load_lora

        for bb in models:
            if Capability.DENOISE in bb.capabilities:  # a contrastive model has no attention layers to adapt
                load_lora(bb, lora)
    config = ProbeConfig(n=n, seed=seed, n_timesteps=n_timesteps, score=ScoreConfig(scorer=scorer))
    rows = run_probes(models, names or None, config, out=out,
                      progress_factory=None if (json_out or quiet) else (lambda d: classify_progress(d)))  # fmt: skip
    if json_out:
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
