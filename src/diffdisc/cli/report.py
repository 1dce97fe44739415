"""`diffdisc demo` and `diffdisc report`: the shipped demo, and one HTML page for any runs."""

import json
from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import json_flag, quiet_flag


@app.command(epilog="Example: diffdisc demo --per-class 3 --out runs/demo  (then: diffdisc report runs/demo)")
def demo(
    out: Annotated[Path, typer.Option(help="Where results and index.html go.")] = Path("runs/demo"),
    per_class: Annotated[int, typer.Option(help="Shipped test images per class.")] = 3,
    json_out: json_flag("Print the table as JSON rows only.") = False,
    quiet: quiet_flag("No progress bars.") = False,
):
    """Zero-shot classify shipped real Fashion-MNIST test images with the shipped model; table + HTML page."""
    from rich.console import Console
    from rich.table import Table

    from ..demo import run_demo
    from ..progress import classify_progress
    from ..runtime import quiet_libraries

    quiet_libraries()
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
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories (classify, probe, features sweep / probe, heat maps, synth, baselines).")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="Page title.")] = "diffdisc report",
    json_out: json_flag("Print what was found as JSON.") = False,
):
    """One self-contained HTML page (figures inline, no network) for one or more runs, side by side."""
    from ..report.load import load_runs

    runs = load_runs(run_dirs)  # a mistyped path fails here, before the heavy imports
    from ..report.html import write_runs

    path = write_runs(runs, out, title=title)
    if json_out:
        typer.echo(json.dumps({"out": str(path), "runs": [
            {"name": r.name, "path": str(r.path), "classification": r.classification is not None,
             "probes": len(r.matchings), "sweeps": len(r.sweeps), "feature_probes": len(r.feature_probes),
             "overlays": len(r.overlays), "synth": len(r.synth),
             "problems": r.problems} for r in runs]}))  # fmt: skip
        return
    for r in runs:
        for p in r.problems:
            typer.echo(f"{r.name}: {p}", err=True)
    typer.echo(f"wrote {path}")
