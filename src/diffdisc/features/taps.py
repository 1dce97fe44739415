"""Feature taps: stable names for a U-Net's blocks, forward hooks on them, and the extraction loop.

Mukhopadhyay et al. read the activations of one U-Net block at one noise level. A sweep wants many blocks
at several timesteps; hooks on every requested block capture them all in ONE forward per (image, t), so B
blocks x T timesteps cost T forwards per image. When no requested block lies after the last one reached
(e.g. only down/mid blocks), the forward is cut short there: the rest of the U-Net would be wasted work.

Names: `down.i`, `mid`, `up.i` (diffusers' down_blocks[i] / mid_block / up_blocks[i]); with detail also
their parts, `down.1.resnet.0`, `down.1.attn.0`, `mid.attn.0`, ...; transformers (DiT, PixArt, SD3): `block.i`,
FLUX also `single.i` (its single-stream blocks).
The U-Net is always called through the backbone (`encode`, `add_noise`, `model_output`), so pixel,
latent, class- and text-conditional models take the same path, and ε for (image, t) is the scoring
engine's: seeded by (seed, image key, t), independent of batch size and order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.capabilities import Capability, require
from ..errors import DiffdiscError
from ..scoring.config import ScoreConfig
from ..scoring.engine import ScoringEngine
from .pooling import parse_pooling, pool, to_map


def denoiser(backbone) -> nn.Module:
    """The network whose blocks are tapped (SD: `unet`; class-conditional: `model`)."""
    require(backbone, Capability.FEATURES, "feature taps (`diffdisc features`)")
    net = getattr(backbone, "unet", None) or getattr(backbone, "transformer", None) or getattr(backbone, "model", None)
    if net is None:
        raise DiffdiscError(f"{backbone.info.name}: no U-Net to tap")
    return net


def block_modules(net: nn.Module, detail: bool = False) -> dict[str, nn.Module]:
    """Name -> module, in forward order; `detail` adds each block's resnets and attentions."""
    out: dict[str, nn.Module] = {}

    def add(name: str, block: nn.Module) -> None:
        out[name] = block
        if detail:
            for attr, short in (("resnets", "resnet"), ("attentions", "attn")):
                for j, m in enumerate(getattr(block, attr, None) or []):
                    if m is not None:
                        out[f"{name}.{short}.{j}"] = m

    if hasattr(net, "down_blocks"):
        for i, b in enumerate(net.down_blocks):
            add(f"down.{i}", b)
        if getattr(net, "mid_block", None) is not None:
            add("mid", net.mid_block)
        for i, b in enumerate(net.up_blocks):
            add(f"up.{i}", b)
    elif hasattr(net, "transformer_blocks"):  # DiT, PixArt, SD3 (joint blocks), FLUX (double, then single blocks)
        for i, b in enumerate(net.transformer_blocks):
            out[f"block.{i}"] = b
        for i, b in enumerate(getattr(net, "single_transformer_blocks", None) or []):
            out[f"single.{i}"] = b
    else:
        raise DiffdiscError(f"{type(net).__name__} has neither U-Net blocks nor transformer blocks to tap")
    return out


def resolve_blocks(backbone, names) -> dict[str, nn.Module]:
    """Requested names -> modules; an unknown name lists the valid ones."""
    if not names:
        raise DiffdiscError("no blocks requested")
    net = denoiser(backbone)
    known = block_modules(net, detail=True)
    top = list(block_modules(net))
    out = {}
    for n in names:
        n = n.strip()
        if n not in known:
            raise DiffdiscError(
                f"unknown block {n!r} for {backbone.info.name}; valid: {', '.join(top)} "
                f"(parts such as resnets/attentions: `diffdisc features blocks --detail`)"
            )
        out[n] = known[n]
    return out


def check_timesteps(backbone, timesteps) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise DiffdiscError("no timesteps requested")
    top = backbone.num_train_timesteps - 1
    bad = [t for t in ts if not 0 <= t <= top]
    if bad:
        raise DiffdiscError(f"timestep {bad[0]} out of range 0..{top} for {backbone.info.name}")
    if len(set(ts)) != len(ts):
        raise DiffdiscError(f"duplicate timesteps in {ts}")
    return ts


def condition_tensor(backbone, spec: str = "null") -> torch.Tensor:
    """One condition for every image: `null` (unconditional, the paper's setting), `class:NAME|ID`
    (class-conditional models) or `caption:TEXT` (text-conditional). Conditioning each image on its own
    label would leak the answer into the features, so it is deliberately not offered."""
    kind, _, value = spec.partition(":")
    kind = kind.strip().lower()
    cond_kind = backbone.info.conditioning
    if kind == "null" and not value:
        return backbone.null_condition()
    if kind == "class" and value:
        if cond_kind != "class":
            raise DiffdiscError(f"{backbone.info.name} is text-conditional: use --condition caption:TEXT")
        return backbone.conditions([value.strip()])[0]
    if kind == "caption" and value:
        if cond_kind != "text":
            raise DiffdiscError(f"{backbone.info.name} is class-conditional: use --condition class:NAME")
        return backbone.conditions([value])[0]
    raise DiffdiscError(f"bad condition {spec!r}: null | class:NAME | caption:TEXT")


# MM-DiT blocks return (encoder_hidden_states, hidden_states): the text stream first, the image tokens second.
JOINT_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock", "JointTransformerBlock")


def image_stream(module: nn.Module, out):
    """A block's output as its image tokens: the second element for joint text-image blocks."""
    if type(module).__name__ in JOINT_BLOCKS and isinstance(out, (tuple, list)):
        return out[1]
    return out


class _Stop(Exception):
    """Raised by the last hook needed: the rest of the forward would compute nothing we keep."""


class FeatureTaps:
    """Forward hooks on named modules; each hook pools its block's output at once (maps are not kept)."""

    def __init__(self, modules: dict[str, nn.Module], poolings=("gap",), stop_early: bool = True):
        for p in poolings:
            parse_pooling(p)
        self.modules, self.poolings, self.stop_early = modules, tuple(poolings), stop_early
        self.features: dict[tuple[str, str], torch.Tensor] = {}
        self._seen: set[str] = set()
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, _inp, out):
            fmap = to_map(image_stream(module, out))
            for p in self.poolings:
                self.features[(name, p)] = pool(fmap, p, name)
            self._seen.add(name)
            if self.stop_early and len(self._seen) == len(self.modules):
                raise _Stop

        return hook

    def __enter__(self) -> FeatureTaps:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def capture(self, forward: Callable[[], object]) -> dict[tuple[str, str], torch.Tensor]:
        """Run `forward` and return {(block, pooling): pooled features} for this one call."""
        self.features, self._seen = {}, set()
        with contextlib.suppress(_Stop):
            forward()
        missing = [n for n in self.modules if n not in self._seen]
        if missing:
            raise DiffdiscError(f"blocks {missing} were not reached by the forward pass")
        return self.features


@dataclass
class ExtractStats:
    """What extraction cost: U-Net forwards (one per image per timestep computed), images, cache use."""

    forwards: int = 0
    images: int = 0
    cache_hits: int = 0  # (cell, chunk) pairs read from the feature cache
    cache_misses: int = 0
    stale: int = 0  # cache cells dropped: written by another version (fingerprint) of the model
    seconds: float = 0.0


def extract(
    backbone,
    images: torch.Tensor,
    keys: list[str],
    blocks,
    timesteps,
    poolings=("gap",),
    *,
    condition: str = "null",
    seed: int = 0,
    batch_size: int = 64,
    dtype: str = "fp32",
    stop_early: bool = True,
    stats: ExtractStats | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[tuple[str, int, str], torch.Tensor]:
    """{(block, t, pooling): [N, ...] float32 on CPU} for images in [-1, 1] at the model's size.

    One encode per image, one U-Net forward per (image, t) for all blocks and poolings together.
    """
    if batch_size < 1:
        raise DiffdiscError(f"batch_size must be >= 1, got {batch_size}")
    if len(keys) != len(images):
        raise DiffdiscError(f"{len(images)} images but {len(keys)} keys")
    modules = resolve_blocks(backbone, blocks)
    ts = check_timesteps(backbone, timesteps)
    stats = stats if stats is not None else ExtractStats()
    # the engine's noise() (ε seeded by (seed, key, t)) and autocast (dtype checked by ScoreConfig)
    engine = ScoringEngine(backbone, ScoreConfig(seed=seed, dtype=dtype))
    cond1 = condition_tensor(backbone, condition)
    dev = backbone.device
    parts: dict[tuple[str, int, str], list[torch.Tensor]] = {(b, t, p): [] for b in modules for t in ts for p in poolings}
    n, t0 = len(images), time.perf_counter()
    with FeatureTaps(modules, poolings, stop_early) as taps, torch.inference_mode():
        for s in range(0, n, batch_size):
            x0 = backbone.encode(images[s : s + batch_size])
            bkeys, b = keys[s : s + batch_size], x0.shape[0]
            cond = cond1.unsqueeze(0).expand(b, *cond1.shape)
            for t in ts:
                tt = torch.full((b,), t, dtype=torch.long, device=dev)
                eps = engine.noise(bkeys, [t] * b, tuple(x0.shape[1:])).to(dev)
                x_t = backbone.add_noise(x0, eps, tt)
                with engine.autocast():
                    got = taps.capture(lambda x_t=x_t, tt=tt, c=cond: backbone.model_output(x_t, tt, c))
                stats.forwards += b
                for (blk, p), v in got.items():
                    parts[(blk, t, p)].append(v.float().cpu())
            stats.images += b
            if progress:
                dt = max(time.perf_counter() - t0, 1e-9)
                progress(min(s + b, n), n, f"{(s + b) / dt:.1f} img/s  {len(ts)} forwards/img")
    stats.seconds += time.perf_counter() - t0
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}


@dataclass(frozen=True)
class BlockInfo:
    name: str
    module: str
    shape: tuple[int, ...]  # output [C, H, W] at the model's image size


def describe_blocks(backbone, detail: bool = False) -> list[BlockInfo]:
    """Every tappable block with its output shape, from one forward on a blank image."""
    net = denoiser(backbone)
    mods = block_modules(net, detail)
    size, ch = backbone.info.image_size, backbone.info.image_channels
    x0 = backbone.encode(torch.zeros(1, ch, size, size))
    try:
        cond = backbone.null_condition()
    except DiffdiscError:  # class-conditional without a null class: any class gives the same shapes
        cond = backbone.conditions([0])[0]
    t = torch.full((1,), backbone.num_train_timesteps // 2, dtype=torch.long, device=backbone.device)
    with FeatureTaps(mods, ("flat",), stop_early=True) as taps, torch.inference_mode():
        got = taps.capture(lambda: backbone.model_output(x0, t, cond.unsqueeze(0)))
    return [BlockInfo(n, type(m).__name__, tuple(got[(n, "flat")].shape[1:])) for n, m in mods.items()]
