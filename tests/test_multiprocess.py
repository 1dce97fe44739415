"""Many processes on one --out (README "Many GPUs and machines"): `torchrun` and plain RANK/WORLD_SIZE launches of
classify, match, features and claims equal one process, the last process to finish merges, and a crashed rank
resumes alone without touching the others' shards."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffdisc.cli import app
from diffdisc.results import ClassificationResult, MatchResult
from diffdisc.runs import HOST, RunStore, remove_stale_temps

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
    ENV.pop(k, None)
TORCHRUN = Path(sys.executable).with_name("torchrun")
README = Path(__file__).resolve().parents[1] / "README.md"
CLASSIFY = ("--timesteps", "2", "--batch-size", "8", "--chunk", "2", "--quiet")
# one interpreter per rank runs the commands in turn (as a job script would), so the test pays one torch import per rank
DRIVER = """import json, sys
from diffdisc.cli import main
for cmd in json.loads(sys.argv[1]):
    sys.argv = ["diffdisc", *cmd]
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
"""


def cli(*args, rank: int | None = None):
    """`diffdisc ARGS` in this process, as rank `rank` of 2 (RANK / WORLD_SIZE in the environment) or alone."""
    env = {"RANK": str(rank), "WORLD_SIZE": "2"} if rank is not None else {"RANK": None, "WORLD_SIZE": None}
    r = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return r.exit_code, r.output, r.exception


def two_ranks(commands: list[list], cwd: Path) -> list[str]:
    """RANK=0 and RANK=1 (WORLD_SIZE=2) started together, each running `commands`; their outputs once both end."""
    cmds = json.dumps([[str(a) for a in c] for c in commands])
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, cmds], cwd=cwd, env={**ENV, "RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


@pytest.fixture(scope="module")
def one_process(classcond_dir, image_folder, tmp_path_factory):
    """The single-process classify run every sharded one must equal."""
    out = tmp_path_factory.mktemp("mp") / "one"
    code, output, exc = cli("classify", "--model", classcond_dir, "--data", image_folder, *CLASSIFY, "--out", out)
    assert code == 0, (output, exc)
    return ClassificationResult.load(out)


def same_run(a: ClassificationResult, b: ClassificationResult) -> None:
    assert a.image_ids == b.image_ids and a.predictions.tolist() == b.predictions.tolist()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    assert a.stored_metrics["accuracy"] == b.stored_metrics["accuracy"]


def readme_launch(launcher: str) -> list[str]:
    """The README's `LAUNCHER ... classify` line of "Many GPUs and machines", up to `classify`, on 2 processes."""
    section = README.read_text().split("### Many GPUs and machines", 1)[1]
    line = next(x for x in section.splitlines() if x.startswith(f"{launcher} "))
    words = shlex.split(line)
    return [w if w != "8" else "2" for w in words[: words.index("classify") + 1]]


def test_torchrun_classify_merges_itself_and_equals_one_process(classcond_dir, image_folder, one_process, tmp_path):
    out = tmp_path / "mp"
    launch = readme_launch("torchrun")  # torchrun --standalone --nproc_per_node 2 -m diffdisc.cli classify
    p = subprocess.run([TORCHRUN, *launch[1:], "--model", classcond_dir, "--data", image_folder, *CLASSIFY, "--out", out],
                       env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    shards = sorted((out / "shards").glob("part-*.jsonl"))
    assert [len(s.read_text().splitlines()) for s in shards] == [5, 4]  # image i is rank i % 2's
    same_run(ClassificationResult.load(out), one_process)  # merged by the last process: no `diffdisc merge`
    assert not list(out.glob(".*.lock"))
    code, output, exc = cli("merge", out)  # merging again by hand (after a skipped image, say) changes nothing
    assert code == 0, (output, exc)
    same_run(ClassificationResult.load(out), one_process)


def test_a_crashed_rank_resumes_alone(classcond_dir, image_folder, one_process, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    args = ("classify", "--model", classcond_dir, "--data", image_folder, *CLASSIFY, "--out", out)
    code, output, _ = cli(*args, rank=0)
    assert code == 0 and "shard 0/2 done" in output and not (out / "metrics.json").exists()
    part0 = out / "shards" / "part-00000.jsonl"
    before = (part0.stat().st_mtime_ns, part0.read_bytes())
    appended = []
    real_append = RunStore.append

    def append_then_crash(store, records):  # rank 1 dies after saving its first chunk
        real_append(store, records)
        appended.append(len(records))
        raise RuntimeError("killed")

    monkeypatch.setattr(RunStore, "append", append_then_crash)
    code, _, exc = cli(*args, rank=1)
    assert code != 0 and str(exc) == "killed" and appended == [2]
    monkeypatch.setattr(RunStore, "append", real_append)
    first = (out / "shards" / "part-00001.jsonl").read_text().splitlines()
    code, output, exc = cli(*args, rank=1)  # only rank 1 again: RANK=1 WORLD_SIZE=2 diffdisc classify ...
    assert code == 0, (output, exc)
    assert (part0.stat().st_mtime_ns, part0.read_bytes()) == before  # rank 0's shard untouched
    lines = (out / "shards" / "part-00001.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 4  # its own first chunk kept, not recomputed
    same_run(ClassificationResult.load(out), one_process)  # and the resumed rank merged


def _groups(root: Path) -> Path:
    root.mkdir()
    rows = []
    for i in range(4):
        for k in "ab":
            a = np.full((16, 16, 3), 40 + 30 * i, np.uint8)
            a[..., "ab".index(k)] = 200
            Image.fromarray(a).save(root / f"{i}{k}.png")
        rows.append({"id": f"g{i}", "images": [f"{i}a.png", f"{i}b.png"], "captions": ["a red cat", "a green dog"]})
    (root / "groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "groups.jsonl"


def test_env_launched_match_features_claims_equal_one_process(sd_dir, classcond_dir, image_folder, tmp_path):
    groups = _groups(tmp_path / "groups")
    match = ["match", "--model", sd_dir, "--groups", groups, "--timesteps", "2", "--batch-size", "8", "--quiet"]
    sweep = ["features", "sweep", "--model", classcond_dir, "--data", image_folder, "--blocks", "mid", "--timesteps",
             "5,50", "--val-fraction", "0.3", "--quiet"]  # fmt: skip
    claims = ["claims", "--size", "tiny", "--stages", "compositional,features"]  # not --quiet: it logs its stages
    extract = ["features", "extract", *sweep[2:10], "--cache", "c3", "--json"]
    outs = two_ranks([[*match, "--out", "m2"], extract, [*sweep, "--cache", "c2", "--out", "f2"], [*claims, "--out", "cl2"]],
                     tmp_path)  # fmt: skip
    extracted = [json.loads(next(x for x in o.splitlines() if x.startswith('{"images"'))) for o in outs]
    assert [e["unet_forwards"] for e in extracted] == [9, 9] and any(e["complete"] for e in extracted)
    for args in ([*match, "--out", "m1"], [*sweep, "--cache", "c1", "--out", "f1"]):  # the same commands, one process
        code, output, exc = cli(*[tmp_path / a if a in ("m1", "c1", "f1") else a for a in args])
        assert code == 0, (output, exc)
    # match: two groups per rank, metrics.json written by the last one, equal to one process's
    assert [len((tmp_path / "m2/shards" / f"part-0000{r}.jsonl").read_text().splitlines()) for r in (0, 1)] == [2, 2]
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("m1", "m2"))
    assert m2 == m1
    r1, r2 = (MatchResult.load(tmp_path / d) for d in ("m1", "m2"))
    np.testing.assert_allclose(np.stack(r2.score_mats), np.stack(r1.score_mats), rtol=1e-5)
    # features: each rank extracted one of the two timesteps; the one that found both cached fitted the heads
    f1, f2 = (json.loads((tmp_path / d / "features_sweep_details.json").read_text()) for d in ("f1", "f2"))
    assert f1["unet_forwards_train"] == 18 and f2["unet_forwards_train"] == 9
    s1, s2 = (json.loads((tmp_path / d / "features_sweep.json").read_text()) for d in ("f1", "f2"))
    assert (s2["val_acc"], s2["best"]) == (s1["val_acc"], s1["best"])
    # claims: one stage per rank, each run once; the last process's table holds both stages' rows
    table = json.loads((tmp_path / "cl2" / "claims_table.json").read_text())
    for stage in ("compositional", "features"):
        assert json.loads((tmp_path / "cl2" / stage / "stage.json").read_text())["claims"] == table["by_stage"][stage]
        assert table["stages"][stage]["reused"] is False
    assert len(table["by_stage"]) == 2
    assert "[1/2] compositional (tiny)" in outs[0] and "features (tiny)" not in outs[0]
    assert "[2/2] features (tiny)" in outs[1] and "compositional (tiny)" not in outs[1]


def test_claims_a_late_rank_does_not_call_the_others_stage_reused(tmp_path):
    # rank 1 starts only after rank 0 has finished its stage: that stage ran in this launch, it was not reused
    claims = ["claims", "--size", "tiny", "--stages", "compositional,features", "--quiet", "--out", tmp_path / "cl"]
    for rank in (0, 1):
        code, output, exc = cli(*claims, rank=rank)
        assert code == 0, (output, exc)
    table = json.loads((tmp_path / "cl" / "claims_table.json").read_text())
    assert {s: d["reused"] for s, d in table["stages"].items()} == {"compositional": False, "features": False}
    for rank in (1, 0):  # the same launch again: now both are reused, whichever rank writes the table
        assert cli(*claims, rank=rank)[0] == 0
    table = json.loads((tmp_path / "cl" / "claims_table.json").read_text())
    assert {s: d["reused"] for s, d in table["stages"].items()} == {"compositional": True, "features": True}


def test_temps_of_other_machines_are_left_alone(tmp_path):
    """A shared --out: a process starting on one machine must not delete a temp file another machine is writing."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine, other = tmp_path / f".metrics.json.tmp-{HOST}@{int(dead.stdout)}", tmp_path / f".metrics.json.tmp-x{HOST}@{os.getpid() + 99999}"
    for p in (mine, other):
        p.write_text("x")
    remove_stale_temps(tmp_path)
    assert not mine.exists() and other.exists()
