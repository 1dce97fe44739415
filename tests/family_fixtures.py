"""Tiny random pipeline directories of the diffusers families, saved the way users' models are.

Plain builder functions (no pytest fixtures): a test module wraps the one it needs in a module-scoped
fixture. Shapes follow diffusers' own fast pipeline tests (`get_dummy_components`); the tokenizers are
word-level stand-ins (`build_word_tokenizer`), since the hub's tiny tokenizers are not available offline.
Each family keeps its builder in its own section below.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

# Words of the prompts the family tests use (a word outside the vocabulary becomes <unk>, which still works).
WORDS = ["a", "an", "photo", "painting", "of", "the", "red", "green", "blue", "cat", "dog", "squirrel", "left",
         "right", "to", "and", "on", "image"]  # fmt: skip


# ====================================================================== SD3 / SD3.5 (StableDiffusion3Pipeline)
SD3_TOKEN_LENGTH = 16  # every tokenizer's model_max_length: 16 CLIP tokens + 16 T5 tokens per prompt


def sd3_components(with_t5: bool = True, seed: int = 0, shift: float = 3.0) -> dict:
    """StableDiffusion3Pipeline's components with the shapes of its fast test's `get_dummy_components`
    (one MMDiT layer, patch 1, 4 latent channels, a VAE without downsampling), but `sample_size` 16: 16×16
    images and 256 image tokens instead of 1024 run ~50× faster on a busy CPU.

    The T5 is a config of the same shape as hf-internal-testing/tiny-random-t5; the scheduler has SD3's
    shift 3.0 (the fast test keeps the default 1.0), so the shifted σ table is what is tested.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from diffdisc.training.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS, SD3_TOKEN_LENGTH)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    clip = CLIPTextConfig(hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                          num_hidden_layers=5, vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=32,
                          max_position_embeddings=SD3_TOKEN_LENGTH, **ids)  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(clip)
    torch.manual_seed(seed + 1)  # the fast test seeds both CLIPs alike; distinct ones show a mixed-up encoder
    text_encoder_2 = CLIPTextModelWithProjection(clip)
    text_encoder_3 = tokenizer_3 = None
    if with_t5:
        torch.manual_seed(seed)
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=5,
                                                 num_heads=4, relative_attention_num_buckets=8, **ids))  # fmt: skip
        tokenizer_3 = build_word_tokenizer(WORDS, SD3_TOKEN_LENGTH)
    torch.manual_seed(seed)
    vae = AutoencoderKL(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)  # fmt: skip
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=shift),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer": tokenizer,
        "tokenizer_2": build_word_tokenizer(WORDS, SD3_TOKEN_LENGTH),
        "tokenizer_3": tokenizer_3,
        "transformer": transformer,
        "vae": vae,
    }


def make_sd3_dir(root, with_t5: bool = True, seed: int = 0, shift: float = 3.0) -> Path:
    """A saved tiny StableDiffusion3Pipeline (model_index.json lists text_encoder_3 as null without T5)."""
    from diffusers import StableDiffusion3Pipeline

    root = Path(root)
    StableDiffusion3Pipeline(**sd3_components(with_t5, seed, shift)).save_pretrained(root, safe_serialization=True)
    return root


# ====================================================================== end of SD3


# ====================================================================== SDXL (StableDiffusionXLPipeline)
SDXL_TOKEN_LENGTH = 77  # CLIP's context, as in real SDXL tokenizers


def sdxl_components(seed: int = 0, first_encoder: bool = True) -> dict:
    """StableDiffusionXLPipeline's components with the shapes of its fast test's `get_dummy_components`
    (UNet (2, 4) channels with text_time added embeddings, 32×32 latents of 64×64 images, two 5-layer CLIPs
    of width 32, EulerDiscreteScheduler). The VAE carries SDXL's scaling factor 0.13025, so a backbone
    that read the SD default 0.18215 instead of the config would be caught. `first_encoder=False`: the
    layout without text_encoder / tokenizer (the second encoder's 32 channels only)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffdisc.training.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS, SDXL_TOKEN_LENGTH)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64 if first_encoder else 32, norm_num_groups=1,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                       timestep_spacing="leading")  # fmt: skip
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=128,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        scaling_factor=0.13025)  # fmt: skip
    clip = CLIPTextConfig(hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                          num_hidden_layers=5, vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=32,
                          max_position_embeddings=SDXL_TOKEN_LENGTH, **ids)  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip) if first_encoder else None
    torch.manual_seed(seed + 1)  # distinct from the first encoder, so a mixed-up encoder shows
    text_encoder_2 = CLIPTextModelWithProjection(clip)
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer if first_encoder else None,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": build_word_tokenizer(WORDS, SDXL_TOKEN_LENGTH),
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_sdxl_dir(root, seed: int = 0, first_encoder: bool = True) -> Path:
    """A saved tiny StableDiffusionXLPipeline (64×64 images)."""
    from diffusers import StableDiffusionXLPipeline

    root = Path(root)
    pipe = StableDiffusionXLPipeline(**sdxl_components(seed, first_encoder), add_watermarker=False)
    pipe.save_pretrained(root, safe_serialization=True)
    return root


# ====================================================================== end of SDXL


# ====================================================================== PixArt-α / PixArt-Σ (PixArtAlphaPipeline, PixArtSigmaPipeline)
def pixart_components(sigma: bool = False, seed: int = 0, sample_size: int = 8) -> dict:
    """PixArt's components with the shapes of its fast tests' `get_dummy_components` (both α and Σ): a 2-layer
    PixArtTransformer2DModel, patch 2, learned sigma (out_channels 8 = 2 × 4), the default one-block
    AutoencoderKL (no downsampling: 8×8 images), DDIMScheduler, and a T5 of tiny-random-t5's shape.
    `sample_size=128` makes a PixArt-α 1024 px model (the one that takes resolution / aspect-ratio conditions).
    The tokenizer's limit is the pipeline's default sequence length (α 120, Σ 300)."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from diffdisc.training.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS, 300 if sigma else 120)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=0)
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(seed)
    vae = AutoencoderKL()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=5, num_heads=4,
                                           relative_attention_num_buckets=8, **ids))  # fmt: skip
    return {"transformer": transformer.eval(), "vae": vae.eval(), "scheduler": DDIMScheduler(), "text_encoder": text_encoder,
            "tokenizer": tokenizer}  # fmt: skip


def make_pixart_dir(root, sigma: bool = False, seed: int = 0, sample_size: int = 8) -> Path:
    """A saved tiny PixArtAlphaPipeline (or PixArtSigmaPipeline with `sigma`)."""
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline

    root = Path(root)
    pipe_cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe_cls(**pixart_components(sigma, seed, sample_size)).save_pretrained(root, safe_serialization=True)
    return root


# ====================================================================== end of PixArt


# ====================================================================== FLUX.1 (FluxPipeline)
FLUX_CLIP_LENGTH = 12  # the CLIP tokenizer's model_max_length (the pipeline's tokenizer_max_length)
FLUX_T5_LENGTH = 8  # the T5 tokenizer's model_max_length: the backbone's max_sequence_length (8 text tokens)
# FLUX.1's scheduler configs: dev shifts σ by the image's token count (`mu`), schnell does not shift at all.
FLUX_DEV_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
                          use_dynamic_shifting=True)  # fmt: skip
FLUX_SCHNELL_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=1.0,
                              use_dynamic_shifting=False)  # fmt: skip


def flux_components(guidance_embeds: bool = True, seed: int = 0) -> dict:
    """FluxPipeline's components with the shapes of its fast test's `get_dummy_components` (1 double-stream +
    1 single-stream block, 4 packed channels = one latent channel × 2×2, a VAE without downsampling that has
    FLUX's shift and scaling factors, a 5-layer CLIP and a T5 of tiny-random-t5's shape, both of width 32).

    `guidance_embeds`: FLUX.1-dev-like (guidance input, dev's resolution-shifted scheduler); without it
    FLUX.1-schnell-like (schnell's unshifted scheduler). The fast test keeps the scheduler's defaults, under
    which `mu` would change nothing.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from diffdisc.training.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS, FLUX_CLIP_LENGTH)
    tokenizer_2 = build_word_tokenizer(WORDS, FLUX_T5_LENGTH)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                                                num_attention_heads=4, num_hidden_layers=5, vocab_size=len(tokenizer),
                                                hidden_act="gelu", projection_dim=32,
                                                max_position_embeddings=FLUX_CLIP_LENGTH, **ids))  # fmt: skip
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=5,
                                             num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                             eos_token_id=tokenizer_2.eos_token_id,
                                             pad_token_id=tokenizer_2.pad_token_id))  # fmt: skip
    torch.manual_seed(seed)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if guidance_embeds else FLUX_SCHNELL_SCHEDULER))
    return {
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "vae": vae,
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_flux_dir(root, guidance_embeds: bool = True, seed: int = 0) -> Path:
    """A saved tiny FluxPipeline (any even image side: the VAE does not downsample)."""
    from diffusers import FluxPipeline

    root = Path(root)
    FluxPipeline(**flux_components(guidance_embeds, seed)).save_pretrained(root, safe_serialization=True)
    return root


# ====================================================================== end of FLUX
