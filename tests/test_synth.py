"""Synthetic-data generation (plan, resume, tricks, bad input) and timm training on it."""

import json

import numpy as np
import pytest
import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.tasks.synth import SynthConfig, generate, merge, plan
from diffdisc.training.recipes import get_recipe
from diffdisc.training.train import train

QUIET = {"log": lambda m: None, "quiet": True}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_bb(tmp_path_factory):
    return create_backbone(train(get_recipe("tiny-text", steps=2), tmp_path_factory.mktemp("t"), **QUIET))


def test_plan_draws_prompts_and_guidance_per_image(text_bb):
    cfg = SynthConfig(per_class=6, tricks=("template", "domain", "guidance"), guidance_range=(1.0, 5.0))
    jobs = plan(text_bb, ["sneaker", "ankle boot"], cfg)
    assert len(jobs) == 12 and len({j.guidance for j in jobs}) > 6  # per image, not once per run
    assert all(1.0 <= j.guidance <= 5.0 for j in jobs)
    assert any(j.condition.startswith("an ") for j in jobs if "ankle" in j.condition or j.condition.split()[1][0] in "aeiou")
    assert [j.condition for j in plan(text_bb, ["sneaker", "ankle boot"], cfg)] == [j.condition for j in jobs]
    plain = plan(text_bb, ["sneaker"], SynthConfig(per_class=3))
    assert {j.condition for j in plain} == {"a sneaker"} and {j.guidance for j in plain} == {3.0}


def test_generate_resumes_without_redoing_images_and_matches_an_uninterrupted_run(text_bb, tmp_path):
    cfg = SynthConfig(per_class=3, tricks=("guidance",), steps=2, batch_size=2)
    generate(text_bb, ["sneaker", "bag"], cfg, out=tmp_path / "a")
    # "killed" run: the last image file and its metadata row are gone, plus a torn line
    b = tmp_path / "b"
    generate(text_bb, ["sneaker", "bag"], cfg, out=b)
    rows = (b / "metadata.jsonl").read_text().splitlines()
    (b / json.loads(rows[-1])["file"]).unlink()
    (b / "metadata.jsonl").write_text("\n".join(rows[:-1]) + '\n{"file": "bag/0000')
    generate(text_bb, ["sneaker", "bag"], SynthConfig(**{**cfg.__dict__, "batch_size": 4}), out=b)
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png"))
    from PIL import Image

    for f in files:  # same pixels whatever the batching or interruption
        assert np.array_equal(np.asarray(Image.open(b / f)), np.asarray(Image.open(tmp_path / "a" / f)))
    with pytest.raises(DiffdiscError, match="other settings"):
        generate(text_bb, ["sneaker", "bag"], SynthConfig(per_class=3, steps=3), out=b)
    merged = merge([tmp_path / "a", b], tmp_path / "m")
    assert len(list(merged.rglob("*.png"))) == 12 and json.loads((merged / "classes.json").read_text())


def test_bad_synth_input(text_bb, tmp_path, monkeypatch):
    with pytest.raises(DiffdiscError, match="reversed"):
        SynthConfig(guidance_range=(5.0, 1.0))
    with pytest.raises(DiffdiscError, match=">= 1"):
        SynthConfig(per_class=0)
    with pytest.raises(DiffdiscError, match="unknown trick"):
        SynthConfig(tricks=("colour",))
    out = generate(text_bb, ["t-shirt/top: x"], SynthConfig(per_class=1, steps=1), out=tmp_path / "odd")
    assert json.loads((out / "classes.json").read_text()) == {"t-shirt_top_x": "t-shirt/top: x"}

    import diffdisc.tasks.synth as synth

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synth, "write_atomic", lambda path, data: full() if path.suffix == ".png" else path.write_bytes(data))
    with pytest.raises(DiffdiscError, match="No space left on device"):
        generate(text_bb, ["bag"], SynthConfig(per_class=2, steps=1), out=tmp_path / "full")
    assert not (tmp_path / "full" / "metadata.jsonl").exists()  # nothing counted as done


def test_timm_classifier_trains_resumes_and_evaluates(text_bb, tmp_path):
    from diffdisc.tasks.synth_train import ClassifierConfig, evaluate_classifier, train_classifier

    data = generate(text_bb, ["sneaker", "bag"], SynthConfig(per_class=6, steps=1, batch_size=12), out=tmp_path / "d")
    cfg = ClassifierConfig(model="resnet10t", epochs=2, batch_size=8, image_size=16)
    logs = []

    def killed_after_epoch_1(msg):
        if msg.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(data, cfg, out=tmp_path / "clf", log=killed_after_epoch_1)
    out = train_classifier(data, cfg, out=tmp_path / "clf", log=logs.append).path
    assert any("resumed after epoch 1" in m for m in logs) and any("forward/backward" in m for m in logs)
    m = evaluate_classifier(out, data)
    assert m["n_images"] == 12 and 0 <= m["accuracy"] <= 1
    with pytest.raises(DiffdiscError, match="did you mean"):
        train_classifier(data, ClassifierConfig(model="resnet181", epochs=1), out=tmp_path / "x")
    assert torch.isfinite(torch.tensor(m["accuracy"]))
