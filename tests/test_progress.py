"""Progress without a terminal (plain periodic lines) and the shared --threads option (issue 14, items 7 and 10)."""

import json
import os
import re
import subprocess
import sys

import typer

from diffdisc import cli
from diffdisc.progress import INTERVAL_ENV, step_progress

LINE = re.compile(
    r"^(?P<what>[\w ]+) (?P<done>\d+)/(?P<total>\d+) \(\d+%\)  .*elapsed [\d:]+  eta ([\d:]+|\?)$"
)


def _lines(err: str, what: str) -> list[re.Match]:
    return [m for m in map(LINE.match, err.splitlines()) if m and m["what"] == what]


def _run(*args, **env) -> subprocess.CompletedProcess:
    """`diffdisc ARGS` in a fresh process with stderr piped: not a TTY, as under nohup or a batch job."""
    return subprocess.run([sys.executable, "-m", "diffdisc.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=120)  # fmt: skip


def _main(monkeypatch, *args) -> int:
    """`diffdisc ARGS` in this process (stderr captured by pytest: no TTY either); the exit code."""
    monkeypatch.setattr(sys, "argv", ["diffdisc", *map(str, args)])
    try:
        cli.main()
    except SystemExit as e:
        return e.code
    return 0


def test_plain_lines_every_interval_and_a_final_one(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with step_progress("features") as update:
        update(0, 4)
        update(2, 4, "t=50", rate=1.0)
        update(4, 4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(LINE.match(x) for x in lines), lines  # the last one is not printed twice
    assert "features 2/4 (50%)  t=50  " in lines[1] and lines[1].endswith("eta 0:00:02")
    assert lines[2].startswith("features 4/4 (100%)") and lines[2].endswith("eta 0:00:00")

    monkeypatch.setenv(INTERVAL_ENV, "3600")
    with step_progress("features") as update:
        for i in range(5):
            update(i, 4)
    (final,) = capsys.readouterr().err.splitlines()  # within the interval: only the final line
    assert final.startswith("features 4/4")
    with step_progress("features", enabled=False) as update:
        assert update is None


def test_classify_without_a_tty_prints_progress_lines(
    monkeypatch, capsys, classcond_dir, image_folder, tmp_path
):
    args = ("classify", "--model", classcond_dir, "--data", image_folder, "--timesteps", "2", "--chunk", "3")
    p = _run(*args, "--out", tmp_path / "a", **{INTERVAL_ENV: "0"})
    assert p.returncode == 0, p.stderr
    lines = _lines(p.stderr, "classify")
    assert [(int(m["done"]), int(m["total"])) for m in lines] == [(3, 9), (6, 9), (9, 9)], p.stderr
    assert re.search(r"\d+\.\d\d img/s  6 calls/img  acc \d+\.\d%", lines[-1].group(0))
    assert lines[-1].group(0).endswith("eta 0:00:00") and re.search(r"eta \d", lines[0].group(0))
    monkeypatch.setenv(
        INTERVAL_ENV, "0"
    )  # --quiet: in this process (stderr captured, no TTY either), no lines
    assert _main(monkeypatch, *args, "--out", tmp_path / "b", "--quiet") == 0
    assert not _lines(capsys.readouterr().err, "classify")


def test_train_and_synth_train_print_the_same_lines(monkeypatch, capsys, image_folder, tmp_path, one_thread):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert _main(monkeypatch, "train", "tiny", "--out", tmp_path / "t", "--steps", "2") == 0
    assert [m["done"] for m in _lines(capsys.readouterr().err, "train")][-1] == "2"
    assert _main(monkeypatch, "synth", "train", "--data", image_folder, "--out", tmp_path / "c", "--model", "resnet10t",
                 "--epochs", "2", "--batch-size", "8") == 0  # fmt: skip
    lines = _lines(capsys.readouterr().err, "synth train")
    assert [m["done"] for m in lines] == [
        str(i) for i in range(1, int(lines[-1]["total"]) + 1)
    ]  # one per step
    assert "epoch 2/2" in lines[-1].group(0)


def test_every_command_takes_threads():
    def commands(group, path=()):
        for name, c in group.commands.items():
            yield from commands(c, (*path, name)) if hasattr(c, "commands") else [((*path, name), c)]

    found = list(commands(typer.main.get_command(cli.app)))
    assert len(found) > 10
    for path, c in found:
        assert any(p.name == "threads" for p in c.params), path
    help_ = _run("doctor", "--help").stdout
    assert "--threads" in help_ and "torch CPU threads (default: torch's)" in help_


def test_threads_sets_torch_threads_in_a_fresh_process():
    """doctor without loading the shipped models (a few seconds), then the interop setting of that process."""
    code = ("import sys, torch; from diffdisc.backbones import registry; registry.list_backbones = lambda pattern='*': []\n"
            "from diffdisc import cli; sys.argv = ['diffdisc', 'doctor', '--json', '--threads', '1']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\nprint(torch.get_num_interop_threads())")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"})  # fmt: skip
    report, interop = p.stdout.splitlines()
    device = [c["value"] for c in json.loads(report)["checks"] if c["name"] == "device"]
    assert device in (["cpu (1 threads)"], [v for v in device if v.startswith("cuda")]), p.stderr
    assert interop == "1"
