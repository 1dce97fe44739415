"""`diffdisc features blocks | extract | sweep | probe`: U-Net activations at (block, t) and light heads on them
(Mukhopadhyay et al.)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import group, state
from .options import (
    Device,
    Dtype,
    FeatureBatchSize,
    FeatureModel,
    FeatureTrainData,
    Head,
    HeadSeed,
    LoadOptions,
    MaxTrain,
    Pooling,
    TrainLabels,
    ValFraction,
    WeightDecays,
    json_flag,
    load,
    quiet_flag,
    split,
    timesteps_option,
)

features_app = group("features", "Diffusion features (Mukhopadhyay et al.): U-Net activations at (block, t) + light heads.")
Blocks = Annotated[str | None, typer.Option(help="Comma-separated block names (default: all top-level blocks).")]
Condition = Annotated[str, typer.Option(help="null | class:NAME | caption:TEXT (same for every image).")]
FeatureTimesteps = timesteps_option("Timesteps.")
FeatureCache = Annotated[Path | None, typer.Option(help="Feature cache directory (default: the user's cache folder, "
                                                   "$XDG_CACHE_HOME/diffdisc/features or ~/.cache/diffdisc/features).")]


def _cache(path: Path | None) -> Path:
    from ..features.cache import default_cache_dir

    return path or default_cache_dir()


def _launch(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world size, device) of this process: under torchrun / accelerate launch (RANK, WORLD_SIZE) each
    process computes its share of the features into the shared cache."""
    from ..runtime import launch_rank, process_device

    rank, world_size = launch_rank()
    return rank, world_size, process_device(rank, world_size, device, state["threads"])


def _feature_data(data: Path, test_data: Path | None, labels: Path | None, max_train: int | None = None, seed: int = 0):
    from ..data.labelled import LabelledImages

    train = LabelledImages.from_folder(data, labels_csv=labels, max_images=max_train, seed=seed)
    test = LabelledImages.from_folder(test_data, class_names=train.class_names) if test_data else None
    return train, test


def _head_config(head: str, optimizer: str, weight_decays: str | None, seed: int):
    from ..features.heads import HeadConfig

    try:
        wds = tuple(float(v) for v in weight_decays.split(",")) if weight_decays else None
    except ValueError:
        raise DiffdiscError(f"bad --weight-decays {weight_decays!r}: comma-separated numbers") from None
    return HeadConfig(kind=head, optimizer=optimizer, weight_decays=wds, seed=seed)


def _blocks_and_timesteps(bb, blocks: str | None, timesteps: str) -> tuple[list[str], list[int]]:
    from ..features.taps import block_modules, denoiser
    from ..scoring.schedule import parse_timesteps

    return split(blocks) or list(block_modules(denoiser(bb))), parse_timesteps(timesteps, bb.num_train_timesteps)


@features_app.command("blocks", epilog="Example: diffdisc features blocks --model fmnist-classcond --detail")
def features_blocks(
    model: FeatureModel,
    detail: Annotated[bool, typer.Option("--detail", help="Also list each block's resnets and attentions.")] = False,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print [{name, module, shape}] as JSON only.") = False,
    quiet: quiet_flag("Only the list (no warnings).") = False,
):
    """List the tappable blocks (stable names for --blocks) with their output shape [C, H, W]."""
    from ..features.taps import describe_blocks

    found = describe_blocks(load(model, device, **loading.kwargs()), detail)
    if json_out:
        typer.echo(json.dumps([{"name": b.name, "module": b.module, "shape": list(b.shape)} for b in found]))
        return
    for b in found:
        typer.echo(f"{b.name:18s} {b.module:24s} {'x'.join(map(str, b.shape))}")


@features_app.command("extract", epilog="Example: diffdisc features extract --model fmnist-classcond --data imgs/ "
                                        "--blocks mid,up.0 --timesteps 50,150 --pooling gap,avg2")
def features_extract(
    model: FeatureModel,
    data: Annotated[Path, typer.Option(help="ImageFolder or flat folder of images.")],
    blocks: Blocks = None,
    timesteps: FeatureTimesteps = "50,150,300",
    pooling: Annotated[str, typer.Option(help="Comma-separated: gap | avgK (avg2, avg4) | flat.")] = "gap",
    condition: Condition = "null",
    seed: Annotated[int, typer.Option(help="Noise seed (ε per image and t).")] = 0,
    batch_size: FeatureBatchSize = 64,
    dtype: Dtype = "fp32",
    cache: FeatureCache = None,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print the counts as JSON only.") = False,
    quiet: quiet_flag("No progress bar; only the summary line.") = False,
):
    """Fill the feature cache (one U-Net forward per image per timestep, all blocks and poolings at once)."""
    from ..data.labelled import LabelledImages
    from ..features.cache import cached_features
    from ..features.taps import ExtractStats
    from ..progress import step_progress

    rank, world_size, dev = _launch(device)
    bb = load(model, dev, **loading.kwargs())
    names, ts = _blocks_and_timesteps(bb, blocks, timesteps)
    imgs, cache = LabelledImages.from_folder(data), _cache(cache)
    x = imgs.tensors(bb.info.image_size, bb.info.image_channels)
    stats = ExtractStats()
    with step_progress("features", enabled=not (quiet or json_out)) as cb:
        got = cached_features(bb, x, imgs.keys, names, ts, tuple(split(pooling)), cache=cache, condition=condition,
                              seed=seed, batch_size=batch_size, dtype=dtype, stats=stats, progress=cb, load=False,
                              rank=rank, world_size=world_size)  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"images": len(imgs), "blocks": names, "timesteps": ts, "poolings": split(pooling),
                               "unet_forwards": stats.forwards, "cache_shards_reused": stats.cache_hits,
                               "stale_cells_recomputed": stats.stale, "cache": str(cache), "complete": got is not None}))  # fmt: skip
        return
    typer.echo(f"{len(imgs)} images x {len(names)} blocks x {len(ts)} t: {stats.forwards} U-Net forwards, "
               f"{stats.cache_hits} cached shard(s) reused, {stats.stale} stale cell(s) recomputed; cache {cache}"
               + ("" if got is not None else f" (shard {rank}/{world_size}; other processes' shares still running)"))  # fmt: skip


@features_app.command("sweep", epilog="Example: diffdisc features sweep --model fmnist-classcond --data train/ "
                                      "--test-data test/ --blocks down.2,mid,up.0 --timesteps 25,100,250 --out runs/feat")
def features_sweep(
    model: FeatureModel,
    data: FeatureTrainData,
    out: Annotated[Path, typer.Option(help="Writes features_sweep.json, features_sweep.png, details and the best head.")],
    test_data: Annotated[Path | None, typer.Option(help="Labelled test ImageFolder: scored once, at the chosen cell.")] = None,
    blocks: Blocks = None,
    timesteps: FeatureTimesteps = "50,150,300",
    pooling: Pooling = "gap",
    head: Head = "linear",
    optimizer: Annotated[str, typer.Option(help="Linear head: lbfgs (full batch) | adamw.")] = "lbfgs",
    weight_decays: WeightDecays = None,
    condition: Condition = "null",
    val_fraction: ValFraction = 0.1,
    seed: HeadSeed = 0,
    batch_size: FeatureBatchSize = 64,
    dtype: Dtype = "fp32",
    cache: FeatureCache = None,
    labels: TrainLabels = None,
    max_train: MaxTrain = None,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print features_sweep.json only.") = False,
    quiet: quiet_flag("No progress bar or table: only the best-cell line.") = False,
):
    """Validation accuracy over blocks x timesteps, heat map, best cell chosen on validation, test scored once."""
    from ..progress import step_progress
    from ..tasks.features import FeatureConfig, SweepConfig, sweep

    rank, world_size, dev = _launch(device)
    bb = load(model, dev, **loading.kwargs())
    train, test = _feature_data(data, test_data, labels, max_train, seed)
    names, ts = _blocks_and_timesteps(bb, blocks, timesteps)
    fcfg = FeatureConfig(pooling=pooling, condition=condition, seed=seed, batch_size=batch_size, dtype=dtype, val_fraction=val_fraction)
    config = SweepConfig(names, ts, features=fcfg, head=_head_config(head, optimizer, weight_decays, seed))
    r = sweep(bb, train, config, test=test, cache=_cache(cache), out=out, rank=rank, world_size=world_size,
              progress_factory=None if (quiet or json_out) else (lambda d: step_progress(d)))  # fmt: skip
    if r is None:
        typer.echo(f"shard {rank}/{world_size} done; the last process to finish fits the heads and writes {out}")
        return
    test_s = f"; test {r.test_acc:.2%} on {r.n_test} images" if r.test_acc is not None else ""
    best = f"best {r.best['block']} @ t={r.best['t']}: val {r.best['val_acc']:.2%}{test_s}"
    if json_out or quiet:
        typer.echo(json.dumps(r.to_json(), indent=2) if json_out else best)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"validation accuracy, {r.head} head on {r.pooling} features ({r.n_train} train / {r.n_val} val)")
    t.add_column("block")
    for t_ in r.timesteps:
        t.add_column(f"t={t_}", justify="right")
    for b, row in zip(r.blocks, r.val_acc, strict=True):
        t.add_row(b, *[f"{v:.1%}" for v in row])
    Console().print(t)
    typer.echo(best)
    typer.echo(f"wrote {out / 'features_sweep.json'} and {out / 'features_sweep.png'}")


@features_app.command("probe", epilog="Example: diffdisc features probe --model fmnist-classcond --data train/ --test-data test/ "
                                      "--cells mid@5 --pooling avg4 --out runs/probe  (mid@5,up.0@5: fused)")
def features_probe(
    model: FeatureModel,
    data: FeatureTrainData,
    cells: Annotated[str, typer.Option(help="BLOCK@T[,BLOCK@T...]: several cells are fused by concatenation.")],
    test_data: Annotated[Path | None, typer.Option(help="Labelled test ImageFolder.")] = None,
    pooling: Pooling = "gap",
    head: Head = "linear",
    optimizer: Annotated[str, typer.Option(help="Linear head: lbfgs | adamw.")] = "lbfgs",
    weight_decays: WeightDecays = None,
    condition: Annotated[str, typer.Option(help="null | class:NAME | caption:TEXT")] = "null",
    val_fraction: ValFraction = 0.1,
    seed: HeadSeed = 0,
    batch_size: FeatureBatchSize = 64,
    cache: FeatureCache = None,
    save: Annotated[Path | None, typer.Option(help="Save the trained head here (safetensors + head.json).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write run.json and features_probe.json here, for `diffdisc report`.")] = None,
    labels: TrainLabels = None,
    max_train: MaxTrain = None,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print the result as JSON only.") = False,
    quiet: quiet_flag("No progress bar: only the result line.") = False,
):
    """Train one head on fixed cell(s) (fusion when several); validation and test accuracy."""
    from ..progress import step_progress
    from ..tasks.features import CellConfig, FeatureConfig, parse_cells, probe

    rank, world_size, dev = _launch(device)
    bb = load(model, dev, **loading.kwargs())
    train, test = _feature_data(data, test_data, labels, max_train, seed)
    fcfg = FeatureConfig(pooling=pooling, condition=condition, seed=seed, batch_size=batch_size, val_fraction=val_fraction)
    config = CellConfig(parse_cells(cells), features=fcfg, head=_head_config(head, optimizer, weight_decays, seed))
    got = probe(bb, train, config, test=test, cache=_cache(cache), out=out, rank=rank, world_size=world_size,
                progress_factory=None if (quiet or json_out) else (lambda d: step_progress(d)))  # fmt: skip
    if got is None:
        typer.echo(f"shard {rank}/{world_size} done; the last process to finish fits the head")
        return
    r, fitted = got
    if save:
        fitted.save_pretrained(save)
        if not (quiet or json_out):
            typer.echo(f"saved the head to {save}", err=True)
    if json_out:
        typer.echo(json.dumps(r.to_dict(), indent=2))
        return
    test_s = f", test {r.test_acc:.2%} on {r.n_test} images" if r.test_acc is not None else ""
    typer.echo(f"{r.representation}: val {r.val_acc:.2%}{test_s} ({r.dims} dims, weight decay {r.weight_decay:g}; "
               f"{r.n_train} train / {r.n_val} val)")  # fmt: skip
    if out is not None:
        typer.echo(f"wrote {out / 'features_probe.json'} (diffdisc report {out})")
