"""Cue conflict: class-correlated colours reach the training scenes, fine-tuning from a model directory, the
cue-conflict probe's items (shape of one class, class colour of another) and its shape-bias metric."""

import json
import os
import re

import numpy as np
import pytest
import torch

from diffdisc.backbones.registry import create_backbone, shipped_models_dir
from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_shipped_subset
from diffdisc.datasets.probes import colour_cue_classes, make_probe
from diffdisc.datasets.scenes import COLOURS, PALETTE, class_colour
from diffdisc.errors import DiffdiscError
from diffdisc.training.config import TrainConfig
from diffdisc.training.objectives import Captioned
from diffdisc.training.recipes import RECIPES, get_recipe
from diffdisc.training.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUIET = {"log": lambda m: None, "quiet": True}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return train(get_recipe("tiny-text", steps=2), tmp_path_factory.mktemp("text"), **QUIET)


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    return train(get_recipe("tiny-clip", steps=2), tmp_path_factory.mktemp("clip"), **QUIET)


def _class_colour_share(captions: list[str]) -> float:
    """Share of "<colour> <class>" mentions in captions whose colour is the class's class colour."""
    names = "|".join(sorted((re.escape(n) for n in CLASS_NAMES), key=len, reverse=True))
    pairs = [m for c in captions for m in re.findall(rf"\b({'|'.join(COLOURS)}) ({names})\b", c)]
    assert len(pairs) > 300
    return float(np.mean([col == class_colour(CLASS_NAMES.index(name)) for col, name in pairs]))


def test_colour_correlation_reaches_the_training_captions():
    share = {}
    for p in (0.0, 0.9):
        _, variants, *_ = Captioned._load(get_recipe("tiny-text", scenes=400, colour_correlation=p))
        share[p] = _class_colour_share([full for full, _ in variants])
    assert share[0.0] < 0.25  # uniform colours: 1/8 expected
    assert 0.85 < share[0.9] < 0.97  # 0.9 + 0.1 x (chance of drawing it anyway)
    assert RECIPES["fmnist-scenes-text-cc"].colour_correlation == 0.9
    assert RECIPES["fmnist-scenes-text"].colour_correlation == 0.0
    assert RECIPES["fmnist-scenes-clip-cc"] == RECIPES["fmnist-scenes-clip"].__class__(
        **{**RECIPES["fmnist-scenes-clip"].__dict__, "recipe": "fmnist-scenes-clip-cc", "colour_correlation": 0.9}
    )
    with pytest.raises(DiffdiscError, match="generated scenes"):  # refused before any file is written
        get_recipe("tiny", colour_correlation=0.5)
    with pytest.raises(DiffdiscError, match=r"in \[0, 1\]"):
        get_recipe("tiny-text", colour_correlation=1.5)


def _closest_colour(image: np.ndarray) -> str:
    """The palette colour whose hue (normalised RGB) matches the image's brightest pixel."""
    px = image.reshape(-1, 3).astype(float)
    v = px[px.sum(1).argmax()]
    return min(COLOURS, key=lambda c: np.abs(v / v.max() - np.array(PALETTE[c]) / max(PALETTE[c])).sum())


def test_cue_conflict_items_are_seeded_and_conflicting():
    a, b, c = make_probe("cue-conflict", 30, seed=0), make_probe("cue-conflict", 30, seed=0), make_probe("cue-conflict", 30, seed=1)
    assert [g.id for g in a] == [g.id for g in b] and all(np.array_equal(x.images[0], y.images[0]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.images[0], y.images[0]) for x, y in zip(a, c, strict=True))
    cue = colour_cue_classes(len(CLASS_NAMES))
    assert cue == [2, 3, 4, 5, 6, 7]  # t-shirt/bag share red, trouser/ankle boot green
    images, labels, _ = load_shipped_subset()
    for i, g in enumerate(a):
        assert len(g.images) == 1 and len(g.captions) == 2
        shape, colour = CLASS_NAMES.index(g.tags[1]), CLASS_NAMES.index(g.tags[2])
        assert shape == i % len(CLASS_NAMES) and colour in cue and colour != shape
        assert g.captions == (f"{'an' if g.tags[1][0] in 'aeiou' else 'a'} {g.tags[1]}",
                              f"{'an' if g.tags[2][0] in 'aeiou' else 'a'} {g.tags[2]}")  # fmt: skip
        hue = _closest_colour(g.images[0])
        assert hue == class_colour(colour) and hue != class_colour(shape)  # another class's colour, never its own
        silhouette = g.images[0][2:30, 2:30].max(-1) > 0  # the shape is a real test item of class A
        assert any(np.array_equal(silhouette, src > 0) for src in images[labels == shape])
    # the four earlier probes keep their v1 items and ids
    assert make_probe("binding", 2)[0].id == "binding-v1-s0-00000"


def test_shape_bias_metric_on_one_image_groups():
    from diffdisc.scoring.match_metrics import match_metrics

    m = match_metrics([np.array([[0.1, 0.2]]), np.array([[0.3, 0.2]]), np.array([[0.1, 0.5]]), np.array([[0.2, 0.2]])])
    assert m["text"]["mean"] == 0.5 and m["chance"] == {"text": 0.5} and "image" not in m  # a tie is no decision


def test_init_from_loads_the_weights(text_model, clip_model, tmp_path):
    from safetensors.torch import load_file

    tuned = train(get_recipe("tiny-text", init_from=str(text_model), colour_correlation=0.9, steps=0), tmp_path / "t", **QUIET)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        base, new = load_file(str(text_model / part)), load_file(str(tuned / part))
        assert base.keys() == new.keys() and all(torch.equal(base[k], new[k]) for k in base)
    assert (tuned / "tokenizer" / "tokenizer.json").read_text() == (text_model / "tokenizer" / "tokenizer.json").read_text()
    meta = json.loads((tuned / "diffdisc.json").read_text())
    assert meta["colour_correlation"] == 0.9 and meta["config"]["colour_correlation"] == 0.9
    assert meta["init_from"]["dir"] == str(text_model) and meta["init_from"]["steps"] == 2
    # a fine-tune's first step starts from the base weights, not from random ones
    one = train(get_recipe("tiny-text", init_from=str(text_model), steps=1, ema_warmup=False, ema_decay=1.0),
                tmp_path / "one", **QUIET)  # fmt: skip
    base = load_file(str(text_model / "unet/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(v, base[k]) for k, v in load_file(str(one / "unet/diffusion_pytorch_model.safetensors")).items())
    clip = train(get_recipe("tiny-clip", init_from=str(clip_model), steps=0), tmp_path / "c", **QUIET)
    base, new = load_file(str(clip_model / "open_clip_model.safetensors")), load_file(str(clip / "open_clip_model.safetensors"))
    assert all(torch.equal(base[k], new[k]) for k in base)
    with pytest.raises(DiffdiscError, match="is a 'text' model"):
        train(get_recipe("tiny-clip", init_from=str(text_model)), tmp_path / "x", **QUIET)
    with pytest.raises(DiffdiscError, match="does not fit"):
        train(get_recipe("tiny-text", init_from=str(text_model), text_width=32), tmp_path / "y", **QUIET)
    with pytest.raises(DiffdiscError, match="not a model directory"):
        train(get_recipe("tiny-text", init_from=str(tmp_path / "nowhere")), tmp_path / "z", **QUIET)


def test_old_metadata_and_run_dirs_without_the_new_fields_still_load(text_model, tmp_path):
    shipped = json.loads((shipped_models_dir() / "fmnist-scenes-text" / "diffdisc.json").read_text())
    assert "colour_correlation" not in shipped["config"]
    cfg = TrainConfig.from_dict(shipped["config"])
    assert cfg.colour_correlation == 0.0 and cfg.init_from is None
    # a model dir and a run dir written before the fields existed
    run = tmp_path / "old"
    train(get_recipe("tiny-text", steps=1), run, **QUIET)
    for path in (run / "model" / "diffdisc.json", run / "train_config.json"):
        d = json.loads(path.read_text())
        for k in ("colour_correlation", "init_from"):
            d.pop(k, None)
            d.get("config", {}).pop(k, None)
        path.write_text(json.dumps(d))
    assert create_backbone(run / "model").info.metadata["config"].get("colour_correlation") is None
    logs = []
    train(get_recipe("tiny-text", steps=2), run, log=logs.append, quiet=True)  # resumes
    assert any("predates option 'colour_correlation'" in m for m in logs) and any("resumed" in m for m in logs)


def test_cue_conflict_probe_for_diffusion_and_contrastive_models(text_model, clip_model, tmp_path):
    from typer.testing import CliRunner

    from diffdisc.cli import app
    from diffdisc.tasks.probe import ProbeConfig, run_probes

    rows = run_probes([create_backbone(text_model), create_backbone(clip_model)], ["cue-conflict"],
                      ProbeConfig(n=4, n_timesteps=2), out=tmp_path / "p")  # fmt: skip
    assert [r["kind"] for r in rows] == ["diffusion", "contrastive"]
    for r in rows:
        assert r["probe"] == "cue-conflict" and r["n"] == 4 and r["chance"] == {"text": 0.5}
        assert r["shape_bias"] == r["text"] and 0 <= r["text"]["mean"] <= 1 and "group" not in r
    assert rows[0]["calls_per_group"] == 4 and rows[1]["calls_per_group"] == 0  # 2 captions x 2 t
    res = CliRunner().invoke(app, ["probe", "cue-conflict", "--model", str(clip_model), "--n", "4",
                                   "--out", str(tmp_path / "cli")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cue-conflict" in res.output and "shape bias" in res.output
    res = CliRunner().invoke(app, ["train", "tiny-text", "--out", str(tmp_path / "ft"), "--steps", "1",
                                   "--init-from", str(text_model), "--colour-correlation", "0.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "ft" / "model" / "diffdisc.json").read_text())
    assert meta["colour_correlation"] == 0.5 and meta["init_from"]["dir"] == str(text_model)
