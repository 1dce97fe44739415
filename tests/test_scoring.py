"""Engine parity with an independent one-prompt-at-a-time Diffusion Classifier loop, noise sharing,
batch-size invariance, and the adaptive strategies on a clear-cut case."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from diffdisc.backbones.base import Backbone, BackboneInfo
from diffdisc.backbones.process import VPProcess
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.adaptive import evaluate, paired_p
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine, Work
from diffdisc.scoring.schedule import dc_grid, stage_subset

PROMPTS = ["a photo of a red cat", "a photo of a green dog", "a photo of a blue cat", "a photo of a red dog"]


def reference_dc(bb, x0, conds, stages, noise_fn):
    """Straightforward port of the official eval_prob_adaptive: one prompt and one t at a time."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(bb.scheduler_config if hasattr(bb, "scheduler_config") else {})
    T = sched.config.num_train_timesteps
    M = max(n for n, _ in stages)
    t_to_eval = list(range(T // M // 2, T, T // M))[:M]
    data = {c: {"t": [], "err": []} for c in range(len(conds))}
    remaining, evaluated, survivors = list(range(len(conds))), set(), []
    for n, keep in stages:
        curr = [t for t in t_to_eval[len(t_to_eval) // n // 2 :: len(t_to_eval) // n][:n] if t not in evaluated]
        for c in remaining:
            for t in curr:
                noise = noise_fn(t)
                x_t = sched.add_noise(x0, noise, torch.tensor([t]))
                with torch.no_grad():
                    pred = bb.unet(x_t, torch.tensor([t]), encoder_hidden_states=conds[c : c + 1]).sample
                data[c]["t"].append(t)
                data[c]["err"].append(F.mse_loss(pred, noise, reduction="none").mean().item())
        evaluated.update(curr)
        means = torch.tensor([np.mean(data[c]["err"]) for c in remaining])
        remaining = [remaining[i] for i in torch.topk(-means, k=keep).indices.tolist()]
        survivors.append(sorted(remaining))
    return data, survivors


def test_grids_match_official_examples():
    assert dc_grid(1000, 50)[:3] == [10, 30, 50] and dc_grid(1000, 50)[-1] == 990
    g500 = dc_grid(1000, 500)
    assert g500[:2] == [1, 3] and stage_subset(g500, 20)[:2] == [25, 75] and stage_subset(g500, 50)[:2] == [11, 31]
    assert stage_subset(g500, 100)[:2] == [5, 15]
    assert stage_subset(dc_grid(1000, 250), 25)[:2] == [22, 62]
    with pytest.raises(DiffdiscError):
        stage_subset(dc_grid(1000, 10), 20)


def test_engine_matches_reference_loop(sd_dir):
    bb = create_backbone(make := sd_dir)  # noqa: F841
    x0 = bb.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    conds = bb.conditions(PROMPTS)
    stages = ((5, 2), (10, 1))
    engine = ScoringEngine(bb, ScoreConfig(batch_size=7))
    res = evaluate(engine, x0, ["img0"], conds, AdaptiveConfig(strategy="halving", stages=stages))[0]
    ref, survivors = reference_dc(bb, x0, conds, stages, lambda t: engine.noise(["img0"], [t], tuple(x0.shape[1:])))
    for c in range(len(PROMPTS)):
        got = [res.errors[c][t] for t in ref[c]["t"]]
        np.testing.assert_allclose(got, ref[c]["err"], rtol=1e-4, atol=1e-6)
        assert sorted(res.errors[c]) == sorted(ref[c]["t"])
    for level, surv in enumerate(survivors, start=1):
        assert sorted(c for c in range(len(PROMPTS)) if res.level[c] >= level) == surv
    assert res.prediction == survivors[-1][0]
    assert res.calls == sum(len(ref[c]["t"]) for c in ref)


def test_noise_shared_across_candidates_and_independent_of_batching(sd_dir):
    bb = create_backbone(sd_dir)
    x0 = bb.encode(torch.rand(3, 3, 16, 16) * 2 - 1)
    keys, conds = ["a", "b", "c"], bb.conditions(PROMPTS[:2])
    e1 = ScoringEngine(bb, ScoreConfig(batch_size=1)).exhaustive(x0, keys, conds, [10, 500, 990])
    e16 = ScoringEngine(bb, ScoreConfig(batch_size=16)).exhaustive(x0, keys, conds, [10, 500, 990])
    torch.testing.assert_close(e1, e16, rtol=1e-4, atol=1e-6)
    # the same image scored alone (other chunking) gives the same numbers
    alone = ScoringEngine(bb).exhaustive(x0[1:2], ["b"], conds, [10, 500, 990])
    torch.testing.assert_close(alone[0], e16[1], rtol=1e-4, atol=1e-6)
    eng = ScoringEngine(bb)
    n = eng.noise(["a", "a", "b"], [10, 11, 10], (2,))
    assert not torch.equal(n[0], n[1]) and not torch.equal(n[0], n[2])
    assert torch.equal(eng.noise(["a"], [10], (2,))[0], n[0])


def test_auto_batch_size_and_oom_fallback_keep_the_numbers(sd_dir, monkeypatch):
    bb = create_backbone(sd_dir)
    x0 = bb.encode(torch.rand(3, 3, 16, 16) * 2 - 1)
    keys, conds, ts = ["a", "b", "c"], bb.conditions(PROMPTS[:2]), [10, 500, 990]
    ref = ScoringEngine(bb, ScoreConfig(batch_size=4)).exhaustive(x0, keys, conds, ts)
    auto = ScoringEngine(bb, ScoreConfig(batch_size=0))
    torch.testing.assert_close(auto.exhaustive(x0, keys, conds, ts), ref, rtol=1e-4, atol=1e-6)
    assert auto.batch_size >= 8 and auto.batch_size & (auto.batch_size - 1) == 0  # a tuned power of two
    # a device that runs out of memory above 5 items: the engine halves its batch and loses nothing
    eng = ScoringEngine(bb, ScoreConfig(batch_size=16))
    real = eng.errors

    def small_memory(x0_, *a):
        if x0_.shape[0] > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x0_, *a)

    monkeypatch.setattr(eng, "errors", small_memory)
    torch.testing.assert_close(eng.exhaustive(x0, keys, conds, ts), ref, rtol=1e-4, atol=1e-6)
    assert eng.batch_size == 4 and eng.calls == 18


def test_auto_batch_size_stops_at_first_oom():
    from diffdisc.scoring.autotune import auto_batch_size

    def step(bs):  # a fixed cost per call: bigger batches are always faster per item, until memory runs out
        if bs > 64:
            raise torch.OutOfMemoryError("out of memory")
        time.sleep(0.002)

    assert auto_batch_size(step, torch.device("cpu")) == 64
    with pytest.raises(DiffdiscError, match="does not fit"):
        auto_batch_size(lambda bs: step(bs * 100), torch.device("cpu"))


class TemplateBackbone(Backbone):
    """A denoiser that believes x0 is the template of the conditioned class: error ∝ ||x0 - template||²."""

    def __init__(self, templates):
        # a gentle schedule (SNR 1 -> 0.67) so the error's scale barely depends on t
        super().__init__(VPProcess(torch.linspace(0.5, 0.4, 1000, dtype=torch.float64)))
        self.templates = templates
        self.info = BackboneInfo("tmpl", "classcond", "class", "epsilon", 1000, 8, 1, False, "x", tuple(f"c{i}" for i in range(len(templates))))

    def _condition_batch(self, candidates):
        return torch.tensor(candidates)

    def model_output(self, x_t, t, cond):
        sa, sb = self.process.coef(t, x_t)
        return (x_t - sa * self.templates[cond]) / sb


@pytest.mark.parametrize("strategy", ["halving", "ttest"])
def test_adaptive_reaches_exhaustive_argmin_on_clear_case(strategy):
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(10, 1, 8, 8, generator=g)
    labels = torch.arange(10).repeat(2)
    x0 = templates[labels] + 0.3 * torch.randn(20, 1, 8, 8, generator=g)
    bb = TemplateBackbone(templates)
    keys = [f"i{i}" for i in range(20)]
    conds = bb.conditions(list(range(10)))
    ex = evaluate(ScoringEngine(bb), x0, keys, conds, AdaptiveConfig(n_timesteps=20))
    cfg = AdaptiveConfig(strategy=strategy, stages=((10, 3), (20, 1)), min_scores=5, max_scores=30)
    ad = evaluate(ScoringEngine(bb), x0, keys, conds, cfg)
    assert [r.prediction for r in ex] == labels.tolist()
    assert [r.prediction for r in ad] == [r.prediction for r in ex]
    assert np.mean([r.calls for r in ad]) < np.mean([r.calls for r in ex])


def test_halving_early_exit_saves_calls_on_decisive_images_only():
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(10, 1, 8, 8, generator=g)
    labels = torch.arange(10).repeat(2)
    x0 = templates[labels] + 0.3 * torch.randn(20, 1, 8, 8, generator=g)
    x0[0] = (templates[0] + templates[1]) / 2  # an ambiguous image: no decisive leader after stage 1
    bb, keys = TemplateBackbone(templates), [f"i{i}" for i in range(20)]
    conds = bb.conditions(list(range(10)))
    stages = ((5, 3), (10, 2), (20, 1))
    plain = evaluate(ScoringEngine(bb), x0, keys, conds, AdaptiveConfig(strategy="halving", stages=stages))
    early = evaluate(ScoringEngine(bb), x0, keys, conds, AdaptiveConfig(strategy="halving", stages=stages, exit_z=3.0))
    assert [r.prediction for r in early] == [r.prediction for r in plain]
    assert early[0].calls == plain[0].calls  # the ambiguous image runs every stage
    assert np.mean([r.calls for r in early]) < np.mean([r.calls for r in plain])
    with pytest.raises(DiffdiscError, match="exit_z"):
        AdaptiveConfig(strategy="halving", exit_z=-1)


def test_paired_p_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.1, 1, 30), rng.normal(1.0, 1, 30)
    assert paired_p(a, b) == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)


def test_clark_weighting_is_finite_and_downweights_high_t(sd_dir):
    bb = create_backbone(make_pixel := sd_dir)  # noqa: F841
    x0 = bb.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    conds = bb.conditions(PROMPTS[:1])
    e = ScoringEngine(bb, ScoreConfig(weighting="clark")).exhaustive(x0, ["k"], conds, [0, 500, 999])[0, 0]
    assert torch.isfinite(e).all() and e[2] < e[0] + 1e-3
    assert torch.isfinite(ScoringEngine(bb, ScoreConfig(weighting="min_snr")).exhaustive(x0, ["k"], conds, [0, 999])).all()


def test_nan_output_stops_with_clear_message(classcond_dir):
    bb = create_backbone(classcond_dir)
    bb.model_output = lambda x, t, c: torch.full_like(x, float("nan"))
    with pytest.raises(DiffdiscError, match="NaN"):
        ScoringEngine(bb).run(torch.zeros(1, 3, 16, 16), ["k"], bb.conditions([0]), Work.from_lists([0], [0], [5]))


def test_bad_adaptive_configs():
    with pytest.raises(DiffdiscError, match="keep 1"):
        AdaptiveConfig(strategy="halving", stages=((10, 3),))
    with pytest.raises(DiffdiscError, match="increase"):
        AdaptiveConfig(strategy="halving", stages=((50, 3), (20, 1)))
    with pytest.raises(DiffdiscError, match="unknown strategy"):
        AdaptiveConfig(strategy="magic")
    with pytest.raises(DiffdiscError, match="1..1000"):
        dc_grid(1000, 2000)


def test_bf16_autocast_close_to_fp32(classcond_dir):
    bb = create_backbone(classcond_dir)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    conds = bb.conditions([0, 1])
    a = ScoringEngine(bb).exhaustive(x0, ["a", "b"], conds, [100, 600])
    b = ScoringEngine(bb, ScoreConfig(dtype="bf16")).exhaustive(x0, ["a", "b"], conds, [100, 600])
    torch.testing.assert_close(a, b, rtol=0.1, atol=0.05)
