"""What a model can do, declared by its class, asked for by the code that needs it.

A task never asks which family a model is: it asks `Capability.X in backbone.capabilities`, or `require`s the
capability and a model without it is refused in one line that says what it lacks and what to use instead. A
new family declares its set as the class attribute `capabilities` (`Backbone` gives the diffusion default,
families add what their conditioning and layers allow), and every task then treats it right.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from ..errors import DiffdiscError

if TYPE_CHECKING:
    from .base import BackboneInfo


class Capability(StrEnum):
    DENOISE = "denoise"  # predicts ε (or v) from a noised input: denoising scores, learned noise, timesteps
    SAMPLE = "sample"  # generates images (`diffdisc sample`, `synth`)
    FEATURES = "features"  # a denoiser with blocks to tap (`features/taps.py`)
    ENCODE_TEXT = "encode text"  # conditions are prompts
    CLASS_CONDITIONS = "class conditions"  # conditions are class ids (or names)
    ATTEND = "attend"  # image queries attend to text tokens (cross or joint attention): the attention scorer
    MATCH = "match"  # scores an (image, text) pair by embedding similarity, without noise


DIFFUSION = frozenset({Capability.DENOISE, Capability.SAMPLE, Capability.FEATURES})

# what a model without the capability cannot do ("it ..."), and what has it ("use ...")
_LACKS = {
    Capability.DENOISE: ("cannot denoise", "a diffusion model such as fmnist-classcond"),
    Capability.SAMPLE: ("cannot generate images", "a diffusion model such as fmnist-classcond"),
    Capability.FEATURES: ("has no denoiser blocks to tap", "a diffusion model such as fmnist-classcond"),
    Capability.ENCODE_TEXT: ("takes no text prompts", "a text-conditional or contrastive model such as fmnist-scenes-text"),
    Capability.CLASS_CONDITIONS: ("takes no class ids", "a class-conditional model such as fmnist-classcond"),
    Capability.ATTEND: ("has no text attention that diffdisc reads (a U-Net's cross-attention, SD3 / FLUX joint attention)",
                        "a text-conditional U-Net (SD, SDXL) or an SD3 / FLUX model, such as fmnist-scenes-text"),
    Capability.MATCH: ("does not score by embedding similarity", "a contrastive model such as fmnist-scenes-clip"),
}  # fmt: skip


class Capable(Protocol):
    """A loaded model as capability checks see it: `Backbone` and `ContrastiveModel` both are."""

    info: BackboneInfo
    capabilities: frozenset[Capability]


def describe(model: Capable) -> str:
    """'a contrastive model' or 'a class-conditional diffusion model (classcond)': what a refusal says `model` is."""
    if Capability.MATCH in model.capabilities:
        return "a contrastive model"
    return f"a {model.info.conditioning}-conditional diffusion model ({model.info.family})"


def require(model: Capable, capability: Capability, needed_by: str) -> None:
    """Refuse `model` in one line when it lacks `capability`, which `needed_by` (a command, a file) needs."""
    if capability in model.capabilities:
        return
    lacks, instead = _LACKS[capability]
    raise DiffdiscError(f"{model.info.name} is {describe(model)}: it {lacks}, which is needed by {needed_by}; use {instead}")  # fmt: skip
