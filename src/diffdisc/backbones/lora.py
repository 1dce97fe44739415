"""Users' LoRA fine-tunes in the diffusers format (`pytorch_lora_weights.safetensors`, as diffusers' DreamBooth /
text-to-image LoRA training scripts save them), put on a backbone by its own pipeline's `load_lora_weights`.

The pipeline class knows its family's key layout (SD, SDXL, SD3, FLUX, PixArt, kohya / peft variants) and
injects peft layers into the same modules the backbone scores with. A LoRA made for another base model either
fails its shape check or matches no layer at all: both are refused, never scored half-applied. The backbone's
fingerprint and name change, so results with and without the LoRA stay apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ..errors import DiffdiscError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_file(path: str | Path) -> Path | None:
    """The weights file of a diffusers-format LoRA at `path` (a .safetensors file, or a directory holding
    `pytorch_lora_weights.safetensors` or one other .safetensors file), else None. Pickled LoRAs are refused."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise DiffdiscError(f"{p} is not a .safetensors file; diffdisc loads LoRA weights from safetensors only")
        return p
    if not p.is_dir():
        raise DiffdiscError(f"LoRA {p} does not exist")
    if (p / WEIGHT_NAME).is_file():
        return p / WEIGHT_NAME
    found = sorted(p.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if any(p.glob("*.bin")) and not found:
        raise DiffdiscError(f"{p} holds only pickle weights; diffdisc loads LoRA weights from safetensors only")
    return None


def _lora_layers(backbone) -> int:
    return sum(1 for n, _ in backbone.named_modules() if n.endswith("lora_A"))


def load_pipeline_lora(backbone, path: str | Path) -> None:
    """Load a diffusers-format LoRA into `backbone` through its pipeline (`backbone.lora_pipeline()`)."""
    weights = lora_file(path)
    if weights is None:
        raise DiffdiscError(f"{path} is not a LoRA (no {WEIGHT_NAME} or single .safetensors file)")
    make = getattr(backbone, "lora_pipeline", None)
    if make is None:
        raise DiffdiscError(f"{backbone.info.name}: diffusers cannot load LoRA weights into a {backbone.info.family} model")
    pipe, before = make(), _lora_layers(backbone)
    try:
        pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name="user")
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise DiffdiscError(f"LoRA {weights} does not fit {backbone.info.name} (made for another base model?): "
                            f"{str(e).splitlines()[0][:200]}") from None  # fmt: skip
    if _lora_layers(backbone) == before:
        raise DiffdiscError(f"LoRA {weights} matches no layer of {backbone.info.name} ({backbone.info.family}): "
                            "it was made for another base model")  # fmt: skip
    backbone.requires_grad_(False)
    backbone._cond_cache.clear()  # a LoRA on a text encoder changes the conditions
    mark_lora(backbone, weights)


def mark_lora(backbone, weights: Path) -> None:
    """A backbone with a LoRA is another model: its fingerprint and name say so, so results stay apart."""
    h = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:8]
    backbone.info = dataclasses.replace(backbone.info, fingerprint=f"{backbone.info.fingerprint}+lora{h}",
                                        name=f"{backbone.info.name}+lora")  # fmt: skip
