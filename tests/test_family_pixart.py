"""PixArt family: tiny PixArtAlphaPipeline / PixArtSigmaPipeline directories loaded through `create_backbone`,
checked against the pipelines' own methods and the ε training loss written out by hand (learned-sigma
channels dropped, T5 attention mask used, α-1024's resolution conditions as `__call__` builds them)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffdisc.backbones.registry import create_backbone, detect_family
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from family_fixtures import make_pixart_dir

PROMPTS = ["a red cat", "a photo of a blue dog to the left"]
NO_SIZE = {"resolution": None, "aspect_ratio": None}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def alpha_dir(tmp_path_factory):
    return make_pixart_dir(tmp_path_factory.mktemp("pixart-alpha"))


@pytest.fixture(scope="module")
def sigma_dir(tmp_path_factory):
    return make_pixart_dir(tmp_path_factory.mktemp("pixart-sigma"), sigma=True)


@pytest.fixture(scope="module")
def alpha(alpha_dir):
    return create_backbone(alpha_dir)


@pytest.fixture(scope="module")
def sigma(sigma_dir):
    return create_backbone(sigma_dir)


def _pipe(root):
    """The directory loaded independently, by its own pipeline class."""
    import diffusers

    cls = getattr(diffusers, json.loads((root / "model_index.json").read_text())["_class_name"])
    return cls.from_pretrained(root, use_safetensors=True)


def _images(n, size=8, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _training_loss(pipe, x0, eps, t, embeds, mask, added=NO_SIZE):
    """ε-prediction loss as diffusers' text-to-image examples write it, on the mean half of a learned-sigma output."""
    from diffusers import DDPMScheduler

    noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(x0, eps, t)
    with torch.no_grad():
        out = pipe.transformer(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=t,
                               added_cond_kwargs=added).sample  # fmt: skip
    pred = out[:, : x0.shape[1]]
    return ((pred.float() - eps.float()) ** 2).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("which", ["alpha", "sigma"])
def test_loads_as_pixart(which, request):
    bb, root = request.getfixturevalue(which), request.getfixturevalue(f"{which}_dir")
    assert bb.info.family == "pixart" and detect_family(root) == "pixart"
    assert bb.info.image_size == 8 and bb.info.latent and bb.offloaded == ("text_encoder",) and bb.patch == 2
    assert bb.transformer.config.out_channels == 2 * bb.transformer.config.in_channels and bb.learned_variance
    assert bb.max_sequence_length == (300 if which == "sigma" else 120) and not bb.size_conditions
    x0 = bb.encode(_images(2))
    assert bb.model_output(x0, torch.tensor([5, 9]), bb.conditions(PROMPTS)).shape == (
        2,
        8,
        8,
        8,
    )  # [ε, variance]
    assert bb.predict_eps(x0, torch.tensor([5, 9]), bb.conditions(PROMPTS)).shape == x0.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("which", ["alpha", "sigma"])
def test_conditions_are_the_pipelines_encode_prompt(which, request):
    bb, pipe = request.getfixturevalue(which), _pipe(request.getfixturevalue(f"{which}_dir"))
    c = bb.pack.unpack(bb.conditions(PROMPTS))
    # the pipeline's defaults: max_sequence_length 120 (α) / 300 (Σ), negative prompt ""
    embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPTS, device="cpu")
    torch.testing.assert_close(c["prompt_embeds"], embeds)
    assert torch.equal(c["mask"], mask.float()) and mask.sum(1).tolist() == [
        5,
        11,
    ]  # padded: the mask matters
    null = bb.pack.unpack(bb.null_condition()[None])
    torch.testing.assert_close(null["prompt_embeds"], neg[:1])
    assert torch.equal(null["mask"], neg_mask[:1].float())


def test_noised_input_is_the_schedulers(alpha, alpha_dir):
    from diffusers import DDIMScheduler, DDPMScheduler

    x0, eps, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 400, 999])
    x_t = alpha.add_noise(x0, eps, t)
    torch.testing.assert_close(
        x_t, DDIMScheduler.from_pretrained(alpha_dir, subfolder="scheduler").add_noise(x0, eps, t)
    )
    torch.testing.assert_close(
        x_t, DDPMScheduler.from_pretrained(alpha_dir, subfolder="scheduler").add_noise(x0, eps, t)
    )


@pytest.mark.parametrize("which", ["alpha", "sigma"])
def test_error_is_the_training_loss_with_the_mask(which, request):
    bb, pipe = request.getfixturevalue(which), _pipe(request.getfixturevalue(f"{which}_dir"))
    images, t = _images(2), torch.tensor([50, 700])
    x0 = bb.encode(images)
    with torch.no_grad():
        torch.testing.assert_close(
            x0, pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        )
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    got = ScoringEngine(bb, ScoreConfig(weighting="uniform", batch_size=2)).errors(
        x0, eps, t, bb.conditions(PROMPTS)
    )
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, device="cpu")
    torch.testing.assert_close(got, _training_loss(pipe, x0, eps, t, embeds, mask), rtol=1e-5, atol=1e-7)
    unmasked = _training_loss(pipe, x0, eps, t, embeds, torch.ones_like(mask))
    assert not torch.allclose(got, unmasked, rtol=1e-4)  # the padding is masked out, as the pipeline masks it


def test_alpha_1024_takes_resolution_conditions(tmp_path):
    root = make_pixart_dir(tmp_path / "alpha-1024", sample_size=128)
    bb = create_backbone(root, image_size=16)  # a 1024 px model's conditions, scored on small images
    assert bb.size_conditions and bb.transformer.use_additional_conditions
    kw = bb.added_cond_kwargs(2, torch.float32)
    assert kw["resolution"].tolist() == [[16.0, 16.0]] * 2 and kw["aspect_ratio"].tolist() == [[1.0]] * 2
    pipe = _pipe(root)
    x0, t = bb.encode(_images(2, size=16)), torch.tensor([50, 700])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    got = ScoringEngine(bb, ScoreConfig(batch_size=2)).errors(x0, eps, t, bb.conditions(PROMPTS))
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, device="cpu")
    # PixArtAlphaPipeline.__call__ for a 16×16 image: resolution (height, width) and aspect ratio height / width
    added = {"resolution": torch.tensor([[16.0, 16.0]] * 2), "aspect_ratio": torch.tensor([[1.0]] * 2)}
    torch.testing.assert_close(
        got, _training_loss(pipe, x0, eps, t, embeds, mask, added), rtol=1e-5, atol=1e-7
    )
    at_1024 = {"resolution": torch.tensor([[1024.0, 1024.0]] * 2), "aspect_ratio": torch.tensor([[1.0]] * 2)}
    assert not torch.allclose(
        got, _training_loss(pipe, x0, eps, t, embeds, mask, at_1024), rtol=1e-4
    )  # they matter


def test_scores_do_not_depend_on_batch_size(sigma):
    x0, keys = sigma.encode(_images(2)), ["a", "b"]
    conds = sigma.conditions(PROMPTS)
    one = ScoringEngine(sigma, ScoreConfig(batch_size=1)).exhaustive(x0, keys, conds, [100, 800])
    three = ScoringEngine(sigma, ScoreConfig(batch_size=3)).exhaustive(x0, keys, conds, [100, 800])
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-7)


def test_classify_match_and_features_end_to_end(alpha, tmp_path):
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
        alpha, tmp_path / "imgs", ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2)), out=tmp_path / "c"
    )
    assert len(res) == 4 and res.calls.tolist() == [4] * 4
    recs = match(
        alpha,
        [Group("g0", tuple(arrays["red"]), ("a red cat", "a blue dog"))],
        n_timesteps=2,
        out=tmp_path / "m",
    )
    assert np.array(recs[0]["scores"]).shape == (2, 2) and np.isfinite(recs[0]["scores"]).all()
    grid = SweepConfig(["block.0", "block.1"], [10, 500], features=FeatureConfig(condition="caption:a photo", val_fraction=0.5),
                       head=HeadConfig(weight_decays=(1e-3,), max_iter=5))  # fmt: skip
    r = sweep(alpha, LabelledImages.from_folder(tmp_path / "imgs"), grid)
    assert np.asarray(r.val_acc).shape == (2, 2)


def test_missing_components_and_bad_input(alpha_dir, alpha, tmp_path):
    broken = tmp_path / "no-transformer"
    shutil.copytree(alpha_dir, broken, ignore=shutil.ignore_patterns("transformer"))
    with pytest.raises(DiffdiscError, match=r"missing transformer/config\.json \(PixArtTransformer2DModel\)"):
        create_backbone(broken)
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(alpha_dir, no_tok, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(DiffdiscError, match=r"missing tokenizer/"):
        create_backbone(no_tok)
    # the pipeline may be saved without its text encoder (embeddings given by hand); scoring needs it
    index = json.loads((alpha_dir / "model_index.json").read_text())
    (no_tok / "model_index.json").write_text(
        json.dumps({**index, "text_encoder": [None, None], "tokenizer": [None, None]})
    )
    with pytest.raises(DiffdiscError, match="lists no text_encoder"):
        create_backbone(no_tok)
    with pytest.raises(
        DiffdiscError, match=r"not a multiple of 2 \(the VAE's factor 1 × the denoiser's patch 2\)"
    ):
        create_backbone(alpha_dir, image_size=7)
    with pytest.raises(DiffdiscError, match="empty"):
        alpha.conditions([""])
