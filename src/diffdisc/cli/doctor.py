"""`diffdisc doctor` and `diffdisc models`: is the installation sound, and which models ship with it."""

import json

import typer

from . import app
from .options import json_flag


@app.command(epilog="Example: diffdisc doctor --json  (exit 1 when something is missing or a shipped model fails)")
def doctor(json_out: json_flag("Print the checks as JSON only.") = False):
    """Check the installation: library versions, device, Fashion-MNIST files, shipped models loading."""
    from ..runtime import quiet_libraries
    from ..tasks.doctor import installation_checks

    quiet_libraries()
    checks = installation_checks()
    ok = all(c[2] for c in checks)
    if json_out:
        typer.echo(json.dumps({"ok": ok, "checks": [{"name": n, "value": v, "ok": k} for n, v, k in checks]}))
    else:
        for n, v, _ in checks:
            typer.echo(f"{n:16s} {v}")
    if not ok:
        raise typer.Exit(1)


@app.command(epilog="Example: diffdisc models --json")
def models(json_out: json_flag("Print name, recipe and steps as JSON.") = False):
    """List the shipped models."""
    from ..tasks.doctor import shipped_models

    rows = shipped_models()
    if json_out:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no shipped models installed")
    for r in rows:
        typer.echo(f"{r['name']}\t{r['recipe']}\tsteps={r['steps'] if r['steps'] is not None else '?'}")
