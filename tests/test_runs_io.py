"""The runs/ seam: one atomic write helper, one stale-temp cleanup, one settings guard for every task."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from diffdisc.backbones.capabilities import DIFFUSION
from diffdisc.errors import DiffdiscError
from diffdisc.runs import (
    HOST,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_settings,
    remove_stale_temps,
    temp_path,
)

# every guard's refusal: "<dir> was <verb> with key=old, now key=new: other settings (key: old -> new, ...); <hint>"
SHARED = r"was (made|generated|trained) with (\S+)=\S+, now \2=\S+: other settings \(\S+: .* -> .*\); "


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_failed_writes_keep_the_old_file_and_leave_no_temp(tmp_path):
    target = tmp_path / "w.bin"
    atomic_write_text(target, "old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and not _leftovers(tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(DiffdiscError, match="could not write"):  # os.replace onto a folder fails
        atomic_write_text(tmp_path / "d", "x")
    assert not _leftovers(tmp_path)
    assert atomic_write_bytes(tmp_path / "a" / "b.png", b"png") and not atomic_write_bytes(tmp_path / "a" / "b.png", b"png")
    assert temp_path(target).name == f".w.bin.tmp-{HOST}@{os.getpid()}"


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()
    (tmp_path / f".run.json.tmp-{dead_pid}").write_text("x")
    (tmp_path / f".run.json.tmp-{live_pid}").write_text("x")
    (tmp_path / f".tmp-step-000010-{dead_pid}").mkdir()
    (tmp_path / f".tmp-step-000020-{live_pid}").mkdir()
    remove_stale_temps(tmp_path)
    remove_stale_temps(tmp_path, ".tmp-step-*")
    assert sorted(_leftovers(tmp_path)) == sorted([f".run.json.tmp-{live_pid}", f".tmp-step-000020-{live_pid}"])


def test_result_store_guard(tmp_path):
    from diffdisc.runs import RunStore

    s = {"model": {"name": "m", "fingerprint": "f"}, "score": {"batch_size": 8, "seed": 0}, "adaptive": {"n_timesteps": 20}}
    RunStore(tmp_path, None, s).close()
    RunStore(tmp_path, None, {**s, "score": {"batch_size": 64, "seed": 0}, "model": {**s["model"], "label": "x"}}).close()
    with pytest.raises(DiffdiscError, match=SHARED) as e:
        RunStore(tmp_path, None, {**s, "adaptive": {"n_timesteps": 30}, "score": {"batch_size": 8, "seed": 1}})
    assert "(adaptive.n_timesteps: 20 -> 30, score.seed: 0 -> 1)" in str(e.value)  # meaningful keys first


def test_synth_guard(tmp_path):
    from diffdisc.tasks import synth

    stub = SimpleNamespace(info=SimpleNamespace(name="m", fingerprint="f", family="classcond"), capabilities=DIFFUSION)
    cfg = synth.SynthConfig(per_class=2)
    settings = {"model": "m", "fingerprint": "f", "classes": ["a"], **json.loads(json.dumps(cfg.__dict__))}
    (tmp_path / "synth.json").write_text(json.dumps({**settings, "per_class": 3}))
    with pytest.raises(DiffdiscError, match=SHARED + "use another --out") as e:
        synth.generate(stub, ["a"], cfg, out=tmp_path)
    assert "per_class: 3 -> 2" in str(e.value)
    (tmp_path / "synth.json").write_text(json.dumps({**settings, "batch_size": 7}))
    assert check_settings(tmp_path / "synth.json", settings, runtime_keys=synth.RUNTIME_KEYS)["batch_size"] == 7


def test_train_guard(tmp_path):
    from diffdisc.training.recipes import get_recipe
    from diffdisc.training.train import _check_config

    logs = []
    _check_config(tmp_path, get_recipe("tiny"), logs.append)
    _check_config(tmp_path, get_recipe("tiny", steps=7, checkpoint_every=3, name="x"), logs.append)  # RESUMABLE
    with pytest.raises(DiffdiscError, match=SHARED + "use the same config") as e:
        _check_config(tmp_path, get_recipe("tiny", lr=0.5), logs.append)
    assert re.search(r"was trained with lr=\S+, now lr=0.5: other settings \(lr: \S+ -> 0.5\);", str(e.value))
    stored = json.loads((tmp_path / "train_config.json").read_text())
    (tmp_path / "train_config.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "seed"}))
    _check_config(tmp_path, get_recipe("tiny"), logs.append)
    assert logs == [f"{tmp_path / 'train_config.json'} predates option 'seed'; using {stored['seed']!r}"]


def test_baseline_guard(tmp_path, image_folder):
    from diffdisc.tasks.baseline import ClassifierConfig, train_classifier

    cfg = ClassifierConfig(model="resnet10t", epochs=1, batch_size=8, image_size=16)
    last = tmp_path / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "state.json").write_text(json.dumps({"epoch": 1, "config": {**cfg.to_dict(), "lr": 0.1}}))
    with pytest.raises(DiffdiscError, match=SHARED + "use another --out") as e:
        train_classifier(image_folder, cfg, out=tmp_path, log=lambda m: None)
    assert "lr: 0.1 -> 0.002" in str(e.value)


def test_refused_second_writer_leaves_the_running_ones_settings_file(tmp_path):
    """A second process with a changed runtime key (synth's batch_size) is refused before it writes anything."""
    from diffdisc.runs import RunStore

    kw = dict(settings_file="synth.json", shards=False, rewrite=True, runtime_keys=("batch_size",))
    with RunStore(tmp_path, None, {"seed": 0, "batch_size": 8}, **kw):
        before = (tmp_path / "synth.json").read_text()
        with pytest.raises(DiffdiscError, match="another process is already writing"):
            RunStore(tmp_path, None, {"seed": 0, "batch_size": 16}, **kw)
        assert (tmp_path / "synth.json").read_text() == before
