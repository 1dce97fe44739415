"""Parity with the official SD3 / SD3.5 scoring loop of "Diffusion Classifiers Understand Compositionality, but
Conditions Apply" (Jeong et al., 2025), on the tiny SD3 pipeline.

The official loop lives in the repository's vendored diffusers, in
`StableDiffusion3Img2ImgPipeline.__call__` (with `prepare_latents`, `sampled_timesteps`, `presave_latents`;
diffusers/src/diffusers/pipelines/stable_diffusion_3/pipeline_stable_diffusion_3_img2img.py of
eugene6923/Diffusion-Classifiers-Compositionality). Its essential lines are copied below, adapted only where
today's diffusers differs (its `scale_noise` returns the noised sample alone; the vendored one also returned
the σ it used, recomputed here with the same lines). The port runs on the same model, latents and noise as
diffdisc, and the two give the same numbers:

- timesteps: the official values are entries of the scheduler's own (descending) `timesteps` table; the
  official σ is `sigmas[i]` at its index i, and diffdisc's integer t is the row T-1-i of the increasing table
  `bb.process.sigmas`. The official default grid (50 "inference steps", strength 0.6, 30 sampling steps) is the
  rows 22, 55, ..., 979: diffdisc's `dc_grid(1000, 30)` (16, 49, ..., 973) shifted by 6 rows.
- error: the official target is ε - x0 and its `time_weighting` is diffusers' `compute_loss_weighting_for_sd3`
  (None, logit_normal, mode: 1; sigma_sqrt; cosmap); with `use_normed_classifier=False` the error,
  w(σ)·mean((v̂ - (ε - x0))²), is diffdisc's weighting `velocity` / `sigma_sqrt` / `cosmap` exactly.
- the official command line's default is `use_normed_classifier=True` (`--use_normed_classifier` is
  argparse `store_false`): w(σ)·‖v̂ - (ε - x0)‖₂, the norm, not its square, over all C·H·W elements. That is
  w·√(N·velocity error), N = C·H·W: the same ranking at one t, not after the mean over timesteps.
- latents: `presave_latents` draws a sample of the VAE posterior (`retrieve_latents`, sample_mode "sample",
  global RNG); diffdisc encodes to its mean. Both are fed the same (sampled) latents here, and the gap is
  asserted to be exactly the posterior draw.
- noise: one bank `noise_samples[k]` per position k of the timestep list, the same for every image and every
  prompt (diffdisc's `noise="global"` shares across images too, keyed by t instead of position).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.scoring.config import ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.schedule import dc_grid
from family_fixtures import make_sd3_dir

PROMPTS = ["a red cat", "a photo of a blue dog", "the green squirrel"]
POSITIONS = [0, 14, 29]  # three of the official 30 timesteps (their noise is noise_samples[position])

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory, one_thread):
    return make_sd3_dir(tmp_path_factory.mktemp("sd3_ca") / "sd3")


@pytest.fixture(scope="module")
def bb(sd3_dir):
    return create_backbone(sd3_dir)


@pytest.fixture(scope="module")
def pipe(sd3_dir):
    """The official path: the directory loaded by the img2img pipeline class the official code subclasses."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    return StableDiffusion3Img2ImgPipeline.from_pretrained(sd3_dir, use_safetensors=True)


# ---------------------------------------------------------------------- the official loop (ported)
def official_sampled_timesteps(scheduler, num_inference_steps=50, strength=0.6, sampling_steps=30):
    """`sampled_timesteps` (later_timesteps=False) with `__call__`'s defaults (50 steps, strength 0.6) and
    diffusion_itm.py's --sampling_steps 30."""
    rate = int(1000 / sampling_steps)
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    t_end = len(scheduler.timesteps) - t_start
    timesteps_indices = np.arange(t_start * scheduler.order, t_end, rate)
    return scheduler.timesteps[timesteps_indices].tolist()[::-1]


def official_presave_latents(pipe, image):
    """diffusion_itm.py `score_batch`: image_processor.preprocess, then `presave_latents` (a posterior sample)."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents

    image = pipe.image_processor.preprocess(image)
    init_latents = retrieve_latents(pipe.vae.encode(image), generator=None)
    return (init_latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def official_scale_noise(scheduler, sample, timestep, noise):
    """The vendored FlowMatchEulerDiscreteScheduler.scale_noise (begin_index None), which returns σ too."""
    sigmas = scheduler.sigmas.to(device=sample.device, dtype=sample.dtype)
    schedule_timesteps = scheduler.timesteps.to(sample.device)
    step_indices = [scheduler.index_for_timestep(t, schedule_timesteps) for t in timestep]
    sigma = sigmas[step_indices].flatten()
    while len(sigma.shape) < len(sample.shape):
        sigma = sigma.unsqueeze(-1)
    return sigma * noise + (1.0 - sigma) * sample, sigma


@torch.no_grad()
def official_dists(pipe, prompt, presaved_latents, timesteps, noise_samples, max_sequence_length,
                   time_weighting=None, use_normed_classifier=False):  # fmt: skip
    """`__call__` with guidance_scale 0 and unconditional False (diffusion_itm.py's defaults): (B, len(timesteps)),
    prompt[b] scored on image b. `noise_samples[k]` is the bank row of position k in the timestep list."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    batch_size = len(prompt)
    prompt_embeds, _, pooled_prompt_embeds, _ = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, device="cpu",
        num_images_per_prompt=1, max_sequence_length=max_sequence_length,
    )  # fmt: skip
    dists = []
    for sampling_step, t in enumerate(timesteps):
        latent_timestep = torch.tensor([t] * batch_size)
        # prepare_latents (presaved latents)
        init_latents = presaved_latents
        noise = noise_samples[sampling_step].unsqueeze(0).repeat(batch_size, 1, 1, 1)
        latents, sigmas = official_scale_noise(pipe.scheduler, init_latents, latent_timestep, noise)

        t = torch.tensor(t, dtype=torch.float)
        timestep = t.expand(latents.shape[0])
        noise_pred = pipe.transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=prompt_embeds,
                                      pooled_projections=pooled_prompt_embeds, joint_attention_kwargs=None,
                                      return_dict=False)[0]  # fmt: skip
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=time_weighting, sigmas=sigmas)
        target = noise - init_latents
        if use_normed_classifier:
            dist = weighting.float().flatten() * torch.norm(
                (noise_pred - target).reshape(target.shape[0], -1), p=2, dim=1
            )
        else:
            dist = weighting.float().flatten() * ((noise_pred - target) ** 2).reshape(
                target.shape[0], -1
            ).mean(dim=-1)
        dists.append(dist)
    return torch.stack(dists).permute(1, 0)


# ---------------------------------------------------------------------- shared inputs
def rows_of(pipe, timesteps) -> torch.Tensor:
    """Official timestep values -> diffdisc's t: the row of the increasing σ table."""
    T = pipe.scheduler.config.num_train_timesteps
    return torch.tensor([T - 1 - pipe.scheduler.index_for_timestep(t) for t in timesteps])


@pytest.fixture(scope="module")
def inputs(pipe):
    """Two images in [-1, 1] (the official dataset's `diffusers_preprocess` output), their sampled latents,
    three official timesteps and their rows of a (30, C, H, W) noise bank."""
    imgs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)  # diffusion_itm.py seeds the global RNG; the posterior sample draws from it
    with (
        torch.no_grad(),
        pytest.warns(FutureWarning, match=r"\[-1,1\]"),
    ):  # as the official run: a no-op preprocess
        x0 = official_presave_latents(pipe, imgs)
    bank = torch.randn(30, *x0.shape[1:], generator=torch.Generator().manual_seed(1))
    timesteps = [official_sampled_timesteps(pipe.scheduler)[k] for k in POSITIONS]
    return imgs, x0, bank[POSITIONS], timesteps


def official_grid(pipe, x0, noise, timesteps, **kw) -> torch.Tensor:
    """[image, prompt, t] through the official loop: one call per prompt, that prompt on every image."""
    n = x0.shape[0]
    return torch.stack([official_dists(pipe, [p] * n, x0, timesteps, noise, **kw) for p in PROMPTS], 1)


def diffdisc_grid(bb, x0, noise, t_rows, weighting) -> torch.Tensor:
    """[image, prompt, t] through diffdisc's engine, all triples in one batch, noise shared as the official."""
    n, m, k = x0.shape[0], len(PROMPTS), len(t_rows)
    i, j, s = torch.cartesian_prod(torch.arange(n), torch.arange(m), torch.arange(k)).unbind(1)
    conds = bb.conditions(PROMPTS)
    with torch.inference_mode():
        err = ScoringEngine(bb, ScoreConfig(weighting=weighting, batch_size=64)).errors(
            x0[i], noise[s], t_rows[s], conds[j]
        )
    return err.view(n, m, k)


# ---------------------------------------------------------------------- tests
def test_official_timesteps_are_rows_of_the_sigma_table(bb, pipe):
    ts = official_sampled_timesteps(pipe.scheduler)
    rows = rows_of(pipe, ts)
    assert rows.tolist() == list(range(22, 1000, 33)) == [t + 6 for t in dc_grid(1000, 30)]
    idx = pipe.scheduler.config.num_train_timesteps - 1 - rows
    torch.testing.assert_close(bb.process.sigmas[rows].float(), pipe.scheduler.sigmas[idx])  # the same σ
    torch.testing.assert_close(bb.timestep_input(rows), torch.tensor(ts))  # the same transformer timestep


def test_prompts_encode_alike(bb, pipe):
    """The official __call__ encodes with max_sequence_length 256; on real SD3 (T5 tokenizer limit 512) so does
    diffdisc. The tiny T5 tokenizer stops at 16, where diffdisc stops too, so the port is given that length."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, prompt_3=None, device="cpu",
                                              do_classifier_free_guidance=False, max_sequence_length=bb.max_sequence_length)  # fmt: skip
    got = bb.cond_pack.unpack(bb.conditions(PROMPTS))
    torch.testing.assert_close(got["prompt_embeds"], embeds)
    torch.testing.assert_close(got["pooled"], pooled)


def test_official_latents_are_a_posterior_sample_of_diffdiscs_mean(bb, pipe, inputs):
    imgs, x0, _, _ = inputs
    with torch.no_grad():
        posterior = pipe.vae.encode(imgs).latent_dist
    torch.manual_seed(0)
    z = torch.randn(posterior.mean.shape)
    torch.testing.assert_close(x0, bb.encode(imgs) + pipe.vae.config.scaling_factor * posterior.std * z)
    assert (x0 - bb.encode(imgs)).abs().amax() > 1e-2


@pytest.mark.parametrize(
    ("time_weighting", "weighting"), [(None, "velocity"), ("sigma_sqrt", "sigma_sqrt"), ("cosmap", "cosmap")]
)
def test_squared_errors_are_diffdiscs_flow_weightings(bb, pipe, inputs, time_weighting, weighting):
    """use_normed_classifier=False: w(σ)·mean((v̂ - (ε - x0))²) is diffdisc's weighting, number for number."""
    _, x0, noise, timesteps = inputs
    ref = official_grid(pipe, x0, noise, timesteps, max_sequence_length=bb.max_sequence_length,
                        time_weighting=time_weighting, use_normed_classifier=False)  # fmt: skip
    got = diffdisc_grid(bb, x0, noise, rows_of(pipe, timesteps), weighting)
    assert ref.shape == got.shape == (2, len(PROMPTS), len(POSITIONS))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_command_line_default_is_the_norm_of_the_velocity_error(bb, pipe, inputs):
    """use_normed_classifier=True (diffusion_itm.py's default): w(σ)·‖v̂ - v‖₂ = w(σ)·√(N · velocity error)."""
    _, x0, noise, timesteps = inputs
    t_rows = rows_of(pipe, timesteps)
    velocity = diffdisc_grid(bb, x0, noise, t_rows, "velocity")
    n = x0[0].numel()
    for time_weighting in (None, "cosmap"):
        ref = official_grid(pipe, x0, noise, timesteps, max_sequence_length=bb.max_sequence_length,
                            time_weighting=time_weighting, use_normed_classifier=True)  # fmt: skip
        w = bb.process.weight(t_rows, "velocity" if time_weighting is None else time_weighting).float()
        torch.testing.assert_close(ref, w * (n * velocity).sqrt(), rtol=1e-4, atol=1e-6)
