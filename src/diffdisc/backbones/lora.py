"""Users' LoRA fine-tunes in the diffusers format (`pytorch_lora_weights.safetensors`, as diffusers' DreamBooth /
text-to-image LoRA training scripts save them), put on a backbone by its own pipeline's `load_lora_weights`.

The pipeline class knows its family's key layout (SD, SDXL, SD3, FLUX, PixArt, kohya / peft variants) and
injects peft layers into the same modules the backbone scores with. A LoRA made for another base model fails
its shape check (refused naming the layers and shapes), matches no layer, or matches only some (refused with
the unmatched count): never scored half-applied. The backbone's fingerprint and name change, so results with
and without the LoRA stay apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import warnings
from pathlib import Path

from ..errors import DiffdiscError
from .loading import hooks_lifted

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


ADAPTER = "user"  # the peft adapter name a user's LoRA is loaded under
QUIET_LOGGERS = ("diffusers", "peft", "transformers")
# torch's load_state_dict error, one line per tensor (diffusers logs all of it, then re-raises it)
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+?): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
                           r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")  # fmt: skip
# the down / A matrix of one adapted layer, in the key layouts diffusers' `lora_state_dict` returns
DOWN_KEY = re.compile(r"(?:\.lora_A|\.lora_down|\.lora\.down|\.lora_linear_layer\.down|_lora\.down)(?:\.|$)")


def _lora_layers(backbone) -> int:
    return sum(1 for n, _ in backbone.named_modules() if n.endswith("lora_A"))


def _adapted(backbone) -> set[str]:
    """Names of the backbone's modules that carry the user's adapter."""
    return {n for n, m in backbone.named_modules()
            if any(ADAPTER in getattr(m, d, {}) for d in ("lora_A", "lora_embedding_A"))}  # fmt: skip


@contextlib.contextmanager
def quiet_loaders():
    """No diffusers / peft / transformers logs or warnings while a LoRA loads: diffusers logs a shape error as
    one line per tensor before raising it, and warns of unmatched keys and old scheduler configs, 66-108 lines
    in all; diffdisc says what matters in one line instead."""
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def read_lora_keys(weights: Path) -> list[str]:
    """The tensor names of a LoRA file; a file that is not safetensors (truncated, garbage) is one line."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError, ValueError) as e:
        raise DiffdiscError(f"LoRA {weights} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    if not keys:
        raise DiffdiscError(f"LoRA {weights} holds no tensors")
    return keys


def _module(key: str) -> str:
    return re.split(r"\.lora_|\.lora\.|_lora\.", key)[0]


def mismatch(error: Exception) -> str:
    """A load error in one line: for shape errors, how many layers disagree and the first two, with shapes."""
    text = str(error)
    found = SIZE_MISMATCH.findall(text)
    if not found:
        return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(error).__name__)[:200]
    owner = re.search(r"loading state_dict for (\w+)", text)
    layers = list(dict.fromkeys(_module(k) for k, _, _ in found))
    first = [next(f for f in found if _module(f[0]) == m) for m in layers[:2]]
    shown = "; ".join(f"{k.replace(f'.{ADAPTER}.', '.')} is [{got}] in the LoRA, [{want}] in the model"
                      for k, got, want in first)  # fmt: skip
    where = f" of the {owner.group(1)}" if owner else ""
    count = f"{len(layers)} layers{where} disagree" if len(layers) > 1 else f"1 layer{where} disagrees"
    return f"{count} in shape: {shown}"


def _unload(pipe, had_layers: bool) -> None:
    """Take a refused LoRA off again (best effort: the refusal stands either way)."""
    with contextlib.suppress(Exception):
        if had_layers:  # another adapter was there first: remove only ours
            pipe.delete_adapters(ADAPTER)
        else:
            pipe.unload_lora_weights()


def load_pipeline_lora(backbone, path: str | Path) -> None:
    """Load a diffusers-format LoRA into `backbone` through its pipeline (`backbone.lora_pipeline()`).

    Every layer the file adapts must be found: diffusers applies the keys that match a module and only warns
    of the rest, so a LoRA of another family whose widths happen to match was scored half-applied."""
    weights = lora_file(path)
    if weights is None:
        raise DiffdiscError(f"{path} is not a LoRA (no {WEIGHT_NAME} or single .safetensors file)")
    read_lora_keys(weights)
    make = getattr(backbone, "lora_pipeline", None)
    name, family = backbone.info.name, backbone.info.family
    with quiet_loaders():
        pipe = make() if make is not None else None
        if pipe is None or not hasattr(pipe, "load_lora_weights"):
            raise DiffdiscError(f"{name}: diffusers cannot load LoRA weights into a {family} model")
        before = _lora_layers(backbone)
        try:
            state = pipe.lora_state_dict(str(weights.parent), weight_name=weights.name)
            wanted = {_module(k) for k in (state[0] if isinstance(state, tuple) else state) if DOWN_KEY.search(k)}
            with hooks_lifted(backbone):  # --offload model: diffusers would re-offload the whole pipeline
                pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=ADAPTER)
        except (ValueError, RuntimeError, KeyError, TypeError, OSError) as e:
            _unload(pipe, before > 0)
            raise DiffdiscError(f"LoRA {weights} does not fit {name} (made for another base model?): "
                                f"{mismatch(e)}") from None  # fmt: skip
        got = _adapted(backbone)
        if not got:
            _unload(pipe, before > 0)
            raise DiffdiscError(f"LoRA {weights} matches no layer of {name} ({family}): "
                                "it was made for another base model")  # fmt: skip
        if len(got) < len(wanted):
            _unload(pipe, before > 0)
            unmatched = sorted(wanted - got)
            example = f", e.g. {unmatched[0]}" if unmatched else ""
            raise DiffdiscError(f"LoRA {weights} fits only {len(got)} of its {len(wanted)} layers in {name} "
                                f"({len(wanted) - len(got)} not found{example}): made for another base model? "
                                "Not applied, as a half-applied LoRA would score a model nobody trained")  # fmt: skip
    backbone.requires_grad_(False)
    backbone.clear_conditions()  # a LoRA on a text encoder changes the conditions (and ∅)
    mark_lora(backbone, weights)


def mark_lora(backbone, weights: Path) -> None:
    """A backbone with a LoRA is another model: its fingerprint and name say so, so results stay apart."""
    h = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:8]
    backbone.info = dataclasses.replace(backbone.info, fingerprint=f"{backbone.info.fingerprint}+lora{h}",
                                        name=f"{backbone.info.name}+lora")  # fmt: skip
