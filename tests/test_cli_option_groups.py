"""Option groups (`cli.options.OptionGroup`): declared once as a dataclass, spelled out as flags where a command
declares the group, and handed to the command whole."""

from dataclasses import fields

import typer
from typer.testing import CliRunner

from diffdisc.cli.options import FamilyOptions, LoadOptions, spell_out


def _app(seen: dict) -> typer.Typer:
    app = typer.Typer()

    def cmd(before: int = 1, loading: LoadOptions = LoadOptions(), after: int = 2):
        seen.update(before=before, loading=loading, after=after)

    app.command()(spell_out(cmd))
    app.command()(spell_out(lambda: None))  # a second command: `cmd` is named on the command line
    return app


def test_the_group_is_spelled_out_in_its_place_and_handed_over_whole():
    seen = {}
    app = _app(seen)
    r = CliRunner().invoke(app, ["cmd", "--quantize", "int8", "--no-t5", "--distilled-guidance", "0", "--after", "3"])
    assert r.exit_code == 0, r.output
    assert seen == {"before": 1, "loading": LoadOptions(no_t5=True, distilled_guidance=0.0, quantize="int8"), "after": 3}
    params = typer.main.get_command(app).commands["cmd"].params
    assert [p.name for p in params] == ["before", *(f.name for f in fields(LoadOptions)), "after"]
    assert {p.name: p.default for p in params if p.name in ("weights_dtype", "vae_dtype")} == {"weights_dtype": "auto", "vae_dtype": None}


def test_only_the_options_given_reach_the_loader_by_their_loader_names():
    assert LoadOptions().kwargs() == {} == FamilyOptions().kwargs()
    assert LoadOptions(distilled_guidance=0.0, vae_dtype="fp32", offload="none").kwargs() == {"guidance": 0.0, "vae_dtype": "fp32"}
    assert FamilyOptions(no_t5=True, image_size=64).kwargs() == {"no_t5": True, "image_size": 64}


def test_a_command_without_a_group_is_left_as_it_is():
    def cmd(x: int = 1):
        pass

    assert spell_out(cmd) is cmd
