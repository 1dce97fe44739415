"""`diffdisc claims`: the runner (reuse, resume, knobs, table, report section) on fake stages, and every real
stage end to end at the tiny size on the shipped models."""

import json
import types

import numpy as np
import pytest

from diffdisc.errors import DiffdiscError
from diffdisc.results.claims import ClaimsResult
from diffdisc.tasks import claims as C
from diffdisc.tasks.claims.base import FAILS, HOLDS, INCONCLUSIVE, Claim, paired, verdict


def test_verdict_and_paired():
    assert verdict((0.5, 3.0)) == HOLDS and verdict((-3.0, -0.1)) == FAILS and verdict((-1.0, 2.0)) == INCONCLUSIVE
    assert verdict(None) == INCONCLUSIVE and verdict((float("nan"), 1.0)) == INCONCLUSIVE
    a, b = np.array([1, 1, 1, 0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1, 0, 0, 1])
    mean, (lo, hi), n = paired(a, b)
    assert n == 8 and mean == pytest.approx(100 * (a.mean() - b.mean())) and lo <= mean <= hi
    with pytest.raises(ValueError):
        paired([1, 0], [1])


def _fake(calls: list, ids=("fake_a",)):
    def run(ctx, knobs):
        calls.append(dict(knobs))
        (ctx.out / "work.txt").write_text("x")
        d = np.arange(knobs["n"]) % 2
        v, ci, n = paired(d, np.zeros_like(d))
        return [Claim(i, "a claim", "Someone 2023", "90 vs 80", "points", v, ci, verdict(ci), n) for i in ids]

    return types.SimpleNamespace(IDS=ids, SIZES={"tiny": {"n": 4}, "quick": {"n": 6}, "full": {"n": 8}}, run=run)


@pytest.fixture
def fakes(monkeypatch):
    calls = {"one": [], "two": []}
    mods = {"one": _fake(calls["one"], ("fake_a",)), "two": _fake(calls["two"], ("fake_b", "fake_c"))}
    monkeypatch.setattr(C, "STAGES", ("one", "two"))
    monkeypatch.setattr(C, "stage_module", lambda name: mods[name])
    monkeypatch.setattr(C, "_model_identity", lambda ctx: {"text": {"name": "t", "fingerprint": "f" * 16}})
    return calls


def test_runner_writes_table_reuses_and_overrides(tmp_path, fakes):
    t = C.run_claims(C.ClaimsConfig(size="tiny"), out=tmp_path)
    assert [r["id"] for r in t["claims"]] == ["fake_a", "fake_b", "fake_c"]
    assert json.loads((tmp_path / C.TABLE).read_text())["claims"] == t["claims"]
    assert fakes["one"] == [{"n": 4}] and (tmp_path / "one" / "stage.json").is_file()
    C.run_claims(C.ClaimsConfig(size="tiny"), out=tmp_path)  # same settings: nothing reruns
    assert len(fakes["one"]) == 1 and len(fakes["two"]) == 1
    t2 = C.run_claims(C.ClaimsConfig(size="tiny", stages=("fake_b",), knobs={"two": {"n": 6}}), out=tmp_path)
    assert fakes["two"][-1] == {"n": 6} and len(fakes["one"]) == 1  # only the named stage, with the new knob
    assert [r["id"] for r in t2["claims"]] == ["fake_a", "fake_b", "fake_c"]  # the other stage's rows stay
    assert t2["knobs"] == {"two": {"n": 6}} and "two {\"n\": 6}" in ClaimsResult(t2, tmp_path).markdown()
    assert t2["stages"]["two"]["reused"] is False and t2["stages"]["one"]["reused"] is True


def test_runner_refuses_bad_names(tmp_path, fakes):
    with pytest.raises(DiffdiscError, match="unknown claim or stage 'nope'"):
        C.ClaimsConfig(stages=("nope",)).selected()
    with pytest.raises(DiffdiscError, match="unknown knob"):
        C.run_claims(C.ClaimsConfig(size="tiny", knobs={"one": {"m": 1}}), out=tmp_path)
    with pytest.raises(DiffdiscError, match="unknown claims size"):
        C.ClaimsConfig(size="huge")


def test_table_markdown_and_report_section(tmp_path, fakes):
    from diffdisc.report.html import write_report

    t = C.run_claims(C.ClaimsConfig(size="tiny"), out=tmp_path)
    t["claims"][0]["claim"] = "<script>alert(1)</script>"  # user text is escaped in the page
    t["claims"][0]["details"] = {"points": [{"model": "m", "shift": "s", "clean": 0.9, "shifted": 0.5}]}
    t["claims"][0]["id"] = "effective_robustness"
    (tmp_path / C.TABLE).write_text(json.dumps(t))
    r = ClaimsResult.load(tmp_path)
    md = r.markdown()
    assert md.count("\n| `") == 3 and "**holds**" in md or "**inconclusive**" in md
    page = write_report([tmp_path], tmp_path / "report.html").read_text()
    assert "The papers&#39; claims, tested" in page or "The papers' claims, tested" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "effective robustness: clean vs shifted" in page


def test_cli_knob_parsing():
    from diffdisc.cli.claims import _knobs

    assert _knobs(["zero_shot.per_class=3", "zero_shot.name=x", "b.l=[1,2]"]) == {
        "zero_shot": {"per_class": 3, "name": "x"}, "b": {"l": [1, 2]}}
    with pytest.raises(DiffdiscError, match="STAGE.KNOB=VALUE"):
        _knobs(["per_class=3"])


def test_cli_runs_real_stages_tiny_and_resumes(tmp_path):
    """The user's path: `diffdisc claims` at the tiny size on the shipped models, JSON out, Markdown, report; a
    rerun reuses every stage."""
    from typer.testing import CliRunner

    from diffdisc.cli import app
    from diffdisc.report.html import write_report

    args = ["claims", "--size", "tiny", "--stages", "zero_shot,diversity", "--out", str(tmp_path / "c"),
            "--markdown", str(tmp_path / "claims.md"), "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    table = json.loads(res.output.strip().splitlines()[-1])
    assert [r["id"] for r in table["claims"]] == ["zero_shot", "diversity"]
    for r in table["claims"]:
        assert r["verdict"] == verdict(tuple(r["ci"]) if r["ci"] else None)
    assert table["stages"]["zero_shot"]["reused"] is False
    assert "`zero_shot`" in (tmp_path / "claims.md").read_text()
    again = json.loads(CliRunner().invoke(app, args).output.strip().splitlines()[-1])
    assert all(s["reused"] for s in again["stages"].values()) and again["claims"] == table["claims"]
    assert "zero_shot" in write_report([tmp_path / "c"], tmp_path / "r.html").read_text()
    small = ["claims", "--size", "tiny", "--stages", "zero_shot", "--batch-size", "3", "--out", str(tmp_path / "b3"), "--json"]
    other = json.loads(CliRunner().invoke(app, small).output.strip().splitlines()[-1])  # the U-Net batch is speed only
    assert {k: other["claims"][0][k] for k in ("value", "ci", "n")} == {k: table["claims"][0][k] for k in ("value", "ci", "n")}
    bad = CliRunner().invoke(app, ["claims", "--stages", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "unknown claim or stage" in str(bad.exception)
