"""SDXL family: a tiny StableDiffusionXLPipeline saved to disk and loaded back through `create_backbone`,
checked against the pipeline's own methods and diffusers' SDXL training loss written out by hand."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffdisc.backbones.families import families
from diffdisc.backbones.registry import create_backbone, detect_family
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from family_fixtures import make_sdxl_dir

PROMPTS = ["a red cat", "a photo of a blue dog to the left"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return make_sdxl_dir(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def bb(sdxl_dir):
    return create_backbone(sdxl_dir)


@pytest.fixture(scope="module")
def pipe(sdxl_dir):
    """The same directory loaded independently, by the pipeline class itself."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(sdxl_dir, use_safetensors=True)


def _images(n, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loads_as_sdxl_not_sd(bb, sdxl_dir, tmp_path):
    assert bb.info.family == "sdxl" and detect_family(sdxl_dir) == "sdxl"
    assert bb.info.image_size == 64 and bb.info.latent and bb.info.prediction_type == "epsilon"
    assert bb.offloaded == ("text_encoder", "text_encoder_2") and not bb.learned_variance
    sd = next(f for f in families() if f.name == "sd")
    assert not sd.detect(sdxl_dir)  # unet/ + text_encoder/ too, but model_index.json names SDXL
    fake_sd = tmp_path / "sd"
    for sub in ("unet", "text_encoder"):
        (fake_sd / sub).mkdir(parents=True)
    (fake_sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert detect_family(fake_sd) == "sd"  # and SD 1.x directories still go to sd


def test_conditions_are_the_pipelines_encode_prompt(bb, pipe):
    c = bb.pack.unpack(bb.conditions(PROMPTS))
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    assert c["prompt_embeds"].shape == (2, 77, 64) and c["pooled"].shape == (2, 32)
    torch.testing.assert_close(c["prompt_embeds"], embeds)
    torch.testing.assert_close(c["pooled"], pooled)
    # original size, crop top-left, target size of a square 64 px image
    assert c["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2
    null = bb.pack.unpack(bb.null_condition()[None])
    assert not null["prompt_embeds"].any() and not null["pooled"].any()  # force_zeros_for_empty_prompt
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    bb.pipe.register_to_config(force_zeros_for_empty_prompt=False)
    bb.clear_conditions()  # ∅ is encoded once per backbone
    try:
        null = bb.pack.unpack(bb.null_condition()[None])
        embeds, _, pooled, _ = pipe.encode_prompt([""], device="cpu", do_classifier_free_guidance=False)
        torch.testing.assert_close(null["prompt_embeds"], embeds)
        torch.testing.assert_close(null["pooled"], pooled)
    finally:
        bb.pipe.register_to_config(force_zeros_for_empty_prompt=True)
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
        bb.clear_conditions()


def test_noised_input_is_the_schedulers(bb, sdxl_dir):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    x0, eps, t = torch.randn(3, 4, 32, 32), torch.randn(3, 4, 32, 32), torch.tensor([0, 400, 999])
    x_t = bb.add_noise(x0, eps, t)
    ddpm = DDPMScheduler.from_pretrained(
        sdxl_dir, subfolder="scheduler"
    )  # what the SDXL training example noises with
    torch.testing.assert_close(x_t, ddpm.add_noise(x0, eps, t))
    euler = EulerDiscreteScheduler.from_pretrained(
        sdxl_dir, subfolder="scheduler"
    )  # x0 + σ ε, scaled by 1/√(σ²+1)
    sigma = ((1 - ddpm.alphas_cumprod[t]) / ddpm.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, euler.add_noise(x0, eps, t.float()) / (sigma**2 + 1).sqrt())


def test_error_is_the_training_loss_written_out(bb, pipe, sdxl_dir):
    from diffusers import DDPMScheduler

    images, t = _images(2), torch.tensor([50, 700])
    x0 = bb.encode(images)
    with torch.no_grad():  # SDXL's scaling factor, from the VAE config
        torch.testing.assert_close(x0, pipe.vae.encode(images).latent_dist.mean * 0.13025)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    cond = bb.conditions(PROMPTS)
    got = ScoringEngine(bb, ScoreConfig(weighting="uniform", batch_size=2)).errors(x0, eps, t, cond)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(2, 1)
    noisy = DDPMScheduler.from_pretrained(sdxl_dir, subfolder="scheduler").add_noise(x0, eps, t)
    with torch.no_grad():
        pred = pipe.unet(
            noisy, t, embeds, added_cond_kwargs={"time_ids": time_ids, "text_embeds": pooled}
        ).sample
    want = ((pred.float() - eps.float()) ** 2).mean(dim=(1, 2, 3))  # F.mse_loss(model_pred, noise) per sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_scores_do_not_depend_on_batch_size(bb):
    x0, keys = bb.encode(_images(2)), ["a", "b"]
    conds = bb.conditions(PROMPTS)
    one = ScoringEngine(bb, ScoreConfig(batch_size=1)).exhaustive(x0, keys, conds, [100, 800])
    three = ScoringEngine(bb, ScoreConfig(batch_size=3)).exhaustive(x0, keys, conds, [100, 800])
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-7)


def test_classify_match_and_features_end_to_end(bb, tmp_path):
    from diffdisc.data.groups import Group
    from diffdisc.data.labelled import LabelledImages
    from diffdisc.features.heads import HeadConfig
    from diffdisc.tasks.classify import ClassifyConfig, classify
    from diffdisc.tasks.features import FeatureConfig, SweepConfig, sweep
    from diffdisc.tasks.match import match

    rng = np.random.default_rng(0)
    arrays = {
        c: [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(2)] for c in ("red", "blue")
    }
    for c, ims in arrays.items():
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for k, a in enumerate(ims):
            Image.fromarray(a).save(tmp_path / "imgs" / c / f"{k}.png")
    res = classify(
        bb, tmp_path / "imgs", ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2)), out=tmp_path / "c"
    )
    assert len(res) == 4 and res.calls.tolist() == [4] * 4
    groups = [Group("g0", tuple(arrays["red"]), ("a red cat", "a blue dog"))]
    recs = match(bb, groups, n_timesteps=2, out=tmp_path / "m")
    assert np.array(recs[0]["scores"]).shape == (2, 2) and np.isfinite(recs[0]["scores"]).all()
    train = LabelledImages.from_folder(tmp_path / "imgs")
    grid = SweepConfig(["down.1", "mid"], [10, 500], features=FeatureConfig(condition="caption:a photo", val_fraction=0.5),
                       head=HeadConfig(weight_decays=(1e-3,), max_iter=5))  # fmt: skip
    r = sweep(bb, train, grid)
    assert np.asarray(r.val_acc).shape == (2, 2)


def test_missing_components_and_bad_input(sdxl_dir, bb, tmp_path):
    broken = tmp_path / "no-te2"
    shutil.copytree(sdxl_dir, broken, ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(
        DiffdiscError, match=r"missing text_encoder_2/config\.json \(CLIPTextModelWithProjection\)"
    ):
        create_backbone(broken)
    index = json.loads((sdxl_dir / "model_index.json").read_text())
    nulled = tmp_path / "null-tok2"
    shutil.copytree(sdxl_dir, nulled, ignore=shutil.ignore_patterns("tokenizer_2"))
    (nulled / "model_index.json").write_text(json.dumps({**index, "tokenizer_2": [None, None]}))
    with pytest.raises(DiffdiscError, match="lists no tokenizer_2"):
        create_backbone(nulled)
    with pytest.raises(DiffdiscError, match="not a multiple of 2"):
        create_backbone(sdxl_dir, image_size=63)
    with pytest.raises(DiffdiscError, match="take no option --no-t5"):
        create_backbone(sdxl_dir, no_t5=True)
    with pytest.raises(DiffdiscError, match="empty"):
        bb.conditions([" "])


def test_layout_without_the_first_encoder(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    root = make_sdxl_dir(tmp_path / "te2-only", first_encoder=False)
    one = create_backbone(root)
    assert one.offloaded == ("text_encoder_2",) and one.pipe.text_encoder is None
    c = one.pack.unpack(one.conditions(PROMPTS))
    embeds, _, pooled, _ = StableDiffusionXLPipeline.from_pretrained(root).encode_prompt(
        PROMPTS, device="cpu", do_classifier_free_guidance=False
    )
    assert embeds.shape == (2, 77, 32)
    torch.testing.assert_close(c["prompt_embeds"], embeds)
    torch.testing.assert_close(c["pooled"], pooled)
    x0 = one.encode(_images(1))
    assert one.predict_eps(x0, torch.tensor([10]), one.conditions(PROMPTS[:1])).shape == x0.shape
