"""Timestep weights: fitted on calibration errors, only the informative t come first; the file guards its model."""

import json

import numpy as np
import pytest
import torch

from conftest import run_main
from diffdisc.backbones.base import Backbone, BackboneInfo
from diffdisc.backbones.process import VPProcess
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.adaptive import evaluate
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.schedule import dc_grid
from diffdisc.scoring.timestep_weights import (
    TimestepWeights,
    fit_weights,
    ordered_grid,
    weighted_mean,
    weighted_means,
)

INFORMATIVE = range(400, 600)  # the only timesteps at which the denoiser knows the classes


class HalfBlindBackbone(Backbone):
    """Believes x0 is its class's template at t in INFORMATIVE, and a decoy drawn per (t, class) elsewhere: the
    error ∝ ||x0 - target||² carries the class at those t only and is noise (of a larger size) at the others."""

    def __init__(self, templates, fingerprint="tmpl-v1"):
        super().__init__(VPProcess(torch.linspace(0.5, 0.4, 1000, dtype=torch.float64)))
        m = len(templates)
        self.templates = templates
        self.decoys = 3 * torch.randn(1000, m, *templates.shape[1:], generator=torch.Generator().manual_seed(1))
        self.info = BackboneInfo("tmpl", "classcond", "class", "epsilon", 1000, 8, 1, False, fingerprint,
                                 tuple(f"c{i}" for i in range(m)))  # fmt: skip

    def _condition_batch(self, candidates):
        return torch.tensor(candidates)

    def model_output(self, x_t, t, cond):
        sa, sb = self.process.coef(t, x_t)
        seen = ((t >= INFORMATIVE.start) & (t < INFORMATIVE.stop)).view(-1, 1, 1, 1)
        target = torch.where(seen, self.templates[cond], self.decoys[t.cpu(), cond.cpu()].to(x_t))
        return (x_t - sa * target) / sb


@pytest.fixture(scope="module")
def calibration():
    """Exhaustive errors E[image, class, t] of 24 images, 4 classes, on a 20-point grid (4 of them informative)."""
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 1, 8, 8, generator=g)
    labels = torch.arange(4).repeat(6)
    x0 = templates[labels] + 0.3 * torch.randn(24, 1, 8, 8, generator=g)
    bb = HalfBlindBackbone(templates)
    res = evaluate(ScoringEngine(bb), x0, [f"i{i}" for i in range(24)], bb.conditions(list(range(4))), AdaptiveConfig(n_timesteps=20))
    grid = dc_grid(1000, 20)
    errors = np.array([[[r.errors[c][t] for t in grid] for c in range(4)] for r in res])
    return bb, errors, labels.numpy(), grid


@pytest.fixture(scope="module")
def fitted(calibration):
    bb, errors, labels, grid = calibration
    return fit_weights(errors, labels, grid, model={"name": "tmpl", "fingerprint": bb.info.fingerprint},
                       score="denoise l2 uniform", data="/data/train")  # fmt: skip


def test_informative_timesteps_come_first_and_beat_the_even_grid(calibration, fitted):
    _, errors, labels, grid = calibration
    informative = [t for t in grid if t in INFORMATIVE]
    assert len(informative) == 4
    assert sorted(ordered_grid(fitted, 4)) == informative
    assert set(fitted.informative) >= set(informative)
    w = dict(zip(fitted.order, fitted.weights, strict=True))
    assert sum(w[t] for t in informative) > 0.8 and sum(fitted.weights) == pytest.approx(1.0)
    acc = fitted.calibration["accuracy"]
    assert acc["fitted"] == 1.0 and acc["even"] < 0.8  # cross-validated; the even grid drowns 4 t in 16 of noise
    assert acc["even"] == pytest.approx(np.mean(errors.mean(2).argmin(1) == labels))
    curve = fitted.calibration["curve"]
    assert curve["n"] == list(range(1, 21)) and curve["fitted"][3] == 1.0
    alone = dict(zip(grid, fitted.informativeness["accuracy"], strict=True))
    assert min(alone[t] for t in informative) > max(alone[t] for t in grid if t not in INFORMATIVE)


def test_weighted_mean_is_the_plain_mean_without_weights_and_follows_the_fit(calibration, fitted):
    _, errors, labels, grid = calibration
    row = {t: float(e) for t, e in zip(grid, errors[0, 0], strict=True)}
    assert weighted_mean(row) == pytest.approx(errors[0, 0].mean())
    assert weighted_mean(row, ts=grid[:3]) == pytest.approx(errors[0, 0, :3].mean())
    assert weighted_mean({}, weights=fitted) == float("inf")
    f = np.array([fitted.factor(t) for t in grid])
    assert weighted_mean(row, weights=fitted) == pytest.approx((f * errors[0, 0]).sum() / f.sum())
    assert fitted.factor(grid[3] + 1) == fitted.factor(grid[3])  # off the grid: the nearest grid point
    assert fitted.factors(grid).mean() == pytest.approx(1.0)
    preds = [int(np.argmin(weighted_means({c: dict(zip(grid, errors[i, c], strict=True)) for c in range(4)}, 4, fitted)))
             for i in range(len(labels))]  # fmt: skip
    assert preds == labels.tolist()
    with pytest.raises(DiffdiscError, match="ranks 20 timesteps"):
        ordered_grid(fitted, 21)


def test_file_round_trips_and_refuses_another_model(tmp_path, calibration, fitted):
    bb = calibration[0]
    path = fitted.save(tmp_path)
    assert path.name == "timestep_weights.json"
    d = json.loads(path.read_text())
    assert {"model", "grid", "order", "weights", "calibration", "n_images", "seed"} <= set(d) and d["n_images"] == 24
    back = TimestepWeights.load(path)
    assert back.to_dict() == fitted.to_dict() and back.path == path
    back.check(bb, ScoreConfig(), "scheduler", data="/data/test")
    with pytest.raises(DiffdiscError, match="fitted for model tmpl .fingerprint tmpl-v1., not"):
        back.check(HalfBlindBackbone(bb.templates, fingerprint="tmpl-v2"))
    with pytest.raises(DiffdiscError, match="'denoise l2 uniform' scores"):
        back.check(bb, ScoreConfig(loss="l1"))
    with pytest.raises(DiffdiscError, match="never on the images it is measured on"):
        back.check(bb, data="/data/train")
    (tmp_path / "bad.json").write_text(json.dumps({**d, "order": d["order"][:-1]}))
    with pytest.raises(DiffdiscError, match="each timestep of 'grid' once"):
        TimestepWeights.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(DiffdiscError, match="not a timestep weights file"):
        TimestepWeights.load(tmp_path / "other.json")


def test_cli_fits_on_a_labelled_folder_end_to_end(monkeypatch, capsys, tmp_path, classcond_dir, image_folder, one_thread):
    from diffdisc.backbones.registry import create_backbone

    out = tmp_path / "w" / "timestep_weights.json"
    code, stdout, err = run_main(monkeypatch, capsys, "timesteps", "fit", "--model", classcond_dir, "--data", image_folder,
                                 "--out", out, "--grid", "3", "--max-images", "6", "--batch-size", "18", "--json")  # fmt: skip
    assert code == 0, err
    w = TimestepWeights.load(out)
    assert json.loads(stdout) == w.to_dict()
    assert w.grid == dc_grid(1000, 3) and sorted(w.order) == w.grid and w.n_images == 6
    assert set(w.calibration["accuracy"]) == {"fitted", "even"} and w.calibration["folds"] == 3
    assert (tmp_path / "w" / "timestep_weights-calibration-grid3" / "metrics.json").is_file()  # the calibration run
    w.check(create_backbone(classcond_dir), ScoreConfig())
    code, _, err = run_main(monkeypatch, capsys, "timesteps", "fit", "--model", classcond_dir, "--data", image_folder,
                            "--out", classcond_dir / "timestep_weights.json")  # fmt: skip
    assert code == 1 and "inside the model directory" in err and not (classcond_dir / "timestep_weights.json").exists()
