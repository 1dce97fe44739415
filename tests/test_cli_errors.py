"""CLI exit codes and user errors: Ctrl-C, failed doctor checks, --classes, warnings under --quiet/--json,
calibrating a contrastive run, atomic classifier.json."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import make_noise_folder, run_main
from diffdisc.errors import DiffdiscError


@pytest.fixture
def flat_folder(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "flat" / "a.png")
    return tmp_path / "flat"


def _ctrl_c_as_in_a_terminal():
    """A shell without job control starts background jobs with SIGINT ignored, and children inherit that (the
    command would then run to the end): give the child the default SIGINT a user's terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_exit_code_130_on_sigint(classcond_dir, tmp_path):
    data = make_noise_folder(tmp_path / "many", seed=0)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffdisc.cli", "classify", "--model", str(classcond_dir), "--data", str(data),
                             "--timesteps", "50", "--chunk", "1", "--quiet", "--out", str(out)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    deadline = time.time() + 120  # run.json is written inside the command, once the model and data are loaded
    while time.time() < deadline and proc.poll() is None and not (out / "run.json").exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the run must be interrupted mid-way"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: finished images are saved" in err and "Traceback" not in err


def test_doctor_exits_1_when_a_check_fails(monkeypatch, capsys):
    from diffdisc.backbones import registry

    monkeypatch.setattr(registry, "list_backbones", lambda pattern="*": ["no-such-shipped-model"])
    code, out, _ = run_main(monkeypatch, capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert [c["ok"] for c in report["checks"] if c["name"] == "no-such-shipped-model"] == [False]


def test_empty_classes_is_an_error(monkeypatch, capsys, classcond_dir, flat_folder, tmp_path):
    for bad in ("", " , "):
        code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", flat_folder,
                                "--classes", bad, "--out", tmp_path / "r", "--quiet")  # fmt: skip
        assert code == 1 and err.startswith("error: --classes") and err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()


def test_classes_from_file_allow_commas(monkeypatch, capsys, sd_dir, flat_folder, tmp_path):
    (tmp_path / "classes.txt").write_text("red, or green\n\n  blue cat  \n")
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", sd_dir, "--data", flat_folder, "--classes",
                            f"@{tmp_path / 'classes.txt'}", "--timesteps", "1", "--out", tmp_path / "r", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "run.json").read_text())["classes"] == ["red, or green", "blue cat"]
    code, _, err = run_main(monkeypatch, capsys, "sample", sd_dir, "--classes", f"@{tmp_path / 'missing.txt'}")
    assert code == 1 and "missing.txt" in err and err.strip().count("\n") == 0
    (tmp_path / "blank.txt").write_text("\n \n")
    code, _, err = run_main(monkeypatch, capsys, "synth", "generate", "--out", tmp_path / "s", "--model", sd_dir,
                            "--classes", f"@{tmp_path / 'blank.txt'}")  # fmt: skip
    assert code == 1 and "no class names" in err


@pytest.mark.parametrize("flag", [None, "--quiet", "--json"])
def test_python_warnings_are_silent_under_quiet_and_json(monkeypatch, capsys, sd_dir, flat_folder, tmp_path, flag):
    long_class = " ".join(["red"] * 20)  # longer than the tiny tokenizer's 12 tokens: "prompt ... truncated"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run_main(monkeypatch, capsys, "classify", "--model", sd_dir, "--data", flat_folder, "--classes",
                                f"{long_class},blue", "--timesteps", "1", "--out", tmp_path / "r", *([flag] if flag else []))  # fmt: skip
    assert code == 0, err
    truncated = [w for w in seen if "truncated" in str(w.message)]
    assert bool(truncated) == (flag is None)


def test_calibrate_contrastive_run_refuses_platt(monkeypatch, capsys, classcond_dir, image_folder, tmp_path):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.config import AdaptiveConfig
    from diffdisc.tasks.classify import ClassifyConfig, classify

    run = tmp_path / "run"
    classify(create_backbone(classcond_dir), image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2)), out=run)
    for shard in (run / "shards").glob("*.jsonl"):  # as a contrastive model records them: no U-Net calls
        recs = [json.loads(line) for line in shard.read_text().splitlines()]
        shard.write_text("".join(json.dumps({**r, "calls": 0, "n_calls": [0] * len(r["n_calls"])}) + "\n" for r in recs))
    code, out, err = run_main(monkeypatch, capsys, "calibrate", run, "--json")
    cal = json.loads(out)
    assert code == 0 and cal["temperature"] > 0 and cal["platt_log_calls"] is None
    assert "no Platt scaling" in err
    assert json.loads((run / "calibration.json").read_text())["platt_log_calls"] is None


def test_synth_train_writes_classifier_json_atomically(monkeypatch, image_folder, tmp_path, one_thread):
    """Disk full while classifier.json is written: the previous classifier.json must survive whole."""
    from diffdisc.tasks.synth_train import ClassifierConfig, train_classifier

    out = tmp_path / "clf"
    out.mkdir()
    (out / "classifier.json").write_text('{"previous": true}')
    real_open = io.open

    def disk_full_on_classifier_json(file, mode="r", *args, **kwargs):
        if "classifier.json" in os.fspath(file) and "w" in mode:
            real_open(file, mode, *args, **kwargs).close()  # opened (and, in place, truncated), then no space
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", disk_full_on_classifier_json)
    monkeypatch.setattr("builtins.open", disk_full_on_classifier_json)
    with pytest.raises((OSError, DiffdiscError), match="No space"):
        train_classifier(image_folder, ClassifierConfig(model="resnet10t", epochs=1, batch_size=8, image_size=16),
                         out=out, log=lambda m: None)  # fmt: skip
    assert json.loads((out / "classifier.json").read_text()) == {"previous": True}


def test_calibrate_exhaustive_run_refuses_platt(monkeypatch, capsys, classcond_dir, image_folder, tmp_path):
    """Every image of an exhaustive run has the same call count: log(calls) is constant, Platt is not identifiable."""
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.config import AdaptiveConfig
    from diffdisc.tasks.classify import ClassifyConfig, classify

    run = tmp_path / "run"
    classify(create_backbone(classcond_dir), image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2)), out=run)
    code, out, err = run_main(monkeypatch, capsys, "calibrate", run, "--json")
    assert code == 0 and json.loads(out)["platt_log_calls"] is None and "same number of U-Net calls" in err
