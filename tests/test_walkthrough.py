"""The README's own-dataset walkthrough runs as written (tiny recipe, few steps, a tiny folder)."""

import re
import shlex
import shutil
from pathlib import Path

from conftest import run_main

README = Path(__file__).resolve().parents[1] / "README.md"
# only what makes it fast here: a tiny recipe, 2 steps, 2 timesteps, one small epoch
FAST = {"train": ["--steps", "2"], "classify": ["--timesteps", "2", "--stages", "1:2,2:1"],
        "features": ["--batch-size", "8"], "baseline": ["--epochs", "1", "--batch-size", "4", "--image-size", "16"]}  # fmt: skip


def walkthrough() -> list[list[str]]:
    block = re.search(r"<!-- walkthrough -->\n```\n(.*?)```\n<!-- /walkthrough -->", README.read_text(), re.S)
    assert block, "README lost its walkthrough block"
    return [shlex.split(line.split("  #")[0])[1:] for line in block.group(1).splitlines() if line.startswith("diffdisc ")]


def test_readme_walkthrough_runs_as_written(image_folder, tmp_path, monkeypatch, capsys, one_thread):
    for split in ("train", "test"):
        shutil.copytree(image_folder, tmp_path / "mydata" / split)
    monkeypatch.chdir(tmp_path)
    steps = walkthrough()
    assert [s[0] for s in steps] == ["train", "train", "classify", "classify", "features", "baseline", "report"]
    for args in steps:
        args = ["tiny" if a == "fmnist-classcond" else a for a in args] + FAST.get(args[0], [])
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 0, f"diffdisc {' '.join(args)} failed: {err[-800:]}"
    assert (tmp_path / "runs" / "mine" / "model").is_dir()
    page = (tmp_path / "runs" / "mine-report.html").read_text()
    assert "mine-halving" in page and "supervised baseline" in page and "mine-features" in page
    for run in ("mine-exhaustive", "mine-halving"):
        assert (tmp_path / "runs" / run / "metrics.json").is_file()
