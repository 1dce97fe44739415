"""The zero_shot, compositional (binding, spatial) and shape_bias claim stages at the tiny size on the shipped
models: the rows, their verdicts, the paired numbers against each side's own score, and resuming from their
run directories without new model work; the colour prior behind shape_bias and its verdict rule."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffdisc.tasks.claims import compositional, shape_bias, zero_shot
from diffdisc.tasks.claims.base import FAILS, HOLDS, INCONCLUSIVE, ClaimContext, verdict

pytestmark = pytest.mark.usefixtures("one_thread")
FIELDS = ("id", "claim", "source", "paper", "metric", "value", "ci", "verdict", "n", "details", "note")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Each stage run once at tiny, in its own directory, the models loaded once for all three."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root, loaded, out = tmp_path_factory.mktemp("claims"), {}, {}
    for mod in (zero_shot, compositional, shape_bias):
        ctx = ClaimContext(root / mod.__name__.rsplit(".", 1)[1], _loaded=loaded)
        out[mod] = (ctx, mod.run(ctx, dict(mod.SIZES["tiny"])))
    torch.set_num_threads(threads)
    return out


def _check_row(row, ids):
    d = row.to_dict()
    assert list(d) == list(FIELDS) and row.id in ids
    assert all(isinstance(d[k], str) and d[k] for k in ("claim", "source", "paper", "metric"))
    assert row.verdict == verdict(row.ci) or row.id == "shape_bias"
    assert row.ci[0] <= row.value <= row.ci[1]
    json.dumps(d)  # the table is JSON


def _work_files(root: Path) -> dict:
    """mtime of every file a model computed: run shards, colour-prior shards, fine-tuned weights."""
    files = [p for p in root.rglob("*") if p.is_file() and ("shards" in p.parts or "model" in p.parts)]
    assert files
    return {p: p.stat().st_mtime_ns for p in files}


def _rerun(ctx, mod) -> list:
    before = _work_files(ctx.out)
    rows = mod.run(ctx, dict(mod.SIZES["tiny"]))
    assert _work_files(ctx.out) == before  # every run dir resumed complete: nothing scored or trained again
    return rows


def test_zero_shot(stages):
    ctx, (row,) = stages[zero_shot]
    _check_row(row, zero_shot.IDS)
    d = row.details
    assert row.n == 10 == d["diffusion"]["n"] == d["contrastive"]["n"]  # 1 test item per class, paired by id
    assert row.value == pytest.approx(d["diffusion"]["score"] - d["contrastive"]["score"])
    assert len(d["diffusion"]["prompts"]) == 10 and "an ankle boot" in d["diffusion"]["prompts"]  # "{a} {}"
    assert d["settings"]["timesteps"] == 2 and (ctx.out / d["runs"]["diffusion"] / "run.json").is_file()
    assert _rerun(ctx, zero_shot)[0].to_dict() == row.to_dict()


def test_binding_and_spatial(stages):
    ctx, rows = stages[compositional]
    assert [r.id for r in rows] == ["binding", "spatial"]
    for row in rows:
        _check_row(row, compositional.IDS)
        d = row.details
        assert row.n == 2 and set(d["controls"]) == {"object", "colour"}
        assert {"text", "image", "group"} <= set(d["controls"]["object"]["diffusion"])
        per_group = {k: compositional.text_correct(ctx.out / d["runs"][k]) for k in ("diffusion", "contrastive")}
        for k, correct in per_group.items():  # the per-group text score agrees with the probe's own metric
            assert 100 * np.mean(list(correct.values())) == pytest.approx(d[k]["text"]["mean"])
        assert row.value == pytest.approx(d["diffusion"]["text"]["mean"] - d["contrastive"]["text"]["mean"])
    assert rows[0].details["controls"] == rows[1].details["controls"]
    assert [r.to_dict() for r in _rerun(ctx, compositional)] == [r.to_dict() for r in rows]


def test_shape_bias(stages, monkeypatch):
    ctx, (row,) = stages[shape_bias]
    _check_row(row, shape_bias.IDS)
    d = row.details
    text, clip = d["diffusion"]["finetune"], d["contrastive"]["finetune"]
    assert (text["steps"], text["batch"]) == (clip["steps"], clip["batch"]) == (2, 4)  # same budget for both
    assert (text["init_from"], clip["init_from"]) == (ctx.models.text, ctx.models.clip)
    assert (text["lr"], clip["lr"], text["class_only_p"]) == (5e-4, 1e-4, 0.8) and text["wall_s"] is not None
    assert row.n == 4 and set(d["control"]) == {"diffusion", "contrastive", "diffusion_minus_contrastive"}
    assert row.value == pytest.approx(d["diffusion"]["score"] - d["contrastive"]["score"])
    cues = d["diffusion"]["colour_cue"]["share"], d["contrastive"]["colour_cue"]["share"]
    assert (row.verdict, row.note) == shape_bias.rule(*cues, row.ci)
    monkeypatch.setattr(shape_bias, "train", lambda *a, **k: pytest.fail("trained again"))
    assert _rerun(ctx, shape_bias)[0].to_dict() == row.to_dict()


def test_shape_bias_rule():
    assert shape_bias.rule(50, 60, (1.0, 9.0)) == (HOLDS, "")  # cues matched: the interval decides
    assert shape_bias.rule(50, 60, (-9.0, -1.0))[0] == FAILS
    v, note = shape_bias.rule(30, 80, (-9.0, -1.0))  # diffusion learned less, still less shape-biased
    assert v == FAILS and "a fortiori" in note
    assert shape_bias.rule(30, 80, (1.0, 9.0)) == (INCONCLUSIVE, "cue not matched (text 30 %, clip 80 %)")
    assert shape_bias.rule(80, 30, (-9.0, -1.0)) == (INCONCLUSIVE, "cue not matched (text 80 %, clip 30 %)")
    assert "neither" in shape_bias.rule(10, 20, (-9.0, 9.0))[1]


def test_colour_prior_is_stored(stages, monkeypatch):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.tasks import colour_prior as cp

    ctx, (row,) = stages[shape_bias]
    cue = row.details["contrastive"]["colour_cue"]
    assert cue["share"] == pytest.approx(np.mean(cue["per_class"])) and cue["n"] == 10
    bb = create_backbone(ctx.out / row.details["contrastive"]["finetune"]["run"] / "model")
    fresh = cp.colour_prior(bb, 1, 0)  # no store: measured again, the same numbers
    assert 100 * fresh["share"] == pytest.approx(cue["share"])
    monkeypatch.setattr(cp, "contrastive_choices", lambda *a: pytest.fail("measured again"))
    assert cp.colour_prior(bb, 1, 0, 1, out=ctx.out / cue["run"])["choices"] == fresh["choices"]
