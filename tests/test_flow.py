"""Rectified-flow scoring on a class-conditional U-Net saved with a FlowMatchEulerDiscreteScheduler: the σ table,
the noising, the ε-equivalence of the weightings, the σ grids, every strategy, sampling and the flow objective."""

import json
import math

import pytest
import torch

from conftest import CLASSES, make_classcond_dir
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.adaptive import evaluate
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine, Work
from diffdisc.scoring.schedule import dc_grid, sigma_rows


def make_flow_dir(root, shift=3.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    make_classcond_dir(root)
    for f in (root / "scheduler").iterdir():
        f.unlink()
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    return make_flow_dir(tmp_path_factory.mktemp("flow"))


@pytest.fixture(scope="module")
def flow_bb(flow_dir):
    return create_backbone(flow_dir)


def _x0(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_sigma_table_is_the_schedulers_and_noising_is_scale_noise(flow_bb, flow_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(flow_dir, subfolder="scheduler")
    assert flow_bb.is_flow and flow_bb.prediction_type == "flow" and flow_bb.num_train_timesteps == 1000
    torch.testing.assert_close(flow_bb.process.sigmas.float(), sched.sigmas.flip(0)[-1000:], rtol=0, atol=0)
    x0, eps = _x0(), torch.randn(3, 3, 16, 16)
    t = torch.tensor([10, 500, 990])
    timesteps = sched.timesteps.flip(0)[t]  # 1000·σ_t, the value the denoiser is given
    torch.testing.assert_close(flow_bb.timestep_input(t), timesteps)
    ref = torch.cat([sched.scale_noise(x0[i : i + 1], timesteps[i : i + 1], eps[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(flow_bb.add_noise(x0, eps, t), ref)


def test_eps_is_the_velocity_rewritten_and_uniform_is_the_eps_equivalent_weighting(flow_bb):
    x0, eps = _x0(), torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t, cond = torch.tensor([50, 400, 900]), flow_bb.conditions([0, 1, 2])
    x_t = flow_bb.add_noise(x0, eps, t)
    s = flow_bb.process.sigmas[t].float().view(-1, 1, 1, 1)
    v_hat = flow_bb.model(x_t, t_in := s.flatten() * 1000, class_labels=cond).sample
    assert torch.allclose(t_in, flow_bb.timestep_input(t))
    torch.testing.assert_close(flow_bb.predict_eps(x_t, t, cond), x_t + (1 - s) * v_hat)
    vel_err = ((v_hat - (eps - x0)) ** 2).flatten(1).mean(1)  # the SD3 training loss, per sample
    errs = {w: ScoringEngine(flow_bb, ScoreConfig(weighting=w)).errors(x0, eps, t, cond)
            for w in ("velocity", "uniform", "sigma_sqrt", "cosmap")}  # fmt: skip
    sig = s.flatten()
    torch.testing.assert_close(errs["velocity"], vel_err)
    torch.testing.assert_close(errs["uniform"], (1 - sig) ** 2 * vel_err, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(errs["sigma_sqrt"], sig**-2 * vel_err)
    torch.testing.assert_close(errs["cosmap"], 2 / (math.pi * (1 - 2 * sig + 2 * sig**2)) * vel_err)


def test_flow_options_on_a_vp_model_are_refused(classcond_dir):
    bb = create_backbone(classcond_dir)
    with pytest.raises(DiffdiscError, match="flow-matching model's velocity"):
        ScoringEngine(bb, ScoreConfig(weighting="velocity"))
    eng = ScoringEngine(bb, ScoreConfig())
    with pytest.raises(DiffdiscError, match="--sigmas uniform places σ for flow-matching models"):
        evaluate(eng, _x0(1), ["a"], bb.conditions([0, 1]), AdaptiveConfig(n_timesteps=2, sigmas="uniform"))
    with pytest.raises(DiffdiscError, match="predicts no velocity"):
        bb.predict_velocity(_x0(1), torch.tensor([3]), bb.conditions([0]))


def test_sigma_grids_place_the_quantiles(flow_bb):
    sig = flow_bb.process.sigmas
    grid = dc_grid(1000, 10)
    assert sigma_rows(sig, grid, "scheduler") == grid
    uni = sigma_rows(sig, grid, "uniform")
    assert torch.allclose(sig[uni].float(), torch.arange(0.05, 1.0, 0.1), atol=2e-3)  # shift 3 table, σ evenly spaced
    ln = sigma_rows(sig, grid, "logit_normal")
    u = (torch.tensor(grid, dtype=torch.float64) + 0.5) / 1000
    want = torch.sigmoid(torch.special.ndtri(u))
    assert torch.allclose(sig[ln], want, atol=2e-3)
    assert all(b > a for a, b in zip(ln, ln[1:], strict=False)) and all(b > a for a, b in zip(uni, uni[1:], strict=False))


@pytest.mark.parametrize("strategy", ["exhaustive", "halving", "ttest"])
@pytest.mark.parametrize("sigmas", ["scheduler", "logit_normal"])
def test_every_strategy_runs_over_sigma(flow_bb, strategy, sigmas):
    cfg = AdaptiveConfig(strategy=strategy, n_timesteps=4, stages=((2, 2), (4, 1)), min_scores=3, max_scores=5,
                         sigmas=sigmas)  # fmt: skip
    eng = ScoringEngine(flow_bb, ScoreConfig(weighting="velocity", batch_size=16))
    res = evaluate(eng, _x0(2), ["a", "b"], flow_bb.conditions([0, 1, 2]), cfg)
    assert all(r.prediction in (0, 1, 2) for r in res)
    if strategy == "exhaustive":
        want = sigma_rows(flow_bb.process.sigmas, dc_grid(1000, 4), sigmas)
        assert sorted(res[0].timesteps) == want


def test_scores_do_not_depend_on_batch_size(flow_bb):
    x0, keys, conds = _x0(2), ["a", "b"], flow_bb.conditions([0, 1, 2])
    grid = torch.cartesian_prod(torch.arange(2), torch.arange(3), torch.tensor([100, 700]))
    work = Work(grid[:, 0], grid[:, 1], grid[:, 2])
    a = ScoringEngine(flow_bb, ScoreConfig(weighting="cosmap", batch_size=1)).run(x0, keys, conds, work)
    b = ScoringEngine(flow_bb, ScoreConfig(weighting="cosmap", batch_size=5)).run(x0, keys, conds, work)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_classify_a_folder_with_a_flow_model(flow_dir, image_folder, tmp_path):
    from diffdisc.tasks.classify import ClassifyConfig, classify

    res = classify(create_backbone(flow_dir), image_folder,
                   ClassifyConfig(score=ScoreConfig(weighting="velocity"), adaptive=AdaptiveConfig(n_timesteps=2, sigmas="uniform")),
                   out=tmp_path / "r")  # fmt: skip
    assert len(res) > 0 and set(res.preds.tolist()) <= set(range(len(CLASSES)))
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["adaptive"]["sigmas"] == "uniform" and run["score"]["weighting"] == "velocity"


def test_flow_sampling_is_euler_on_the_sigma_table(flow_bb):
    from diffdisc.generation.sampler import sample

    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    conds = flow_bb.conditions([0, 1])
    img = sample(flow_bb, conds, guidance=1.0, steps=2, init_noise=noise)
    sig = flow_bb.process.sigmas
    rows = [999, 0]
    x = noise.clone()
    for i, r in enumerate(rows):
        t = torch.full((2,), r)
        nxt = float(sig[rows[i + 1]]) if i + 1 < len(rows) else 0.0
        x = x + (nxt - float(sig[r])) * flow_bb.predict_velocity(x, t, conds)
    torch.testing.assert_close(img, x.clamp(-1, 1))
    with pytest.raises(DiffdiscError, match="Euler flow solver"):
        sample(flow_bb, conds, steps=2, scheduler="dpm")


def test_flow_objective_is_the_sd3_training_example():
    """One batch of the flow objective, written out as diffusers' SD3 training example does it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from diffdisc.training.objectives.base import DiffusionObjective
    from diffdisc.training.recipes import get_recipe

    obj = DiffusionObjective()
    obj.cfg = get_recipe("fmnist-classcond-flow")
    x0 = _x0(4)
    x_t, timestep, target = obj._noised(x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    u = compute_density_for_timestep_sampling("logit_normal", 4, logit_mean=0.0, logit_std=1.0, generator=g)
    idx = (u * 1000).long()
    noise = torch.randn(x0.shape, generator=g)
    sigma = sched.sigmas[idx].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(timestep, sched.timesteps[idx])
    torch.testing.assert_close(target, noise - x0)


def test_the_command_line_default_weighting_is_cosmap_for_flow_models(monkeypatch, capsys, flow_dir, classcond_dir,
                                                                         tmp_path):  # fmt: skip
    from conftest import make_noise_folder, run_main

    data = make_noise_folder(tmp_path / "d", per_class=1, size=16)
    for model, want in ((flow_dir, "cosmap"), (classcond_dir, "uniform")):
        out = tmp_path / want
        code, _, err = run_main(monkeypatch, capsys, "classify", "--model", model, "--data", data, "--timesteps", "2",
                                "--out", out, "--quiet")  # fmt: skip
        assert code == 0, err
        assert json.loads((out / "run.json").read_text())["score"]["weighting"] == want
