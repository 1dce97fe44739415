"""Every private diffusers symbol diffdisc uses, in one place, checked against the installed version.

Scoring does what the pipelines do (FLUX's 2×2 latent packing, SDXL's micro-conditions) and the joint-
attention capture reproduces diffusers' attention processors: both use names diffusers may drop any release.
They are reached only through this module: a diffusers release that drops or moves one fails here, in one
line naming the diffusers version and the symbol (`check`, and the test that runs it), instead of as an
AttributeError deep inside a scoring run. pyproject.toml pins diffusers below the next untested minor.
"""

from __future__ import annotations

import importlib

from ..errors import DiffdiscError

_FLUX = "diffusers.pipelines.flux.pipeline_flux"
_FLUX_MODEL = "diffusers.models.transformers.transformer_flux"
_SDXL = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl"
_ATTN = "diffusers.models.attention_processor"
_DISPATCH = "diffusers.models.attention_dispatch"
# name -> (module, attribute path): what the accessors below reach, and what `missing` checks
PRIVATE = {
    "FluxPipeline._pack_latents": (_FLUX, "FluxPipeline._pack_latents"),
    "FluxPipeline._unpack_latents": (_FLUX, "FluxPipeline._unpack_latents"),
    "FluxPipeline._prepare_latent_image_ids": (_FLUX, "FluxPipeline._prepare_latent_image_ids"),
    "StableDiffusionXLPipeline._get_add_time_ids": (_SDXL, "StableDiffusionXLPipeline._get_add_time_ids"),
    "transformer_flux._get_qkv_projections": (_FLUX_MODEL, "_get_qkv_projections"),
    # internal module paths: the σ shift, and what the copied processors call
    "pipeline_flux.calculate_shift": (_FLUX, "calculate_shift"),
    "attention_dispatch.dispatch_attention_fn": (_DISPATCH, "dispatch_attention_fn"),
    "embeddings.apply_rotary_emb": ("diffusers.models.embeddings", "apply_rotary_emb"),
    # the processors `scoring.joint_attention` reproduces line for line
    "attention_processor.JointAttnProcessor2_0": (_ATTN, "JointAttnProcessor2_0"),
    "transformer_flux.FluxAttnProcessor": (_FLUX_MODEL, "FluxAttnProcessor"),
}
# private attributes of a FluxAttnProcessor instance the capture copies (checked on a fresh processor)
PROCESSOR_ATTRIBUTES = ("_attention_backend", "_parallel_config")


def _version() -> str:
    import diffusers

    return diffusers.__version__


def _pin() -> str:
    """The diffusers requirement diffdisc was installed with (pyproject.toml), for the advice."""
    try:
        from importlib.metadata import requires

        spec = next((r for r in requires("diffdisc") or () if r.replace(" ", "").startswith("diffusers")), "")
    except Exception:  # not installed as a distribution: the advice stays general
        spec = ""
    return spec.split(";")[0].replace(" ", "") or "the diffusers version pyproject.toml allows"


def _gone(name: str) -> DiffdiscError:
    return DiffdiscError(f"diffusers {_version()} has no {name}, which diffdisc uses (backbones/compat.py); "
                         f"install {_pin()}")  # fmt: skip


def _resolve(name: str):
    """The object `PRIVATE[name]` names, imported afresh (for `missing`; the accessors use `_attr`)."""
    module, path = PRIVATE[name]
    try:
        obj = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise _gone(name) from None
    return obj


def _attr(owner, attribute: str, name: str):
    """`owner.attribute`, or the one-line refusal naming the diffusers version."""
    try:
        return getattr(owner, attribute)
    except AttributeError:
        raise _gone(name) from None


def missing() -> list[str]:
    """The names of `PRIVATE` (and processor attributes) the installed diffusers lacks; [] when all exist."""
    out = []
    for name in PRIVATE:
        try:
            _resolve(name)
        except DiffdiscError:
            out.append(name)
    if "transformer_flux.FluxAttnProcessor" not in out:
        proc = _resolve("transformer_flux.FluxAttnProcessor")()
        out += [f"FluxAttnProcessor.{a}" for a in PROCESSOR_ATTRIBUTES if not hasattr(proc, a)]
    return out


def check() -> None:
    """Refuse, naming the diffusers version, when any private symbol diffdisc needs is gone."""
    gone = missing()
    if gone:
        raise _gone(", ".join(gone))


# ---------------------------------------------------------------------- FLUX: packed 2×2 latent patches
def pack_latents(pipe, latents):
    """(B, C, h, w) latents -> FLUX's (B, h/2 · w/2, 4C) tokens, as FluxPipeline packs them."""
    b, c, h, w = latents.shape
    return _attr(pipe, "_pack_latents", "FluxPipeline._pack_latents")(latents, b, c, h, w)


def unpack_latents(pipe, tokens, height: int, width: int):
    """Tokens -> (B, C, h, w) latents of an image `height` × `width` pixels (FluxPipeline's decode path)."""
    unpack = _attr(pipe, "_unpack_latents", "FluxPipeline._unpack_latents")
    return unpack(tokens, height, width, pipe.vae_scale_factor)


def latent_image_ids(pipe, batch: int, h: int, w: int, device, dtype):
    """FLUX's position ids of an h × w grid of packed tokens."""
    ids = _attr(pipe, "_prepare_latent_image_ids", "FluxPipeline._prepare_latent_image_ids")
    return ids(batch, h, w, device, dtype)


def _module(path: str, name: str):
    try:
        return importlib.import_module(path)
    except ImportError:
        raise _gone(name) from None


def calculate_shift(*args):
    """FluxPipeline's resolution-dependent σ shift `mu` (a function of its pipeline module)."""
    flux = _module("diffusers.pipelines.flux.pipeline_flux", "pipeline_flux.calculate_shift")
    return _attr(flux, "calculate_shift", "pipeline_flux.calculate_shift")(*args)


# ---------------------------------------------------------------------- SDXL micro-conditions
def sdxl_add_time_ids(pipe, original_size, crops, target_size, *, dtype, text_encoder_projection_dim):
    """StableDiffusionXLPipeline's size / crop time ids (checked against the UNet's embedding width)."""
    make = _attr(pipe, "_get_add_time_ids", "StableDiffusionXLPipeline._get_add_time_ids")
    return make(original_size, crops, target_size, dtype=dtype,
                text_encoder_projection_dim=text_encoder_projection_dim)  # fmt: skip


# ---------------------------------------------------------------------- attention processors
def flux_qkv_projections(attn, hidden_states, encoder_hidden_states):
    """FluxAttnProcessor's q, k, v (and the text stream's), fused or not, as it computes them."""
    from diffusers.models.transformers import transformer_flux

    qkv = _attr(transformer_flux, "_get_qkv_projections", "transformer_flux._get_qkv_projections")
    return qkv(attn, hidden_states, encoder_hidden_states)


def processor_dispatch(processor) -> tuple:
    """(attention backend, parallel config) of a FluxAttnProcessor, for `dispatch_attention_fn`."""
    return (_attr(processor, "_attention_backend", "FluxAttnProcessor._attention_backend"),
            _attr(processor, "_parallel_config", "FluxAttnProcessor._parallel_config"))  # fmt: skip


def dispatch_attention_fn(*args, **kwargs):
    from diffusers.models import attention_dispatch

    fn = _attr(attention_dispatch, "dispatch_attention_fn", "attention_dispatch.dispatch_attention_fn")
    return fn(*args, **kwargs)


def apply_rotary_emb(*args, **kwargs):
    from diffusers.models import embeddings

    return _attr(embeddings, "apply_rotary_emb", "embeddings.apply_rotary_emb")(*args, **kwargs)


def joint_processor_classes() -> tuple[type, type]:
    """(JointAttnProcessor2_0, FluxAttnProcessor): the processors the capture reproduces."""
    return (_resolve("attention_processor.JointAttnProcessor2_0"),
            _resolve("transformer_flux.FluxAttnProcessor"))  # fmt: skip
