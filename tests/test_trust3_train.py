"""Issue 24, training side: model/ behind its checkpoint after a kill, a full disk while saving, Ctrl-C (bug 13);
the dry run's range and one progress line with one ETA (15); the default model name (16); `timesteps fit`
naming a training directory once (17); which epoch `baseline train` keeps (21)."""

import errno
import json
import logging
import os
import signal
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import run_main
from diffdisc.cli import app
from diffdisc.progress import INTERVAL_ENV
from diffdisc.results.training import checkpoints
from diffdisc.tasks import baseline as baseline_task
from diffdisc.training import train as train_mod
from diffdisc.training.objectives.classcond import ClassCondObjective
from diffdisc.training.recipes import get_recipe
from diffdisc.training.train import time_plan, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda m: None, "quiet": True}


def _exported_step(out) -> int:
    return json.loads((out / "model" / "diffdisc.json").read_text())["steps"]


def _temps(out) -> list[str]:
    return sorted(p.name for d in (out, out / "checkpoints") if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name)


class _Killed(BaseException):
    """kill -9 stand-in: nothing after it runs, no handler catches it."""


def test_kill_between_checkpoint_and_export_is_reexported_on_resume(tmp_path, grey_folder, monkeypatch):
    cfg = get_recipe("tiny", data=str(grey_folder), steps=2, checkpoint_every=1)
    real = train_mod.export

    def export(out, ema, obj, step, *a, **k):
        if step == 2:
            raise _Killed
        return real(out, ema, obj, step, *a, **k)

    monkeypatch.setattr(train_mod, "export", export)
    with pytest.raises(_Killed):
        train(cfg, tmp_path / "r", **QUIET)
    assert checkpoints(tmp_path / "r")[-1].name == "step-000002" and _exported_step(tmp_path / "r") == 1
    monkeypatch.setattr(train_mod, "export", real)
    logs = []
    train(cfg, tmp_path / "r", log=logs.append, quiet=True)
    assert _exported_step(tmp_path / "r") == 2
    assert any("held step 1: exporting step-000002" in m for m in logs), logs
    train(replace(cfg, name="renamed"), tmp_path / "r", **QUIET)  # finished, but --name relabels the export
    assert json.loads((tmp_path / "r" / "model" / "diffdisc.json").read_text())["name"] == "renamed"


def _full_disk_torch_save(real):
    """torch.save as it fails on a full disk: part of the file written, then a RuntimeError (not an OSError)."""

    def save(obj, f, *a, **k):
        if ".tmp-step-000002" in str(f):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, f, *a, **k)

    return save


def _full_disk_export(real):
    def save(self, model, dest):
        real(self, model, dest)  # part of model/ written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


@pytest.mark.parametrize("where", ["checkpoint", "export"])
def test_full_disk_while_saving_is_one_line_and_leaves_no_temp(tmp_path, grey_folder, monkeypatch, capsys, where):
    out = tmp_path / "r"
    args = ("train", "tiny", "--data", grey_folder, "--out", out, "--quiet")
    assert run_main(monkeypatch, capsys, *args, "--steps", "1")[0] == 0
    if where == "checkpoint":
        monkeypatch.setattr(torch, "save", _full_disk_torch_save(torch.save))
    else:
        monkeypatch.setattr(ClassCondObjective, "save", _full_disk_export(ClassCondObjective.save))
    code, _, err = run_main(monkeypatch, capsys, *args, "--steps", "2")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if where == "checkpoint":
        assert err.startswith(f"error: cannot write checkpoint step 2 in {out} (") and "step-000001 is intact" in err
        assert [p.name for p in checkpoints(out)] == ["step-000001"]
    else:
        assert "No space left on device" in err and "checkpoint step-000002 is saved" in err, err
    assert "free space and rerun the same command to resume" in err and "MiB free there" in err
    assert _temps(out) == [] and _exported_step(out) == 1
    monkeypatch.undo()
    assert run_main(monkeypatch, capsys, *args, "--steps", "2")[0] == 0 and _exported_step(out) == 2


@pytest.fixture
def sigint_handled():
    """Python's own SIGINT handler for the test: a suite started in the background (`nohup ... &`) inherits SIGINT
    ignored, which training rightly leaves alone, so the simulated Ctrl-C would never arrive."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _interrupt_at(monkeypatch, at: int) -> None:
    """Ctrl-C (a real SIGINT) while step `at` is being computed."""
    real, calls = train_mod._optimise, []

    def optimise(*a):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(train_mod, "_optimise", optimise)


def test_ctrl_c_checkpoints_the_steps_done_and_resumes_to_the_same_weights(tmp_path, grey_folder, monkeypatch, sigint_handled):
    cfg = get_recipe("tiny", data=str(grey_folder), steps=6, checkpoint_every=100)
    straight = load_file(train(cfg, tmp_path / "a", **QUIET) / "unet" / "diffusion_pytorch_model.safetensors")
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step 3 of 6: checkpoint step-000003 is saved; rerun"):
        train(cfg, tmp_path / "b", **QUIET)
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step-000003"] and _exported_step(tmp_path / "b") == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.undo()
    resumed = load_file(train(cfg, tmp_path / "b", **QUIET) / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_ctrl_c_in_the_cli_speaks_of_steps_and_exits_130(tmp_path, grey_folder, monkeypatch, sigint_handled):
    _interrupt_at(monkeypatch, 2)
    res = CliRunner().invoke(app, ["train", "tiny", "--data", str(grey_folder), "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 130, res.output
    assert "interrupted at step 2 of 20: checkpoint step-000002 is saved" in res.output and "images" not in res.output


def test_time_plan_gives_a_range_for_the_stopping_step():
    cfg = get_recipe("fmnist-classcond")  # 2000 steps
    msg = time_plan(cfg, 0, 8.0, max_minutes=40, spread=(6.0, 14.0))
    assert msg.startswith("warning: 8.000 s/step (measured 6.000-14.000)")
    assert "stops near step 300 (between 171 and 400) of 2000" in msg
    assert "within --max-minutes 1000" in time_plan(cfg, 0, 8.0, max_minutes=1000, spread=(6.0, 14.0))
    at_worst = time_plan(cfg, 0, 8.0, max_minutes=300, spread=(6.0, 14.0))  # fits at 8 s/step, not at 14
    assert at_worst.startswith("warning:") and "slowest rate measured --max-minutes 300 stops it near step 1285" in at_worst


def test_dry_run_times_more_steps_after_warm_up_and_names_the_model_after_out(tmp_path, grey_folder):
    res = CliRunner().invoke(app, ["train", "tiny", "--data", str(grey_folder), "--out", str(tmp_path / "mine"),
                                   "--dry-run", "--max-minutes", "0.0001"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "10 steps timed after 2 untimed warm-up steps" in res.output
    assert "s/step (measured " in res.output and "(between " in res.output
    assert res.output.startswith("mine (tiny): 20 steps")


def test_progress_is_time_based_and_one_line_per_update(tmp_path, grey_folder, monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "3600")  # the log's cadence is the progress interval, not every 20 steps
    logs = []
    train(get_recipe("tiny", data=str(grey_folder), steps=25, checkpoint_every=100), tmp_path / "q", log=logs.append,
          quiet=True)  # fmt: skip
    assert [m.split(" loss")[0] for m in logs if m.startswith("step ")] == ["step 25/25"], logs
    monkeypatch.setenv(INTERVAL_ENV, "0")
    code, _, err = run_main(monkeypatch, capsys, "train", "tiny", "--data", grey_folder, "--out", tmp_path / "t",
                            "--steps", "3", "--max-minutes", "60")  # fmt: skip
    assert code == 0, err
    progress = [x for x in err.splitlines() if " eta " in x]
    assert [x.split(" (")[0] for x in progress] == [f"train {i}/3" for i in range(4)], err  # no `step i/3` twin
    assert all(x.count("eta") == 1 and "loss" in x and "s/step" in x for x in progress[1:]), progress


def test_default_name_is_the_training_dir_not_recipe_and_data_folder(tmp_path, grey_folder, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "train", "tiny", "--data", grey_folder, "--out",
                            tmp_path / "mine", "--steps", "1", "--quiet")  # fmt: skip
    assert code == 0, err  # a folder called like the split (mydata/train) made `fmnist-classcond-train`
    assert json.loads((tmp_path / "mine" / "model" / "diffdisc.json").read_text())["name"] == "mine"


def test_timesteps_fit_says_once_that_model_is_a_training_dir(tmp_path, grey_folder, monkeypatch, capsys, caplog):
    train(get_recipe("tiny", data=str(grey_folder), steps=1), tmp_path / "mine", **QUIET)
    with caplog.at_level(logging.WARNING, logger="diffdisc"):
        code, _, err = run_main(monkeypatch, capsys, "timesteps", "fit", "--model", tmp_path / "mine", "--data", grey_folder,
                                "--out", tmp_path / "w.json", "--grid", "2", "--folds", "2")  # fmt: skip
    assert code == 0, err
    assert sum("is a training directory" in r.getMessage() for r in caplog.records) == 1


def test_baseline_train_says_which_epoch_it_kept(image_folder, tmp_path, monkeypatch, capsys):
    accs = iter([0.982, 0.980])
    monkeypatch.setattr(baseline_task, "_accuracy", lambda *a: next(accs))
    code, out, err = run_main(monkeypatch, capsys, "baseline", "train", "--data", image_folder, "--out", tmp_path / "c",
                              "--model", "resnet10t", "--epochs", "2", "--batch-size", "8", "--image-size", "16",
                              "--test", image_folder)  # fmt: skip
    assert code == 0, err
    assert "epoch 2/2 loss" in err and "val acc 0.980" in err
    (last,) = [x for x in err.splitlines() if x.startswith("kept epoch")]
    assert last.startswith("kept epoch 1 (val acc 0.982, the best) in ") and last.endswith("; last epoch 2: val acc 0.980")
    assert out.strip().endswith("of the model kept from epoch 1")
