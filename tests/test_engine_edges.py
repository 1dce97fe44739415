"""Sharp edges of the scoring engine and model loading: one engine per run, both scorers NaN-checked and
compiled alike, the caller's backbone given back as it came, learned variance and weight-shape mismatches
read from the model's own configs."""

import json

import numpy as np
import pytest
import torch

from conftest import make_classcond_dir, make_sd_dir
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import ScoreConfig
from diffdisc.scoring.engine import ScoringEngine

PROMPTS = ["a red cat", "a green dog"]


def _latents(bb, n=1):
    return bb.encode(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)


def test_match_builds_one_scoring_engine_per_run(sd_dir, tmp_path, monkeypatch):
    from diffdisc.data.groups import Group
    from diffdisc.scoring import autotune
    from diffdisc.tasks import match as match_mod

    made, tuned = [], []

    class Counting(ScoringEngine):
        def __init__(self, *a, **kw):
            made.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(match_mod, "ScoringEngine", Counting)
    monkeypatch.setattr(autotune, "auto_batch_size", lambda step, dev: tuned.append(1) or 4)
    rng = np.random.default_rng(0)
    groups = [Group(f"g{i}", tuple(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)),
                    tuple(PROMPTS)) for i in range(3)]  # fmt: skip
    recs = match_mod.match(create_backbone(sd_dir), groups, score=ScoreConfig(batch_size=0), n_timesteps=1,
                           out=tmp_path / "m", chunk_groups=1)  # fmt: skip
    assert len(recs) == 3 and len(made) == 1 and len(tuned) == 1  # 3 chunks, one engine, one tuning


@pytest.mark.parametrize("bias", [True, False])
def test_attention_scorer_stops_on_nan(sd_dir, bias):
    bb = create_backbone(sd_dir)
    with torch.no_grad():
        bb.unet.conv_in.weight.fill_(float("nan"))
    eng = ScoringEngine(bb, ScoreConfig(scorer="attention", attention_bias=bias))
    with pytest.raises(DiffdiscError, match="NaN"):
        eng.exhaustive(_latents(bb), ["k"], bb.conditions(PROMPTS), [500])


def test_attention_scorer_honours_compile(sd_dir, monkeypatch):
    bb = create_backbone(sd_dir)
    x0, conds = _latents(bb), bb.conditions(PROMPTS)
    ref = ScoringEngine(bb, ScoreConfig(scorer="attention")).exhaustive(x0, ["k"], conds, [100, 700])
    calls = []

    def fake_compile(fn, **kw):  # the real one takes minutes on a CPU; what matters is that it is used
        def compiled(*a):
            calls.append(1)
            return fn(*a)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    eng = ScoringEngine(bb, ScoreConfig(scorer="attention", compile=True))
    got = eng.exhaustive(x0, ["k"], conds, [100, 700])
    assert len(calls) == 2 and torch.equal(got, ref)  # one batch: conditional + unconditional pass


def test_channels_last_engine_gives_the_backbone_back(classcond_dir):
    bb = create_backbone(classcond_dir)
    x0, conds = torch.rand(2, 3, 16, 16) * 2 - 1, bb.conditions([0, 1])
    ref = ScoringEngine(bb).exhaustive(x0, ["a", "b"], conds, [100, 600])
    w = lambda: bb.model.conv_in.weight  # noqa: E731
    with ScoringEngine(bb, ScoreConfig(channels_last=True)) as eng:
        assert w().is_contiguous(memory_format=torch.channels_last) and not w().is_contiguous()
        got = eng.exhaustive(x0, ["a", "b"], conds, [100, 600])
    assert w().is_contiguous()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    bb.to(memory_format=torch.channels_last)  # a caller's own channels_last model stays so
    with ScoringEngine(bb, ScoreConfig(channels_last=True)):
        pass
    assert w().is_contiguous(memory_format=torch.channels_last) and not w().is_contiguous()


def _learned_variance_dir(root, variance_type="learned_range", out_channels=6):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=out_channels, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                num_class_embeds=3, norm_num_groups=8).save_pretrained(root / "unet")  # fmt: skip
    DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type).save_pretrained(root / "scheduler")
    return root


def test_learned_variance_read_from_config_not_output_shape(tmp_path, classcond_dir):
    bb = create_backbone(_learned_variance_dir(tmp_path / "lv"))
    x_t, t, c = torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), bb.conditions([0, 1])
    assert bb.learned_variance
    torch.testing.assert_close(bb.predict_eps(x_t, t, c), bb.model_output(x_t, t, c)[:, :3])
    plain = create_backbone(classcond_dir)
    assert not plain.learned_variance
    plain.model_output = lambda x, t, c: torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])
    assert plain.predict_eps(x_t, t, c).shape[1] == 6  # the output's shape alone cuts nothing


def test_learned_variance_config_contradiction_refused(tmp_path):
    with pytest.raises(DiffdiscError, match="variance_type 'learned_range'.*not twice"):
        create_backbone(_learned_variance_dir(tmp_path / "lv", out_channels=3))


def test_shape_mismatch_error_is_one_diffdisc_line(tmp_path):
    cc = make_classcond_dir(tmp_path / "cc")
    cfg = json.loads((cc / "unet" / "config.json").read_text())
    (cc / "unet" / "config.json").write_text(json.dumps({**cfg, "num_class_embeds": 7}))
    sd = make_sd_dir(tmp_path / "sd", with_vae=False)
    cfg = json.loads((sd / "text_encoder" / "config.json").read_text())
    (sd / "text_encoder" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    for root, component, tensor in ((cc, "unet", "class_embedding.weight"), (sd, "text_encoder", "mlp.fc1")):
        with pytest.raises(DiffdiscError) as e:
            create_backbone(root)
        msg = str(e.value)
        assert "\n" not in msg and "low_cpu_mem_usage" not in msg and "ignore_mismatched_sizes" not in msg
        assert str(root / component) in msg and tensor in msg and "config.json" in msg
