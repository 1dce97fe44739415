"""Training recipe: a killed run resumes to the same weights, config changes are refused, exports load."""

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffdisc.backbones.classcond import ClassCondBackbone
from diffdisc.errors import DiffdiscError
from diffdisc.results import TrainResult
from diffdisc.training.export import export_checkpoint
from diffdisc.training.recipes import get_recipe
from diffdisc.training.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # conftest sets it too; hub look-ups would hang offline
QUIET = {"log": lambda m: None, "quiet": True}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A synthetic ImageFolder: 3 classes x 4 RGB images of another size (resized by the recipe)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "square", "stripe"]):
        (root / name).mkdir()
        for i in range(4):
            a = (rng.random((20, 20, 3)) * 80 + 60 * c).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def _weights(model_dir):
    return load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_resume_gives_same_weights_as_uninterrupted(tmp_path, folder):
    cfg = get_recipe("tiny", data=str(folder))  # 20 steps, checkpoint every 5
    a = _weights(train(cfg, tmp_path / "straight", **QUIET))
    train(replace(cfg, steps=10), tmp_path / "resumed", **QUIET)  # "killed" after step 10
    junk = tmp_path / "resumed" / "checkpoints" / ".tmp-step-000015-999999999"  # a save killed half-way
    junk.mkdir()
    assert export_checkpoint(tmp_path / "resumed").joinpath("unet").is_dir()  # export while "training"
    logs = []
    model_dir = train(cfg, tmp_path / "resumed", log=logs.append, quiet=True)
    assert any("resumed from step-000010" in m for m in logs)
    b = _weights(model_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step-000015",
        "step-000020",
    ]

    bb = ClassCondBackbone.from_pretrained(model_dir)
    meta = bb.info.metadata
    assert meta["steps"] == 20 and meta["null_class"] == 3 and len(meta["data_hash"]) == 64
    assert bb.info.class_names == ("circle", "square", "stripe") and bb.info.image_channels == 1
    x0 = bb.encode(torch.zeros(2, 1, 16, 16))
    eps = bb.predict_eps(x0, torch.tensor([100, 900]), bb.conditions(["square", "stripe"]))
    assert eps.shape == (2, 1, 16, 16) and torch.isfinite(eps).all()
    assert torch.isfinite(bb.predict_eps(x0, torch.tensor([100, 900]), bb.null_condition().expand(2))).all()


def test_changed_config_is_refused(tmp_path, folder):
    cfg = get_recipe("tiny", data=str(folder), steps=2, checkpoint_every=1)
    train(cfg, tmp_path / "r", **QUIET)
    with pytest.raises(DiffdiscError, match="lr=0.5"):
        train(cfg.with_options(lr=0.5), tmp_path / "r", **QUIET)  # lr lives in cfg.optimizer
    model_dir = train(replace(cfg, steps=3), tmp_path / "r", **QUIET)  # only `steps` may change
    assert ClassCondBackbone.from_pretrained(model_dir).info.metadata["steps"] == 3
    r = TrainResult.load(tmp_path / "r")  # the directory read back: steps done of the configured total
    m = r.metrics()
    assert (m["steps"], m["total_steps"], r.model_dir, r.problems) == (3, 3, model_dir, []) and "loss" not in m


def test_train_result_summarises_a_logged_loss_curve(tmp_path):
    (tmp_path / "train_config.json").write_text('{"recipe": "tiny", "steps": 60}')
    (tmp_path / "train.log").write_text("2024-01-01 00:00:00 step 20/60 loss 0.5000 0.1 s/step eta 0:04\n"
                                        "step 40/60 loss 0.2000 0.1 s/step eta 0:02\nresumed from step-000020\n"
                                        "step 40/60 loss 0.3000 0.1 s/step eta 0:02\n")  # fmt: skip
    r = TrainResult.load(tmp_path)
    assert r.losses == [(20, 0.5), (40, 0.3)] and any("no checkpoint" in p for p in r.problems)
    assert r.metrics() == {"steps": 0, "total_steps": 60, "wall_time_s": None,
                           "loss": {"first": 0.5, "last": 0.3, "min": 0.3, "points": 2}}  # fmt: skip


def test_unknown_recipe_and_option():
    with pytest.raises(DiffdiscError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(DiffdiscError, match="unknown training option"):
        get_recipe("tiny", learning_rate=1)
