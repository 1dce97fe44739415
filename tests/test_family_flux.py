"""FLUX.1 (FluxPipeline): loaded from a saved pipeline directory, scored exactly as the pipeline and the diffusers
FLUX training example compute things (encode_prompt, the resolution-shifted σ, packed 2×2 latents, guidance)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from family_fixtures import FLUX_T5_LENGTH, make_flux_dir

SIZE = 8  # images and latents are 8×8 (the tiny VAE does not downsample): 16 packed tokens
PROMPTS = ["a red cat", "a blue dog"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny ops on shared cores: one thread is ~100x faster than several spin-waiting ones."""


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return make_flux_dir(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def schnell_dir(tmp_path_factory):
    return make_flux_dir(tmp_path_factory.mktemp("schnell"), guidance_embeds=False)


@pytest.fixture(scope="module")
def bb(flux_dir):
    return create_backbone(flux_dir, image_size=SIZE)


@pytest.fixture(scope="module")
def pipe(flux_dir):
    """The same directory loaded independently, by the pipeline class alone."""
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(flux_dir, use_safetensors=True)


@pytest.fixture(scope="module")
def sched(flux_dir):
    """The scheduler as FluxPipeline.__call__ sets it for SIZE×SIZE images and 1000 steps (the training table)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    s = FlowMatchEulerDiscreteScheduler.from_pretrained(flux_dir, subfolder="scheduler")
    c = s.config
    image_seq_len = (SIZE // 2) * (SIZE // 2)  # packed latents' length (vae_scale_factor 1)
    mu = calculate_shift(image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / 1000, 1000), mu=mu)
    return s


def _images(n, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _pipeline_velocity(pipe, x_t, timesteps, prompts, guidance_scale=3.5):
    """FluxPipeline.__call__'s denoising step, written out: packed latents and ids, timestep / 1000, guidance."""
    b, c, h, w = x_t.shape
    prompt_embeds, pooled_prompt_embeds, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None,
                                                                       max_sequence_length=FLUX_T5_LENGTH)  # fmt: skip
    latents = pipe._pack_latents(x_t, b, c, h, w)
    _, latent_image_ids = pipe.prepare_latents(b, c, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                               latents.dtype, latents.device, None, latents)  # fmt: skip
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full([1], guidance_scale, dtype=torch.float32).expand(b)
    with torch.no_grad():
        noise_pred = pipe.transformer(hidden_states=latents, timestep=timesteps.to(latents.dtype) / 1000,
                                      guidance=guidance, pooled_projections=pooled_prompt_embeds,
                                      encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=latent_image_ids,
                                      return_dict=False)[0]  # fmt: skip
    return noise_pred  # packed (B, h/2 · w/2, 4c)


# ---------------------------------------------------------------------- loading
def test_loads_as_flux(bb, flux_dir):
    assert bb.info.family == "flux" and bb.info.conditioning == "text" and bb.info.latent
    assert bb.info.image_size == SIZE and bb.info.prediction_type == "flow" and bb.is_flow
    assert bb.offloaded == ("text_encoder", "text_encoder_2") and bb.info.metadata["guidance"] == 3.5
    # FluxTransformer2DModel has no sample_size: the pipeline's default (default_sample_size × vae_scale_factor)
    assert create_backbone(flux_dir).info.image_size == 128 == bb.pipe.default_sample_size * bb.pipe.vae_scale_factor


def test_conditions_are_the_pipelines_encode_prompt(bb, pipe):
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, max_sequence_length=FLUX_T5_LENGTH)
    got = bb.cond_pack.unpack(bb.conditions(PROMPTS))
    torch.testing.assert_close(got["prompt_embeds"], embeds)
    torch.testing.assert_close(got["pooled_prompt_embeds"], pooled)
    assert not text_ids.any()  # zeros: rebuilt in model_output rather than stored
    e0, p0, _ = pipe.encode_prompt(prompt=[""], prompt_2=None, max_sequence_length=FLUX_T5_LENGTH)
    null = bb.cond_pack.unpack(bb.null_condition()[None])
    torch.testing.assert_close(null["prompt_embeds"], e0)
    torch.testing.assert_close(null["pooled_prompt_embeds"], p0)


def test_sigma_table_is_the_resolution_shifted_one(bb, flux_dir, sched, schnell_dir):
    torch.testing.assert_close(bb.process.sigmas, sched.sigmas[:-1].flip(0).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(bb.timestep_input(torch.tensor([0, 999])), sched.timesteps[[999, 0]])
    big = create_backbone(flux_dir, image_size=64)  # more tokens, larger mu, more noise at every t
    assert big.mu > bb.mu and (big.process.sigmas[1:-1] > bb.process.sigmas[1:-1]).all()
    unshifted = torch.linspace(1 / 1000, 1, 1000, dtype=torch.float64)  # schnell: shift 1, no dynamic shifting
    torch.testing.assert_close(create_backbone(schnell_dir, image_size=SIZE).process.sigmas, unshifted)


def test_add_noise_is_scale_noise(bb, sched):
    x0, noise, t = torch.randn(3, 1, SIZE, SIZE), torch.randn(3, 1, SIZE, SIZE), torch.tensor([5, 500, 990])
    want = sched.scale_noise(x0, sched.timesteps[999 - t], noise)
    torch.testing.assert_close(bb.add_noise(x0, noise, t), want)


# ---------------------------------------------------------------------- the denoiser and the scores
def test_forward_is_the_pipelines_denoising_step(bb, pipe, sched):
    x0 = bb.encode(_images(2))
    assert x0.shape == (2, 1, SIZE, SIZE)
    t = torch.tensor([100, 700])
    x_t = bb.add_noise(x0, torch.randn_like(x0), t)
    want = _pipeline_velocity(pipe, x_t, sched.timesteps[999 - t], PROMPTS)
    got = bb.predict_velocity(x_t, t, bb.conditions(PROMPTS))
    assert got.shape == x_t.shape
    torch.testing.assert_close(pipe._pack_latents(got, 2, 1, SIZE, SIZE), want, atol=1e-5, rtol=1e-5)
    # and back to latents as the pipeline unpacks its final latents
    torch.testing.assert_close(got, pipe._unpack_latents(want, SIZE, SIZE, pipe.vae_scale_factor), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["velocity", "uniform"])
def test_error_is_the_training_example_loss(bb, pipe, sched, weighting):
    """The diffusers FLUX DreamBooth training example's loss: noisy = (1 - σ) x0 + σ ε, pred = transformer(packed
    noisy, σ, ...) unpacked, loss = mse(pred, ε - x0). `uniform` is the ε-error of ε̂ = noisy + (1 - σ) pred."""
    x0 = bb.encode(_images(3))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 400, 950])
    engine = ScoringEngine(bb, ScoreConfig(weighting=weighting, batch_size=3))
    got = engine.errors(x0, eps, t, bb.conditions([PROMPTS[0]] * 3))
    sigmas = sched.sigmas[999 - t].view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * x0 + sigmas * eps
    pred = pipe._unpack_latents(_pipeline_velocity(pipe, noisy, sigmas.flatten() * 1000, [PROMPTS[0]] * 3),
                                SIZE, SIZE, pipe.vae_scale_factor)  # fmt: skip
    if weighting == "velocity":
        want = ((pred.float() - (eps - x0).float()) ** 2).reshape(3, -1).mean(1)
    else:
        want = ((noisy + (1 - sigmas) * pred - eps) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_scores_do_not_depend_on_batch_size(bb):
    x0, keys = bb.encode(_images(2)), ["a", "b"]
    conds = bb.conditions(PROMPTS)
    one = ScoringEngine(bb, ScoreConfig(weighting="velocity", batch_size=1)).exhaustive(x0, keys, conds, [50, 600])
    three = ScoringEngine(bb, ScoreConfig(weighting="velocity", batch_size=3)).exhaustive(x0, keys, conds, [50, 600])
    assert one.shape == (2, 2, 2)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- guidance
def test_guidance_option(flux_dir, bb, pipe, sched, schnell_dir):
    g5 = create_backbone(flux_dir, image_size=SIZE, guidance=5.0)
    assert g5.guidance == 5.0 and g5.info.metadata["guidance"] == 5.0 and bb.guidance == 3.5
    x_t, t = torch.randn(1, 1, SIZE, SIZE), torch.tensor([300])
    cond = bb.conditions(PROMPTS[:1])
    v5 = g5.predict_velocity(x_t, t, cond)
    want = _pipeline_velocity(pipe, x_t, sched.timesteps[999 - t], PROMPTS[:1], guidance_scale=5.0)
    torch.testing.assert_close(pipe._pack_latents(v5, 1, 1, SIZE, SIZE), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(v5, bb.predict_velocity(x_t, t, cond))  # the scale reaches the model
    with pytest.raises(DiffdiscError, match="guidance must be a number"):
        create_backbone(flux_dir, image_size=SIZE, guidance="strong")
    # schnell-like: no guidance input; the option is refused, not ignored
    schnell = create_backbone(schnell_dir, image_size=SIZE)
    assert schnell.guidance is None and schnell.info.metadata["guidance"] is None
    assert torch.isfinite(schnell.predict_velocity(x_t, t, schnell.conditions(PROMPTS[:1]))).all()
    with pytest.raises(DiffdiscError, match="no guidance embedding"):
        create_backbone(schnell_dir, image_size=SIZE, guidance=3.5)


# ---------------------------------------------------------------------- bad input
def test_bad_input(flux_dir, tmp_path):
    with pytest.raises(DiffdiscError, match="flux models take no option --no-t5"):
        create_backbone(flux_dir, no_t5=True)
    with pytest.raises(DiffdiscError, match="not a multiple of 2"):
        create_backbone(flux_dir, image_size=9)
    bb = create_backbone(flux_dir, image_size=SIZE)
    with pytest.raises(DiffdiscError, match="empty caption"):
        bb.conditions(["a cat", " "])
    # a missing component names its directory and class
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in flux_dir.iterdir():
        if p.name != "text_encoder_2":
            (broken / p.name).symlink_to(p)
    with pytest.raises(DiffdiscError, match=r"missing text_encoder_2/config.json \(T5EncoderModel\)"):
        create_backbone(broken)
    index = json.loads((flux_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["text_encoder_2"] == ["transformers", "T5EncoderModel"]


# ---------------------------------------------------------------------- feature taps and the tasks
def test_block_names(bb):
    from diffdisc.features.taps import block_modules, denoiser

    mods = block_modules(denoiser(bb))
    assert list(mods) == ["block.0", "single.0"]
    assert mods["block.0"] is bb.transformer.transformer_blocks[0]
    assert mods["single.0"] is bb.transformer.single_transformer_blocks[0]


def test_taps_read_the_image_tokens(bb):
    from diffdisc.features.taps import extract

    x = _images(2)
    got = extract(bb, x, ["a", "b"], ["block.0", "single.0"], [10, 500], poolings=("gap", "flat"))
    assert got[("block.0", 10, "gap")].shape == (2, bb.transformer.inner_dim)
    assert got[("single.0", 500, "flat")].shape == (2, bb.transformer.inner_dim, SIZE // 2, SIZE // 2)
    # the image stream (the blocks' second output), read by hand at t = 10
    seen = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out[1]))
             for n, m in (("block.0", bb.transformer.transformer_blocks[0]),
                          ("single.0", bb.transformer.single_transformer_blocks[0]))]  # fmt: skip
    try:
        x0 = bb.encode(x)
        eps = ScoringEngine(bb, ScoreConfig()).noise(["a", "b"], [10, 10], tuple(x0.shape[1:]))
        tt = torch.tensor([10, 10])
        bb.model_output(bb.add_noise(x0, eps, tt), tt, bb.null_condition().expand(2, -1))
    finally:
        for h in hooks:
            h.remove()
    for n, tokens in seen.items():
        torch.testing.assert_close(got[(n, 10, "gap")], tokens.mean(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes (red / blue squares), three 12×12 images each (resized to SIZE by the tasks)."""
    root = tmp_path_factory.mktemp("flux_imgs")
    rng = np.random.default_rng(0)
    for ci, name in ((0, "red"), (2, "blue")):
        (root / name).mkdir()
        for k in range(3):
            a = (rng.random((12, 12, 3)) * 60).astype(np.uint8)
            a[..., ci] = 200
            Image.fromarray(a).save(root / name / f"{k}.png")
    return root


def test_classify_and_match_end_to_end(bb, folder, tmp_path):
    from diffdisc.data.groups import Group
    from diffdisc.tasks.classify import ClassifyConfig, classify
    from diffdisc.tasks.match import match

    cfg = ClassifyConfig(classes=["red", "blue"], templates=["a {} cat"], adaptive=AdaptiveConfig(n_timesteps=2),
                         score=ScoreConfig(weighting="velocity", batch_size=8), limit=4)  # fmt: skip
    res = classify(bb, folder, cfg, out=tmp_path / "c")
    assert len(res) == 4 and res.calls.tolist() == [4] * 4  # 2 candidates × 2 timesteps
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["n_images"] == 4
    rng = np.random.default_rng(0)
    groups = [Group("g0", tuple(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8) for _ in range(2)), tuple(PROMPTS))]
    recs = match(bb, groups, score=ScoreConfig(batch_size=8), n_timesteps=2, out=tmp_path / "m")
    assert len(recs) == 1 and np.isfinite(np.asarray(recs[0]["scores"], dtype=float)).all()


def test_features_sweep_end_to_end(bb, folder, tmp_path):
    from diffdisc.data.labelled import LabelledImages
    from diffdisc.features.heads import HeadConfig
    from diffdisc.tasks.features import FeatureConfig, SweepConfig, sweep

    train = LabelledImages.from_folder(folder)
    grid = SweepConfig(["block.0", "single.0"], [10, 500], features=FeatureConfig(val_fraction=0.34),
                       head=HeadConfig(weight_decays=(1e-3,), max_iter=20))  # fmt: skip
    r = sweep(bb, train, grid, out=tmp_path / "s")
    assert np.asarray(r.val_acc).shape == (2, 2) and r.details["unet_forwards_train"] == 6 * 2
