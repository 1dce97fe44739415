"""Command line: parses arguments, builds configs, calls the Python API, prints. This module holds the app, the
behaviour every command shares (--threads, quiet warnings, Ctrl-C) and the exit codes; one module per command
group registers its commands on `app`."""

import contextlib
import functools
import logging
import os
import sys
import warnings
from typing import Annotated

import typer
from typer.core import TyperCommand

from ..errors import DiffdiscError
from .options import spell_out

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
        state["threads"] = threads
        if threads:
            from ..runtime import set_threads

            set_threads(threads)
        with contextlib.ExitStack() as stack:
            if any(ctx.params.get(k) for k in ("quiet", "json_out")):
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
                stack.callback(logging.disable, logging.root.manager.disable)
                logging.disable(logging.WARNING)
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                raise _Interrupted from None


class _Typer(typer.Typer):
    """typer.Typer whose commands are `_Command`s, with their `OptionGroup` parameters spelled out as options."""

    def command(self, name=None, *, cls=None, **kwargs):
        register = super().command(name, cls=cls or _Command, **kwargs)
        return lambda command: register(spell_out(command))


app = _Typer(
    help="diffdisc: diffusion models as discriminators (zero-shot classification from denoising error).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
state = {"debug": False, "threads": None}


def group(name: str, help: str) -> _Typer:
    """A command group (`diffdisc NAME ...`) added to `app`."""
    sub = _Typer(help=help, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False):
    state["debug"] = debug


# Registration order is the order of `diffdisc --help` (commands first, then groups, each as registered).
from . import classify, train, report, match, attention, sample, synth, baseline, features, doctor  # noqa: E402, F401, I001
from . import timesteps, noise, claims, suite  # noqa: E402, F401, I001


def main() -> None:
    """Exit codes: 0 ok, 1 user error or a failed `doctor` check, 2 usage (click), 130 interrupted."""
    try:
        # Under standalone_mode=False, typer.Exit (doctor's failed check) comes back as the return value.
        code = app(standalone_mode=False)
    except DiffdiscError as e:
        if state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, _Interrupted):
        typer.echo("interrupted: finished images are saved; rerun the same command to resume", err=True)
        # Not sys.exit: CPython re-kills itself with SIGINT (status -2, not 130) at exit when it has flagged an
        # interrupt as unhandled on the way up (seen in full test runs under load, after this message). Every
        # run file is closed here (the stores' context managers have exited); only the streams need flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
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
