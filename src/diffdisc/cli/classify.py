"""`diffdisc classify`, `calibrate` and `merge`: zero-shot classification runs and their metrics."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import app, state
from .options import (
    Dtype,
    LoadOptions,
    Lora,
    NoiseSeed,
    UnetBatchSize,
    json_flag,
    load,
    parse_classes,
    quiet_flag,
    timesteps_option,
)

MetricsJson = json_flag("Print metrics as JSON only.")


@app.command(epilog="Example: diffdisc classify --model fmnist-classcond --data imgs/ --strategy halving --out runs/x")
def classify(
    model: Annotated[str, typer.Option(help="Shipped model name, diffusers directory or cached hub id.")],
    data: Annotated[Path | None, typer.Option(help="ImageFolder (class subfolders) or a flat folder of images (or --dataset).")] = None,
    dataset: Annotated[str | None, typer.Option(help="A standard benchmark by name (cifar10, cifar100, stl10, pets, flowers, food101, fgvc_aircraft, imagenet1k, imagenetv2, objectnet, ...) at --root, with clip_benchmark's class names and templates; or hf:NAME, hf:NAME/CONFIG or hf:DIR, a Hugging Face dataset read offline; also writes clip_benchmark's result JSON.")] = None,
    root: Annotated[Path | None, typer.Option(help="--dataset: the folder holding it (nothing is downloaded).")] = None,
    split: Annotated[str, typer.Option(help="--dataset: its split (test = ImageNet's val, as clip_benchmark).")] = "test",
    template_set: Annotated[str | None, typer.Option(help="--dataset: clip_benchmark (its zero-shot templates, the default) | li (Li et al.'s one prompt per dataset).")] = None,
    image_column: Annotated[str | None, typer.Option(help="--dataset hf:...: the image column (default: its one Image feature).")] = None,
    label_column: Annotated[str | None, typer.Option(help="--dataset hf:...: the label column (default: its one ClassLabel feature).")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names, or @FILE (one per line; default: the data's or model's).")] = None,
    templates: Annotated[list[str] | None, typer.Option("--template", help="Prompt template(s) or set name (text models).")] = None,
    strategy: Annotated[str, typer.Option(help="exhaustive | halving | ttest | auto (the cheapest of a fixed list of settings within --auto-tolerance of the best accuracy on --validation; recorded in run.json).")] = "exhaustive",
    validation: Annotated[Path | None, typer.Option(help="Labelled images (an ImageFolder) sharing none with --data, for --strategy auto and --ensemble-weight auto.")] = None,
    auto_tolerance: Annotated[float, typer.Option(help="--strategy auto: accuracy (share, 0.005 = 0.5 points) a cheaper setting may lose on --validation.")] = 0.005,
    ensemble: Annotated[str | None, typer.Option(help="A contrastive (open_clip) model whose calibrated log-probabilities are pooled log-linearly with the diffusion model's.")] = None,
    ensemble_weight: Annotated[str | None, typer.Option(help="--ensemble: the diffusion model's weight w in [0, 1] (1 = it alone), or auto (fitted on --validation; the default).")] = None,
    timesteps: timesteps_option("Timesteps per candidate (exhaustive):", count_only=True, then="Default 20: 89.0 % at 200 U-Net calls/image (10 classes, shipped fmnist-classcond, docs/results.md).") = 20,
    timestep_schedule: Annotated[str, typer.Option(help="even (official grid) | stratified")] = "even",
    timestep_weights: Annotated[Path | None, typer.Option(help="Learned timestep weights from `diffdisc timesteps fit` (fitted on training images): every strategy evaluates the informative t first and weights the errors; --timesteps N = the top N.")] = None,
    noise: Annotated[Path | None, typer.Option(help="Learned noise from `diffdisc noise fit` (fitted on training images): its ε_t for every image instead of random draws; every timestep the strategy scores must be in it.")] = None,
    tree: Annotated[str | None, typer.Option(help="Hierarchical search (HDC): auto (clusters of the candidates' conditions) | wordnet (ImageNet ids; needs nltk's WordNet) | FILE.json; scores the coarse nodes first and expands the best --beam per level.")] = None,
    beam: Annotated[int, typer.Option(help="--tree: branches kept per level.")] = 1,
    tree_branching: Annotated[int, typer.Option(help="--tree auto: children per node.")] = 4,
    tree_top: Annotated[int | None, typer.Option(help="--tree auto: top-level clusters (default: --tree-branching).")] = None,
    tree_prompt: Annotated[str | None, typer.Option(help="--tree: template for the coarse nodes' prompts, e.g. 'a photo of a {}.' (default: the mean of their leaves' conditions).")] = None,
    sigmas: Annotated[str, typer.Option(help="Flow models: where the timesteps fall on σ: scheduler (its own table, shift included) | uniform | logit_normal (SD3's training density).")] = "scheduler",
    stages: Annotated[str, typer.Option(help="Halving stages n_t:keep,... (last keep must be 1). Default: 0.5 points below exhaustive 20 t at 130 vs 200 calls/image (docs/results.md).")] = "10:3,20:1",
    min_scores: Annotated[int, typer.Option(help="t-test: scores before the first test.")] = 20,
    max_scores: Annotated[int, typer.Option(help="t-test: cap on scores per candidate.")] = 100,
    p_value: Annotated[float, typer.Option(help="t-test: drop a candidate below this p.")] = 2e-3,
    exit_z: Annotated[float, typer.Option(help="halving: stop an image after a stage when its leader beats the runner-up by this many standard errors (0 = off).")] = 0.0,
    shortlist: Annotated[int | None, typer.Option(help="Cascade: a cheap scorer keeps each image's top K candidates; --strategy decides among them.")] = None,
    shortlist_model: Annotated[str | None, typer.Option(help="The cheap scorer: self (this model at --shortlist-timesteps t; default), a contrastive (open_clip) model, another diffusion model, or a `features sweep` output dir (its fitted head). With --strategy auto (no --shortlist): its cascades (top 3, 5, 10) join the settings chosen from.")] = None,
    shortlist_timesteps: Annotated[int, typer.Option(help="Timesteps per candidate of a diffusion cheap scorer (self: the t a halving stage of that size takes on the deciding strategy's grid, reused by it).")] = 2,
    loss: Annotated[str, typer.Option(help="l2 | l1 | huber")] = "l2",
    weighting: Annotated[str | None, typer.Option(help="uniform | clark | min_snr; flow models also velocity | sigma_sqrt | cosmap (uniform = the ε-equivalent (1-σ)²‖v̂-v‖²). Default: uniform; cosmap for flow models (measured, docs/results.md).")] = None,
    batch_size: UnetBatchSize = 64,
    dtype: Dtype = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser (GPU: worth it).")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC activations.")] = False,
    scorer: Annotated[str, typer.Option(help="denoise | attention (Discffusion; text models)")] = "denoise",
    lora: Lora = None,
    seed: NoiseSeed = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory (resumable).")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV image,label for a flat folder.")] = None,
    on_error: Annotated[str, typer.Option(help="fail | skip unreadable images.")] = "fail",
    limit: Annotated[int | None, typer.Option(help="Only N images: a seeded subset, stratified (classes taken in turn) when labels are known, else random; a larger N keeps a smaller N's images.")] = None,
    limit_seed: Annotated[int, typer.Option(help="Seed of the --limit subset (separate from the noise --seed).")] = 0,
    chunk: Annotated[int, typer.Option(help="Images scored together (fills U-Net batches).")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    loading: LoadOptions = LoadOptions(),
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature for probabilities.")] = None,
    rank: Annotated[int, typer.Option(envvar="RANK", help="This process's shard (set by torchrun / accelerate launch).")] = 0,
    world_size: Annotated[int, typer.Option(envvar="WORLD_SIZE", help="Number of processes sharing the run.")] = 1,
    json_out: MetricsJson = False,
    quiet: quiet_flag("No progress bar.") = False,
):
    """Zero-shot classify images with a diffusion model (Li et al. / Clark & Jaini)."""
    from ..progress import classify_progress
    from ..runtime import process_device
    from ..scoring.config import AdaptiveConfig, ScoreConfig, default_weighting, parse_stages
    from ..scoring.schedule import timestep_count
    from ..tasks.classify import ClassifyConfig
    from ..tasks.classify import classify as run

    names, n_timesteps = parse_classes(classes), timestep_count(timesteps, "classify")
    auto = strategy == "auto"
    adaptive = AdaptiveConfig(strategy="exhaustive" if auto else strategy, n_timesteps=n_timesteps, timesteps=timestep_schedule, stages=parse_stages(stages),
                              min_scores=min_scores, max_scores=max_scores, p_value=p_value, exit_z=exit_z,
                              sigmas=sigmas, timestep_weights=str(timestep_weights) if timestep_weights else None)  # fmt: skip
    bench = None
    if (data is None) == (dataset is None):
        raise DiffdiscError("give exactly one of --data (a folder) and --dataset (a benchmark by name, with --root)")
    if dataset is not None:
        from ..data.benchmarks import open_benchmark

        if root is None and not dataset.startswith("hf:"):  # hf: reads the Hugging Face cache (--root: its cache_dir)
            raise DiffdiscError(f"--dataset {dataset} needs --root, the folder that holds it (nothing is downloaded)")
        data, names_, tpl = open_benchmark(dataset, root, split, templates=template_set, image_column=image_column,
                                           label_column=label_column)  # fmt: skip
        names, templates, bench = names or names_, templates or list(tpl), data
    if shortlist_model is not None and shortlist is None and strategy != "auto":
        raise DiffdiscError("--shortlist-model needs --shortlist K (how many candidates it keeps per image), or "
                            "--strategy auto (which adds its cascades to the settings it chooses from)")  # fmt: skip
    dev = process_device(rank, world_size, device, state["threads"])
    bb = load(model, dev, lora, **loading.kwargs())
    score = ScoreConfig(loss=loss, weighting=weighting or default_weighting(bb), batch_size=batch_size, dtype=dtype,
                        seed=seed, compile=compile, channels_last=channels_last, scorer=scorer)  # fmt: skip
    config = ClassifyConfig(classes=names, templates=templates or None, score=score, adaptive=adaptive, labels_csv=labels,
                            on_error=on_error, chunk_images=chunk, limit=limit, limit_seed=limit_seed,
                            temperature=temperature, shortlist=shortlist, shortlist_timesteps=shortlist_timesteps,
                            tree=tree, beam=beam, tree_branching=tree_branching, tree_top=tree_top,
                            tree_prompt=tree_prompt, noise=str(noise) if noise else None, auto=auto,
                            auto_tolerance=auto_tolerance, validation=str(validation) if validation else None,
                            ensemble_weight=(ensemble_weight or "auto") if ensemble else ensemble_weight)  # fmt: skip
    cheap = _shortlist_model(shortlist_model, dev) if shortlist is not None or auto else None
    partner = load(ensemble, dev) if ensemble else None
    out = out or Path("runs") / f"classify-{bb.info.label.replace('/', '_')}-{strategy}"
    with classify_progress("classify", enabled=not (quiet or json_out)) as cb:
        result = run(bb, data, config, out=out, progress=cb, rank=rank, world_size=world_size, shortlist_model=cheap,
                     ensemble_model=partner)  # fmt: skip
    metrics = result.stored_metrics  # metrics.json, as this run merged it (or an earlier merge: other shards run)
    if metrics is None:
        typer.echo(f"shard {rank}/{world_size} done; the last process to finish merges {out} (a crashed one: rerun it alone)")
        return
    if bench is not None and not bench.name.startswith("hf:"):  # a diffusion row beside CLIP rows in one clip_benchmark table
        from ..results.clip_benchmark import write_clip_benchmark_json

        write_clip_benchmark_json(out, bench.name, bb.info.label, metrics, classnames=list(names), templates=list(config.templates or ()),
                                  extra={"unet_calls_per_image": metrics.get("unet_calls_per_image"),
                                         "n_images": metrics.get("n_images")})  # fmt: skip
    for image_id, why in getattr(result, "skipped", []):
        typer.echo(f"skipped {image_id}: {why}", err=True)
    for note in getattr(result, "notes", []):
        if note not in getattr(result, "announced", []):  # the resize note is said before the run
            typer.echo(f"note: {note}", err=True)
    print_metrics(metrics, out, json_out)


def _shortlist_model(spec: str | None, device):
    """--shortlist-model: None / "self" (the deciding model), a features sweep directory (its head), else a model."""
    if spec is None or spec == "self":
        return None
    from ..features.shortlist import FeatureHead

    return FeatureHead.from_dir(spec) if FeatureHead.is_dir(spec) else load(spec, device)


def print_metrics(metrics: dict, out: Path, as_json: bool) -> None:
    """Accuracy and the one ECE, each once with its interval (as the report shows them), then the calls."""
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    from ..results.classification import summary_lines

    typer.echo("\n".join([f"results in {out}", *summary_lines(metrics)]))


@app.command(epilog="Example: diffdisc calibrate runs/val --apply-to runs/test  (fit T on a labelled run, use it on another)")
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="A labelled classify run to fit on.")],
    apply_to: Annotated[Path | None, typer.Option("--apply-to", help="Rewrite this run's metrics with the fitted T.")] = None,
    json_out: json_flag("One line of JSON (default: indented).") = False,
):
    """Fit softmax temperature (and Platt a, b on log U-Net calls) on a labelled run.

    A run with images scored without U-Net calls (contrastive models) gets the temperature only (Platt: null)."""
    from ..tasks.calibrate import calibrate as fit

    cal = fit(run_dir, apply_to, log=lambda m: typer.echo(f"note: {m}", err=True))
    typer.echo(json.dumps(cal, indent=None if json_out else 2))


@app.command(epilog="Example: diffdisc merge runs/x  (after `torchrun ... classify --out runs/x` shards finish)")
def merge(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by one or more processes.")],
    json_out: MetricsJson = False,
):
    """Merge shards of a (multi-process) run into results.jsonl, predictions.jsonl and metrics.json."""
    from ..results import ClassificationResult
    from ..tasks.classify import finalize

    res = ClassificationResult.load(run_dir)
    print_metrics(finalize(run_dir, res, res.settings.get("temperature")), run_dir, json_out)
