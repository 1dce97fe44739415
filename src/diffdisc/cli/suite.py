"""`diffdisc suite`: the benchmarks a paper reports, one command, one table (a column per model)."""

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import UnetBatchSize, json_flag, quiet_flag, timesteps_option


@app.command(epilog="Examples: diffdisc suite --suite embedded --limit 50 --timesteps 5 --out runs/suite-embedded\n\n"
                    "diffdisc suite --suite compositional --root ~/data --model MODEL_DIR --model CLIP_DIR\n\n"
                    "diffdisc suite --suite my_tasks.yaml --model MODEL_DIR --out runs/paper")
def suite(
    suite: Annotated[str, typer.Option("--suite", help="compositional (Winoground, ARO x4, SugarCrepe x7, CLEVR binding, EqBen) | classification (the clip_benchmark datasets found under --root) | embedded (the shipped world: classification, 80-way, binding, spatial, cue-conflict) | a YAML / JSON file of tasks.")] = "embedded",
    model: Annotated[list[str] | None, typer.Option(help="Model(s), a column each: one, or a diffusion and a contrastive side by side (repeat). Default: fmnist-scenes-text and fmnist-scenes-clip.")] = None,
    root: Annotated[Path | None, typer.Option(help="Folder holding each dataset in its published layout, one subfolder per dataset (winoground/, aro/, coco/, flickr30k/, sugar_crepe/, eqbench/, clevr/, cifar10/, ...). Nothing is downloaded.")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory of the runs and the table (rerun to resume). Default: runs/suite-<suite>.")] = None,
    timesteps: timesteps_option("Timesteps per candidate (diffusion models):", count_only=True) = "20",
    limit: Annotated[int | None, typer.Option(min=1, help="At most N items per task (a seeded subset, the same for every model and noise seed).")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed (and the embedded probes' seed).")] = 0,
    batch_size: UnetBatchSize = 64,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast)")] = "fp32",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write the table as Markdown to this file.")] = None,
    json_out: json_flag("Print the table as JSON only.") = False,
    quiet: quiet_flag("No progress.") = False,
):
    """Run a suite of benchmark tasks on one or two models: per-task metrics as their papers report them (text /
    image / group score, ARO's macro accuracy, accuracy) with 95 % intervals and U-Net calls, in one table.

    Each (task, model) is a resumable run under --out; tasks whose data is missing are listed as skipped with the
    path they expected. The table is OUT/suite_table.json and OUT/suite_table.md; `diffdisc report OUT` shows it."""
    from ..errors import DiffdiscError
    from ..progress import classify_progress
    from ..results.suite import SuiteResult
    from ..runs.io import atomic_write_text
    from ..scoring.schedule import timestep_count
    from ..tasks.suite import SUITES, SuiteConfig, load_suite_file, named_suite, run_suite

    n_t = timestep_count(timesteps, "suite")
    settings: dict = {}
    if suite in SUITES:
        name, tasks = suite, named_suite(suite)
    elif Path(suite).expanduser().is_file():
        name, tasks, settings = load_suite_file(suite)
    else:
        raise DiffdiscError(f"--suite {suite}: neither a suite ({', '.join(SUITES)}) nor a suite file")
    default_t = "20"  # a value given on the command line wins over the file's
    config = SuiteConfig(name=name, tasks=tasks, models=tuple(model or ("fmnist-scenes-text", "fmnist-scenes-clip")),
                         root=str(root) if root else settings.get("root"),
                         timesteps=settings.get("timesteps", n_t) if timesteps == default_t else n_t,
                         limit=limit if limit is not None else settings.get("limit"), seed=seed, batch_size=batch_size,
                         dtype=dtype)  # fmt: skip
    out = out or Path("runs") / f"suite-{Path(name).name}"
    show = not (quiet or json_out)
    command = "diffdisc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["suite"] else None
    table = run_suite(config, out=out, device=device, command=command,
                      progress=(lambda d: classify_progress(d)) if show else None,
                      log=(lambda m: typer.echo(m, err=True)) if show else None)  # fmt: skip
    result = SuiteResult(table, out)
    if markdown:
        atomic_write_text(markdown, result.markdown())
    if json_out:
        typer.echo(json.dumps(table))
    else:
        typer.echo(result.markdown())
        typer.echo(f"table: {out / 'suite_table.json'}  (diffdisc report {out} --out report.html)")
    if result.errors:
        raise DiffdiscError(f"{len(result.errors)} task(s) failed (first: {result.errors[0]['task']}: "
                            f"{result.errors[0]['reason']}); the others are in the table")  # fmt: skip
