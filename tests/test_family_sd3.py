"""SD3 / SD3.5 (StableDiffusion3Pipeline): loaded from a saved tiny pipeline, scored exactly as diffusers
encodes prompts and trains the model (the SD3 DreamBooth example's flow-matching loss and weightings)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine, Work
from family_fixtures import SD3_TOKEN_LENGTH, make_sd3_dir

PROMPTS = ["a red cat", "a photo of a blue dog", "the green squirrel"]
T5_DEFAULT = 256  # StableDiffusion3Pipeline.encode_prompt's max_sequence_length


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: OpenMP threads only wait for a busy core


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory, one_thread):
    return make_sd3_dir(tmp_path_factory.mktemp("sd3") / "sd3")


@pytest.fixture(scope="module")
def bb(sd3_dir):
    return create_backbone(sd3_dir)


@pytest.fixture(scope="module")
def pipe(sd3_dir):
    """The same directory loaded independently, by the pipeline class itself."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(sd3_dir, use_safetensors=True)


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def encode_prompt(pipe, prompts, max_sequence_length=SD3_TOKEN_LENGTH):
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, prompt_3=None, device="cpu",
                                              do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)  # fmt: skip
    return embeds, pooled


def scheduler_index(pipe, t: torch.Tensor) -> torch.Tensor:
    """diffdisc's t (σ increasing with t) -> the row of the scheduler's own tables (σ decreasing)."""
    return pipe.scheduler.config.num_train_timesteps - 1 - t


# ---------------------------------------------------------------------- 1. loading
def test_loads_as_the_sd3_family(bb, sd3_dir):
    assert bb.info.family == "sd3" and bb.info.conditioning == "text" and bb.info.latent
    assert bb.info.prediction_type == "flow" and bb.is_flow and bb.num_train_timesteps == 1000
    assert bb.info.image_size == 16 and bb.info.image_channels == 3 and bb.patch == 1  # sample_size 16 × VAE factor 1
    assert bb.offloaded == ("text_encoder", "text_encoder_2", "text_encoder_3")
    assert bb.max_sequence_length == SD3_TOKEN_LENGTH  # the T5 tokenizer's limit, below the pipeline's 256
    assert bb.encode(images(2)).shape == (2, 4, 16, 16)
    assert create_backbone(sd3_dir, image_size=32).info.image_size == 32


# ---------------------------------------------------------------------- 2. conditions
def test_conditions_are_the_pipelines_encode_prompt(bb, pipe, monkeypatch):
    calls, encode = [], bb.pipe.encode_prompt
    monkeypatch.setattr(bb, "prompt_batch", 2)
    monkeypatch.setattr(bb.pipe, "encode_prompt", lambda **kw: calls.append(len(kw["prompt"])) or encode(**kw))
    prompts = [f"{p} on the left" for p in PROMPTS]  # not cached by another test
    got = bb.cond_pack.unpack(bb.conditions(prompts))
    assert calls == [2, 1]  # batched
    embeds, pooled = encode_prompt(pipe, prompts)
    assert embeds.shape == (3, 2 * SD3_TOKEN_LENGTH, 32) and pooled.shape == (3, 64)
    torch.testing.assert_close(got["prompt_embeds"], embeds)
    torch.testing.assert_close(got["pooled"], pooled)
    assert got["prompt_embeds"][:, SD3_TOKEN_LENGTH:].abs().amax() > 0  # the T5 part is there
    null = bb.cond_pack.unpack(bb.null_condition()[None])
    e0, p0 = encode_prompt(pipe, [""])
    torch.testing.assert_close(null["prompt_embeds"], e0)
    torch.testing.assert_close(null["pooled"], p0)
    with pytest.raises(DiffdiscError, match="empty"):
        bb.conditions([" "])


def test_no_t5_fills_zeros_as_the_pipeline_does(sd3_dir, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    bb = create_backbone(sd3_dir, no_t5=True)
    assert bb.offloaded == ("text_encoder", "text_encoder_2") and bb.pipe.text_encoder_3 is None
    assert bb.info.name.endswith("+no-t5")  # other scores than the directory with T5: another run identity
    got = bb.cond_pack.unpack(bb.conditions(PROMPTS))
    ref = StableDiffusion3Pipeline.from_pretrained(sd3_dir, use_safetensors=True, text_encoder_3=None, tokenizer_3=None)
    embeds, pooled = encode_prompt(ref, PROMPTS, max_sequence_length=T5_DEFAULT)
    assert embeds.shape == (3, SD3_TOKEN_LENGTH + T5_DEFAULT, 32)
    torch.testing.assert_close(got["prompt_embeds"], embeds)
    torch.testing.assert_close(got["pooled"], pooled)
    assert not got["prompt_embeds"][:, SD3_TOKEN_LENGTH:].any()
    # a directory saved without T5 (model_index.json: null) loads so without the option, under its own name
    plain = create_backbone(make_sd3_dir(tmp_path / "no_t5", with_t5=False))
    assert plain.offloaded == ("text_encoder", "text_encoder_2") and not plain.info.name.endswith("+no-t5")
    torch.testing.assert_close(plain.conditions(PROMPTS), bb.conditions(PROMPTS))


# ---------------------------------------------------------------------- 3. forward process
def test_noised_input_is_the_schedulers_scale_noise(bb, pipe):
    x0, noise, t = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16), torch.tensor([0, 500, 999])
    timestep = pipe.scheduler.timesteps[scheduler_index(pipe, t)]
    torch.testing.assert_close(bb.add_noise(x0, noise, t), pipe.scheduler.scale_noise(x0, timestep, noise))
    torch.testing.assert_close(bb.timestep_input(t), timestep)  # 1000·σ, the shifted (shift 3) schedule


# ---------------------------------------------------------------------- 4. the training loss
@pytest.mark.parametrize("weighting", ["velocity", "sigma_sqrt", "cosmap"])
def test_flow_errors_are_the_sd3_training_loss(bb, pipe, weighting):
    """train_dreambooth_sd3.py: noisy = (1 - σ) x0 + σ ε, target = ε - x0, loss = mean(w(σ) (pred - target)²)
    with w from compute_loss_weighting_for_sd3; uniform (the ε-error) is (1 - σ)² × the velocity error."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    imgs, t = images(3, seed=1), torch.tensor([3, 400, 999])
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    embeds, pooled = encode_prompt(pipe, PROMPTS)
    cfg = pipe.vae.config
    with torch.no_grad():
        model_input = (pipe.vae.encode(imgs).latent_dist.mean - cfg.shift_factor) * cfg.scaling_factor
        timesteps = pipe.scheduler.timesteps[scheduler_index(pipe, t)]
        sigmas = pipe.scheduler.sigmas[scheduler_index(pipe, t)].view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * model_input + sigmas * noise
        pred = pipe.transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=embeds,
                                pooled_projections=pooled, return_dict=False)[0]  # fmt: skip
    target = noise - model_input
    scheme = "none" if weighting == "velocity" else weighting
    w = compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas)
    loss = torch.mean((w.float() * (pred.float() - target.float()) ** 2).reshape(3, -1), 1)

    x0 = bb.encode(imgs)
    torch.testing.assert_close(x0, model_input)
    cond = bb.conditions(PROMPTS)
    got = ScoringEngine(bb, ScoreConfig(weighting=weighting, batch_size=4)).errors(x0, noise, t, cond)
    torch.testing.assert_close(got, loss, rtol=1e-4, atol=1e-6)
    if weighting == "velocity":
        eps_error = ScoringEngine(bb, ScoreConfig(weighting="uniform", batch_size=4)).errors(x0, noise, t, cond)
        torch.testing.assert_close(eps_error, (1 - sigmas.view(-1)) ** 2 * loss, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- 5. batch size
def test_scores_do_not_depend_on_batch_size(bb):
    x0, conds = bb.encode(images(2, seed=3)), bb.conditions(PROMPTS[:2])
    grid = torch.cartesian_prod(torch.arange(2), torch.arange(2), torch.tensor([100, 800]))
    work = Work(grid[:, 0], grid[:, 1], grid[:, 2])
    one = ScoringEngine(bb, ScoreConfig(batch_size=1)).run(x0, ["a", "b"], conds, work)
    three = ScoringEngine(bb, ScoreConfig(batch_size=3)).run(x0, ["a", "b"], conds, work)
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- 6. tasks end to end
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """red/ and blue/, two 16×16 images each."""
    root = tmp_path_factory.mktemp("sd3_imgs")
    rng = np.random.default_rng(0)
    for ci, name in ((0, "red"), (2, "blue")):
        (root / name).mkdir()
        for k in range(2):
            a = (rng.random((16, 16, 3)) * 60).astype(np.uint8)
            a[..., ci] = 200
            Image.fromarray(a).save(root / name / f"{k}.png")
    return root


def test_classify_and_match_end_to_end(bb, folder, tmp_path):
    from diffdisc.data.groups import Group
    from diffdisc.tasks.classify import ClassifyConfig, classify
    from diffdisc.tasks.match import match

    res = classify(bb, folder, ClassifyConfig(templates=["a {}"], adaptive=AdaptiveConfig(n_timesteps=2),
                                              score=ScoreConfig(batch_size=8)), out=tmp_path / "c")  # fmt: skip
    assert len(res) == 4 and res.calls.tolist() == [4] * 4  # 2 candidates × 2 timesteps
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["n_images"] == 4

    group = Group("g0", (str(folder / "red" / "0.png"), str(folder / "blue" / "0.png")), ("a red cat", "a blue dog"))
    recs = match(bb, [group], n_timesteps=2, score=ScoreConfig(batch_size=8), out=tmp_path / "m")
    assert np.asarray(recs[0]["scores"]).shape == (2, 2) and np.isfinite(recs[0]["scores"]).all()


def test_features_tap_the_image_stream_of_the_joint_blocks(bb, folder):
    from diffdisc.data.labelled import LabelledImages
    from diffdisc.tasks.features import FeatureConfig, diffusion_features

    data = LabelledImages.from_folder(folder)
    feats = diffusion_features(bb, data, [("block.0", 100), ("block.0", 700)], FeatureConfig(batch_size=3))
    assert [f.shape for f in feats] == [(4, 32)] * 2  # the MMDiT's inner width, averaged over image tokens
    # a JointTransformerBlock returns (encoder_hidden_states, hidden_states): the image tokens are the second
    x0 = bb.encode(data.tensors(16, 3))
    eps = ScoringEngine(bb, ScoreConfig()).noise(data.keys, [700] * 4, (4, 16, 16))
    seen = []
    hook = bb.transformer.transformer_blocks[0].register_forward_hook(lambda m, a, out: seen.append(out[1]))
    try:
        t = torch.full((4,), 700)
        bb.model_output(bb.add_noise(x0, eps, t), t, bb.null_condition().expand(4, -1))
    finally:
        hook.remove()
    torch.testing.assert_close(feats[1], seen[0].mean(1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- 7. bad input
def test_missing_components_and_bad_options(sd3_dir, tmp_path):
    broken = tmp_path / "no_transformer"
    shutil.copytree(sd3_dir, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(DiffdiscError, match=r"missing transformer/config\.json \(SD3Transformer2DModel\)"):
        create_backbone(broken)

    no_t5 = tmp_path / "t5_missing"  # model_index.json lists text_encoder_3, the folder is gone
    shutil.copytree(sd3_dir, no_t5)
    shutil.rmtree(no_t5 / "text_encoder_3")
    with pytest.raises(DiffdiscError, match=r"missing text_encoder_3/config\.json \(T5EncoderModel\).*--no-t5"):
        create_backbone(no_t5)
    assert create_backbone(no_t5, no_t5=True).pipe.text_encoder_3 is None  # the advice works

    with pytest.raises(DiffdiscError, match="sd3 models take no option --distilled-guidance"):
        create_backbone(sd3_dir, guidance=3.5)
    with pytest.raises(DiffdiscError, match="sd3 models take no option --distilled-guidance"):
        create_backbone(sd3_dir, no_t5=True, guidance=3.5)


def test_unsupported_pipeline_lists_the_supported_ones(tmp_path):
    (tmp_path / "kandinsky").mkdir()
    (tmp_path / "kandinsky" / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(DiffdiscError, match=r"KandinskyPipeline, which diffdisc does not score; supported pipelines: "
                                            r".*StableDiffusion3Pipeline"):  # fmt: skip
        create_backbone(tmp_path / "kandinsky")
