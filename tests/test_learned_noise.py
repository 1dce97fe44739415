"""Learned noise (NoOp): fitted through the frozen denoiser, kept white, saved with what it belongs to, refused
elsewhere, and used by classify in place of random draws."""

import json

import pytest
import torch

from conftest import make_classcond_dir, make_squares, run_main
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.learned_noise import LearnedNoise, noise_stats, white

TS = (100, 500)  # timesteps of the fixture noise (classify --timesteps 2 would score 250, 750)


@pytest.fixture(scope="module")
def bb(classcond_dir):
    from diffdisc.backbones.registry import create_backbone

    return create_backbone(classcond_dir)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    return make_squares(tmp_path_factory.mktemp("train"), per_class=4, seed=1)  # other draws than `image_folder`


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, bb, train, one_thread):
    from diffdisc.tasks.noise_fit import fit_learned_noise

    out = tmp_path_factory.mktemp("noise") / "noise.safetensors"
    noise = fit_learned_noise(bb, train, timesteps=TS, steps=8, lr=0.2, batch_images=6, holdout=0.25, out=out)
    return noise, out


def test_white_noise_has_unit_variance_and_a_flat_spectrum():
    theta = torch.randn(2, 3, 16, 16) * 5 + 2  # any scale and offset
    eps = white(theta)
    assert eps.shape == theta.shape
    torch.testing.assert_close(eps.pow(2).mean(dim=(-2, -1)), torch.ones(2, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.fft.fft2(eps, norm="ortho").abs(), torch.ones(2, 3, 16, 16), rtol=1e-4, atol=1e-4
    )
    assert abs(eps.mean(dim=(-2, -1))).max() <= 1 / 16 + 1e-6  # the DC bin: ±1/√(H·W)
    torch.testing.assert_close(white(eps), eps, rtol=1e-5, atol=1e-5)  # a projection
    st = noise_stats(eps.flatten(0, 1))
    assert all(abs(s - 1) < 0.05 for s in st["std"])


def test_fit_lowers_its_training_loss_and_keeps_the_noise_white(fitted, bb):
    noise, _ = fitted
    fit = noise.fit
    assert noise.timesteps == list(TS) and noise.shape == (3, 16, 16)
    assert all(b < a for a, b in zip(fit["loss_before"], fit["loss_after"], strict=True)), fit
    assert fit["images"] + fit["held_out"] == 12 and fit["held_out"] == 3
    assert all(abs(r - 1) < 1e-4 for r in fit["stats"]["rms"])  # white: unit variance, whatever the fit did
    assert all(abs(k - 3) < 1.5 for k in fit["stats"]["kurtosis"])  # still Gaussian-like, not a few spikes
    chk = fit["check"]
    assert chk["images"] == 3 and len(chk["learned"]) == len(chk["random"]) == 2
    assert noise.model["fingerprint"] == bb.info.fingerprint and noise.score == "denoise l2 uniform"


def test_file_round_trips_with_its_identity(fitted, train):
    noise, out = fitted
    back = LearnedNoise.load(out)
    assert back.timesteps == noise.timesteps and torch.equal(back.noise, noise.noise)
    assert back.model == noise.model and back.score == noise.score and back.fit == noise.fit
    assert back.fit["data"] == str(train.resolve()) and len(back.fit["identity"]) == 16
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["kind"] == "diffdisc learned noise" and json.loads(meta["timesteps"]) == list(TS)
    assert torch.equal(back.draw([500, 100, 500], (3, 16, 16)), noise.noise[[1, 0, 1]])


def test_refuses_another_model_score_folder_or_timestep(fitted, bb, train, tmp_path, image_folder):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.tasks.classify import classify

    noise, out = fitted
    other = create_backbone(make_classcond_dir(tmp_path / "other", seed=1))
    with pytest.raises(DiffdiscError, match="fitted for model"):
        noise.check(other, ScoreConfig())
    with pytest.raises(DiffdiscError, match="'denoise l2 uniform' scores, not 'denoise l1 uniform'"):
        noise.check(bb, ScoreConfig(loss="l1"))
    with pytest.raises(DiffdiscError, match="never on the images it is measured on"):
        classify(bb, train, out=tmp_path / "same", noise=str(out), adaptive=AdaptiveConfig(n_timesteps=2))
    with pytest.raises(
        DiffdiscError, match=r"t = 250, 750"
    ):  # --timesteps 2 scores 250, 750: not in the file
        classify(
            bb, image_folder, out=tmp_path / "r1", noise=str(out), adaptive=AdaptiveConfig(n_timesteps=2)
        )
    with pytest.raises(DiffdiscError, match="t-test draws its timesteps at random"):
        classify(
            bb, image_folder, out=tmp_path / "r2", noise=str(out), adaptive=AdaptiveConfig(strategy="ttest")
        )
    with pytest.raises(DiffdiscError, match="images are"):
        noise.draw([100], (1, 16, 16))
    assert not any((tmp_path / r).exists() for r in ("same", "r1", "r2"))  # refused before the run dir exists


def test_classify_uses_the_noise_deterministically(fitted, bb, image_folder, tmp_path, one_thread):
    from diffdisc.scoring.engine import ScoringEngine
    from diffdisc.tasks.classify import classify
    from diffdisc.tasks.noise_fit import noise_timesteps

    noise, _ = fitted
    assert noise_timesteps(bb, ",".join(map(str, TS))) == list(TS) and noise_timesteps(bb, 2) == [250, 750]
    # classify --timesteps 2 scores dc_grid(1000, 2) = 250, 750: the fitted noises, filed under those timesteps
    n2 = LearnedNoise(model=noise.model, score=noise.score, sigmas="scheduler", timesteps=[250, 750],
                      noise=noise.noise, fit={"data": noise.fit["data"]})  # fmt: skip
    path2 = n2.save(tmp_path / "n2.safetensors")
    ad = AdaptiveConfig(n_timesteps=2)
    a = classify(bb, image_folder, out=tmp_path / "a", noise=str(path2), adaptive=ad)
    b = classify(bb, image_folder, out=tmp_path / "b", noise=str(path2), adaptive=ad)
    h = classify(
        bb,
        image_folder,
        out=tmp_path / "h",
        noise=str(path2),
        adaptive=AdaptiveConfig(strategy="halving", stages=((1, 2), (2, 1))),
    )
    r = classify(bb, image_folder, out=tmp_path / "r", adaptive=ad)
    assert a.errors == b.errors  # deterministic
    assert a.errors != r.errors  # not the random draws
    assert len(h) == 9
    settings = json.loads((tmp_path / "a" / "run.json").read_text())
    assert "n2.safetensors" in json.dumps(settings) and "sha256" in json.dumps(settings)
    # the engine gives every image the same ε_t
    eng = ScoringEngine(bb, ScoreConfig(), noise=n2)
    eps = eng.noise(["x", "y"], [250, 250], (3, 16, 16))
    assert torch.equal(eps[0], eps[1]) and torch.equal(eps[0], n2.noise[0])


def test_cli_fit_then_classify(monkeypatch, capsys, tmp_path, classcond_dir, train, image_folder, one_thread):
    out = tmp_path / "n.safetensors"
    code, stdout, err = run_main(monkeypatch, capsys, "noise", "fit", "--model", classcond_dir, "--data", train,
                                 "--timesteps", "2", "--steps", "2", "--batch-images", "4", "--out", out)  # fmt: skip
    assert code == 0, err
    assert "fitting loss" in stdout and ("held-out training images" in stdout)
    code, stdout, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", image_folder,
                                 "--timesteps", "2", "--noise", out, "--out", tmp_path / "run", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["n_images"] == 9
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", train,
                            "--timesteps", "2", "--noise", out, "--out", tmp_path / "run2")  # fmt: skip
    assert code == 1 and "never on the images it is measured on" in err
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "noise",
        "fit",
        "--model",
        classcond_dir,
        "--data",
        train,
        "--out",
        tmp_path / "n.pt",
    )
    assert code == 1 and ".safetensors" in err
