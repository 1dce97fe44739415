"""`diffdisc claims`: the five papers' claims tested on the embedded world, one resumable command, one table."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import app, state
from .options import UnetBatchSize, json_flag, quiet_flag, split


def _knobs(specs: list[str] | None, size: str | None = None) -> dict:
    """`stage.knob=value` (value as JSON when it parses: numbers, lists) -> {stage: {knob: value}}; with `size`,
    each value is also checked against its knob's type and range (`tasks.claims.check_knobs`), naming --knob."""
    out: dict = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        stage, dot, knob = key.partition(".")
        if not (sep and dot and stage and knob):
            raise DiffdiscError(f"--knob expects STAGE.KNOB=VALUE (e.g. zero_shot.per_class=20), got {spec!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        except RecursionError:
            raise DiffdiscError(f"--knob {key}: value nested too deeply") from None
        out.setdefault(stage, {})[knob] = parsed
    if size is not None:
        from ..tasks.claims import check_knobs

        return check_knobs(out, size, "--knob")
    return out


@app.command(epilog="Examples: diffdisc claims --quick --out runs/claims-quick   (minutes on a CPU)\n\n"
                    "diffdisc claims --size full --out runs/claims --device cuda   (the documented sizes)\n\n"
                    "diffdisc claims --quick --stages zero_shot,binding --knob zero_shot.per_class=10")
def claims(
    out: Annotated[Path, typer.Option(help="Directory of the stages' runs and claims_table.json (rerun to resume).")] = Path("runs/claims"),
    size: Annotated[str, typer.Option(help="tiny | quick | full: how many items, timesteps, steps and seeds (the test is the same).")] = "quick",
    quick: Annotated[bool, typer.Option("--quick", help="Same as --size quick (minutes on a 2-core CPU).")] = False,
    stages: Annotated[str | None, typer.Option(help="Comma-separated stages or claim ids (default: all).")] = None,
    knob: Annotated[list[str] | None, typer.Option(help="STAGE.KNOB=VALUE: replace one knob of the size (repeatable).")] = None,
    text_model: Annotated[str, typer.Option(help="Text-conditional diffusion model (name or directory).")] = "fmnist-scenes-text",
    clip_model: Annotated[str, typer.Option(help="Contrastive baseline (name or directory).")] = "fmnist-scenes-clip",
    classcond_model: Annotated[str, typer.Option(help="Class-conditional diffusion model (features claim).")] = "fmnist-classcond",
    seed: Annotated[int, typer.Option(help="Noise, subset and probe seed.")] = 0,
    markdown: Annotated[Path | None, typer.Option(help="Also write the table as Markdown to this file.")] = None,
    batch_size: UnetBatchSize = 64,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    json_out: json_flag("Print the claims table as JSON only.") = False,
    quiet: quiet_flag("No progress bars.") = False,
):
    """Test every paper claim (zero-shot, binding, spatial, shape bias, attention + LoRA, features, diversity tricks,
    effective robustness) with the protocol of docs/methods.md: paired differences, 95 % intervals, a verdict each.

    Each stage's runs are stored under --out and resume; a finished stage with the same settings is reused. The
    table is OUT/claims_table.json; `diffdisc report OUT` shows it as a section."""
    from rich.console import Console
    from rich.table import Table

    from ..progress import classify_progress
    from ..results.claims import fmt_value
    from ..runs.io import atomic_write_text
    from ..runtime import launch_rank, process_device, quiet_libraries
    from ..tasks.claims import ClaimsConfig, run_claims

    quiet_libraries()
    cfg = ClaimsConfig(size="quick" if quick else size, stages=tuple(split(stages)) if stages else None,
                       text_model=text_model, clip_model=clip_model, classcond_model=classcond_model, seed=seed,
                       knobs=_knobs(knob, "quick" if quick else size))  # fmt: skip
    cfg.selected()  # unknown stage names fail before any model loads
    show = not (quiet or json_out)
    rank, world_size = launch_rank()  # torchrun / accelerate launch: the stages go round robin to the processes
    table = run_claims(cfg, out=out, device=process_device(rank, world_size, device, state["threads"]), batch_size=batch_size,
                       progress=(lambda d: classify_progress(d)) if show else None, rank=rank, world_size=world_size,
                       log=(lambda m: typer.echo(m, err=True)) if show else None)  # fmt: skip
    if table is None:
        typer.echo(f"shard {rank}/{world_size} done; the last process to finish writes {out / 'claims_table.json'}")
        return
    result = table  # the ClaimsResult read as the claims table
    if markdown:
        atomic_write_text(markdown, result.markdown())
    if json_out:
        typer.echo(json.dumps(table))
        return
    t = Table(title=f"diffdisc claims ({table['size']})")
    for h in ("claim", "difference [95 % CI] (points)", "n", "verdict"):
        t.add_column(h, no_wrap=h != "verdict")
    for r in result.rows:
        t.add_row(r["id"], fmt_value(r), str(r.get("n", "")), r.get("verdict", ""))
    Console().print(t)
    typer.echo(f"table: {out / 'claims_table.json'}  (diffdisc report {out} --out report.html)")
