"""A training directory carries the run.json header every diffdisc output has (task "train", version), while
train_config.json keeps only what `TrainConfig` reads back, and a directory trained before the header resumes."""

import json

import pytest

from diffdisc.runs import RUN_JSON, RUN_VERSION, run_task
from diffdisc.training.config import TrainConfig
from diffdisc.training.recipes import get_recipe
from diffdisc.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda m: None, "quiet": True}


def test_training_dir_has_the_header_and_a_config_that_reads_back(tmp_path):
    out = tmp_path / "run"
    train(get_recipe("tiny", steps=1), out, **QUIET)
    stored = json.loads((out / "train_config.json").read_text())
    head = json.loads((out / RUN_JSON).read_text())
    assert run_task(out) == "train" and head["version"] == RUN_VERSION
    assert {k: v for k, v in head.items() if k not in ("task", "version")} == stored  # the same settings
    assert "task" not in stored and "version" not in stored
    assert TrainConfig.from_dict(stored) == get_recipe("tiny", steps=1)

    (out / RUN_JSON).unlink()  # a directory trained before run.json existed resumes, and gains the header
    train(get_recipe("tiny", steps=2), out, **QUIET)
    assert json.loads((out / "train_config.json").read_text())["steps"] == 2
    assert run_task(out) == "train" and json.loads((out / RUN_JSON).read_text())["steps"] == 2
    assert TrainConfig.from_dict(json.loads((out / "train_config.json").read_text())) == get_recipe("tiny", steps=2)
