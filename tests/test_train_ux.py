"""Training a recipe on one's own data without reading the source: CPU settings and --dry-run, ETA and the
--max-minutes plan, the resize line, resume without repeating options, a training dir as --model, --name."""

import json
import logging
import os
from collections import Counter

import pytest
from typer.testing import CliRunner

from diffdisc.backbones.registry import create_backbone
from diffdisc.cli import app
from diffdisc.errors import DiffdiscError
from diffdisc.training.objectives import resize_note
from diffdisc.training.recipes import get_recipe
from diffdisc.training.train import resolve_config, time_plan, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, grey_folder):
    """`diffdisc train tiny --data FOLDER --steps 2` into a training directory (checkpoint every step)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(get_recipe("tiny", data=str(grey_folder), steps=2, checkpoint_every=1), out, log=lambda m: None, quiet=True)
    return out


def test_help_shows_cpu_settings_and_dry_run():
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    assert "--dry-run" in res.output and "--name" in res.output
    line = next(x for x in res.output.splitlines() if "fmnist-classcond " in x and "s/step" in x)
    assert "2000" in line and "128" in line and "min" in line


def test_dry_run_times_steps_and_writes_nothing(tmp_path, grey_folder):
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["train", "tiny", "--data", str(grey_folder), "--out", str(out), "--dry-run",
                                   "--max-minutes", "0.0001"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "20 steps (0 done), batch 8, 6 images" in res.output
    assert "s/step" in res.output and "--max-minutes 0.0001 fits ~" in res.output
    assert "training images resized 28×28 -> 16×16 (the model's size): bicubic" in res.output
    assert "documented CPU setting: --steps 20 --batch-size 8" in res.output
    assert not out.exists()


def test_time_plan_warns_when_max_minutes_stops_short():
    cfg = get_recipe("fmnist-classcond")
    msg = time_plan(cfg, 6, 4.3, max_minutes=40)  # the run: 40 min at 4.3 s/step
    assert msg.startswith("warning:") and "stops near step 564 of 2000" in msg
    assert "within --max-minutes 200" in time_plan(cfg, 6, 4.3, max_minutes=200)
    assert time_plan(cfg, 1994, 2.0, None) == "2.000 s/step: 6 steps to go, ~0:00:12"


def test_resize_note_names_sizes_interpolation_and_grey_conversion():
    cfg = get_recipe("fmnist-classcond")  # 32x32, 1 channel
    assert resize_note(Counter({(32, 32): 5}), Counter({"L": 5}), cfg) is None
    note = resize_note(Counter({(28, 28): 8, (32, 32): 2, (640, 480): 1}), Counter({"L": 10, "RGB": 1}), cfg)
    assert note == ("training images resized 28×28 (8 images), 640×480 (1 images) -> 32×32 (the model's size): "
                    "bicubic resize of the shorter side, then centre crop; 9 of 11 images; "
                    "colour converted to grey (1-channel model)")  # fmt: skip


def test_log_has_resize_line_plan_and_eta(tmp_path, grey_folder):
    logs = []
    train(get_recipe("tiny", data=str(grey_folder), steps=8, checkpoint_every=4), tmp_path / "r", log=logs.append,
          quiet=True, max_minutes=60)  # fmt: skip
    assert sum("training images resized 28×28 -> 16×16 (the model's size): bicubic" in m for m in logs) == 1
    assert any(m.endswith("2 steps to go, ~0:00:00, within --max-minutes 60") for m in logs), logs
    assert any(m.startswith("step 8/8 ") and " eta 0:00:00" in m for m in logs), logs
    assert any(f"exported to {tmp_path / 'r' / 'model'}" in m for m in logs)


def test_rerun_resumes_with_stored_settings(tmp_path, grey_folder):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "tiny", "--data", str(grey_folder), "--out", str(out), "--steps", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train", "tiny", "--out", str(out), "--steps", "2"])  # no --data
    assert res.exit_code == 0, res.output
    assert f"settings stored in {out / 'train_config.json'}: data={str(grey_folder)!r}" in res.output
    assert "resumed from step-000001" in res.output
    assert json.loads((out / "model" / "diffdisc.json").read_text())["steps"] == 2
    logs = []
    assert resolve_config("tiny", out, log=logs.append).steps == 2 and logs  # stored steps, not the recipe's 20
    other = tmp_path / "other"
    other.mkdir()
    res = CliRunner().invoke(app, ["train", "tiny", "--out", str(out), "--data", str(other)])  # an explicit change
    assert res.exit_code != 0 and "was trained with data=" in str(res.exception)
    with pytest.raises(DiffdiscError, match="holds a 'tiny' run, not 'tiny-text'"):
        resolve_config("tiny-text", out)


def test_training_dir_loads_its_model(run_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="diffdisc"):
        bb = create_backbone(run_dir)
    assert bb.info.class_names == ("bars", "dots")
    assert [r.getMessage() for r in caplog.records] == [
        f"{run_dir} is a training directory: using its exported model {run_dir / 'model'}"
    ]
    (tmp_path / "model").mkdir()  # model/ without train_config.json: not sure, so ask
    with pytest.raises(DiffdiscError, match=f"did you mean {tmp_path / 'model'}"):
        create_backbone(tmp_path)


def test_name_defaults_to_the_training_dir_and_may_change_on_resume(run_dir, grey_folder):
    meta = json.loads((run_dir / "model" / "diffdisc.json").read_text())
    assert meta["name"] == run_dir.name  # not recipe + data folder (`fmnist-classcond-train` for mydata/train)
    model = train(resolve_config("tiny", run_dir, name="my-model", steps=3), run_dir, log=lambda m: None, quiet=True)
    assert json.loads((model / "diffdisc.json").read_text())["name"] == "my-model"
    assert create_backbone(model).info.label == "my-model"
