"""Few-shot prompt learning for the attention scorer (Discffusion) and cross-attention heat maps.

LoRA adapters (peft, rank 4, on to_q/to_k/to_v/to_out of every U-Net attention layer, as the official code)
are trained with a hinge loss: for each image of a group, its own caption's score must beat the best other
caption's by `margin`. One random t and fresh noise per pair and step; AdamW, gradient clipping 1.0. Only the
adapter is saved (safetensors + adapter_config.json), and `load_lora` puts it back on a fresh backbone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ..backbones.lora import mark_lora
from ..config import ConfigMixin
from ..data.groups import Group
from ..errors import DiffdiscError
from ..results.adapter import ADAPTER_CONFIG, AdapterResult
from ..runs.io import atomic_write
from ..scoring.attention import CrossAttentionCapture, attention_score, make_capture
from .match import _image_tensor

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHTS, CONFIG = "adapter_model.safetensors", ADAPTER_CONFIG


@dataclass(frozen=True)
class LoraConfig(ConfigMixin):
    """How `tune` trains an adapter: LoRA `rank` (alpha = rank), hinge `margin`, AdamW `lr`, `epochs` over the
    groups, `bias` (the attention score's denoising bias, as at scoring time) and the `seed` of t, noise and
    group order. (peft's own `LoraConfig` is what `add_lora` builds from `rank`.)"""

    config_label = "LoRA config"

    rank: int = 4
    margin: float = 0.1
    lr: float = 1e-4
    epochs: int = 1
    bias: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.rank < 1:
            raise DiffdiscError(f"LoRA rank must be >= 1, got {self.rank}")


def _require_unet(backbone):
    if getattr(backbone, "unet", None) is None or backbone.info.conditioning != "text":
        raise DiffdiscError(f"{backbone.info.name}: attention tuning needs a text-conditional U-Net")
    return backbone.unet


def add_lora(backbone, rank: int = 4) -> None:
    from peft import LoraConfig as PeftLoraConfig

    if rank < 1:
        raise DiffdiscError(f"LoRA rank must be >= 1, got {rank}")
    cfg = PeftLoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS)
    _require_unet(backbone).add_adapter(cfg)


def save_lora(backbone, out: str | Path, meta: dict | None = None) -> Path:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet, out = _require_unet(backbone), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(unet).items()}
    atomic_write(out / WEIGHTS, partial(save_file, state))
    cfg = unet.peft_config["default"].to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["diffdisc"] = {"model_fingerprint": backbone.info.fingerprint, **(meta or {})}
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
    return out


def load_lora(backbone, path: str | Path) -> None:
    """Put a saved adapter on `backbone` (refuses adapters made for another model): one of `tune`'s, or a
    user's diffusers-format LoRA fine-tune (`backbones.lora`)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG).is_file():
        from ..backbones.lora import load_pipeline_lora

        return load_pipeline_lora(backbone, path)
    if not (path / WEIGHTS).is_file():
        raise DiffdiscError(f"{path} is not a LoRA adapter directory (needs {WEIGHTS} and {CONFIG})")
    cfg = json.loads((path / CONFIG).read_text())
    made_for = cfg.get("diffdisc", {}).get("model_fingerprint")
    if made_for and made_for != backbone.info.fingerprint:
        raise DiffdiscError(f"{path} was trained for model {made_for}, not {backbone.info.fingerprint} ({backbone.info.name})")
    add_lora(backbone, int(cfg["r"]))
    set_peft_model_state_dict(backbone.unet, load_file(str(path / WEIGHTS)))
    backbone.unet.requires_grad_(False)
    mark_lora(backbone, path / WEIGHTS)


def group_loss(backbone, capture: CrossAttentionCapture, grp: Group, g: torch.Generator, margin: float = 0.1,
               bias: bool = True) -> torch.Tensor:  # fmt: skip
    """Hinge loss of one group: per image, mean(max(0, best other caption - own caption + margin)).

    One random t and fresh noise per (image, caption) pair, drawn from `g`; differentiable in the LoRA weights.
    """
    info, dev = backbone.info, backbone.device
    images = [_image_tensor(im, info.image_size, info.image_channels) for im in grp.images]
    x0 = backbone.encode(torch.stack(images)).clone()  # out of inference mode: usable in autograd
    conds = backbone.conditions(list(grp.captions)).clone()
    ni, nc = len(grp.images), len(grp.captions)
    x0r, cr = x0.repeat_interleave(nc, 0), conds.repeat(ni, *([1] * (conds.ndim - 1)))
    eps = torch.randn(x0r.shape, generator=g).to(dev)
    t = torch.randint(0, backbone.num_train_timesteps, (len(x0r),), generator=g).to(dev)
    S = attention_score(backbone, capture, backbone.add_noise(x0r, eps, t), eps, t, cr, bias).view(ni, nc)
    losses = [(torch.cat([S[i, :i], S[i, i + 1 :]]).max() - S[i, i] + margin).clamp(min=0) for i in range(min(ni, nc))]
    return torch.stack(losses).mean()


def tuning_groups(probes: list[str], shots: int, seed: int = 0) -> list[Group]:
    """`shots` embedded probe groups to tune on, split evenly over `probes`, from Fashion-MNIST *train* items.

    Evaluation probes are built from test items, so tuning and evaluation never share an item; the scenes also
    use seed 1000 + `seed` (evaluation: seed 0), so not even their colours and relations are drawn alike.
    """
    from ..datasets.probes import make_probe

    if shots < 1 or not probes:
        raise DiffdiscError(f"need shots >= 1 and at least one probe, got {shots} and {list(probes)}")
    per = -(-shots // len(probes))
    return [g for name in probes for g in make_probe(name, per, 1000 + seed, split="train")][:shots]


def tune(
    backbone,
    groups: list[Group],
    config: LoraConfig | None = None,
    *,
    out: str | Path,
    progress: Callable[[int, int, float], None] | None = None,
    **overrides,
) -> AdapterResult:
    """Train a LoRA adapter on `groups` (image i matches caption i) and save it to `out`; returns it read back
    (an `AdapterResult`, which stands for the folder as the path returned before).

    `overrides` (rank=, margin=, lr=, epochs=, bias=, seed=) replace fields of `config`, so keyword calls
    `tune(bb, groups, out=out, lr=1e-2)` as made before `LoraConfig` existed still work."""
    cfg = replace(config or LoraConfig(), **overrides)
    rank, margin, lr, epochs, bias, seed = cfg.rank, cfg.margin, cfg.lr, cfg.epochs, cfg.bias, cfg.seed
    if not groups:
        raise DiffdiscError("no training groups (shots = 0 needs no tuning)")
    unet = _require_unet(backbone)
    with torch.random.fork_rng():  # peft draws A's init from the global generator: seeded, one adapter per config
        torch.manual_seed(seed)
        add_lora(backbone, rank)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    capture = CrossAttentionCapture(unet)
    g, order = torch.Generator().manual_seed(seed), list(range(len(groups)))
    step, total, losses = 0, epochs * len(groups), []
    unet.train()
    for epoch in range(epochs):
        random.Random(seed * 1009 + epoch).shuffle(order)
        losses.clear()  # the last epoch's, for the record
        for gi in order:
            loss = group_loss(backbone, capture, groups[gi], g, margin, bias)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            if progress:
                progress(step, total, losses[-1])
    unet.eval().requires_grad_(False)
    meta = {"shots": len(groups), "epochs": epochs, "margin": margin, "lr": lr, "bias": bias, "seed": seed,
            "train_groups": [grp.id for grp in groups][:1000], "loss": sum(losses) / len(losses) if losses else None}  # fmt: skip
    return AdapterResult.load(save_lora(backbone, out, meta))


@torch.inference_mode()
def attention_heatmaps(backbone, image, caption: str, out: str | Path, t: int = 300, seed: int = 0) -> Path:
    """PNG: the image, then one panel per caption token with its cross-attention map (layers averaged).

    SD3 / FLUX: the image tokens' joint attention over the text tokens (`make_capture`), on the token grid."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    import torch.nn.functional as F

    info = backbone.info
    capture = make_capture(backbone, keep_maps=True)  # refuses models without text attention
    x = _image_tensor(image, info.image_size, info.image_channels)
    x0 = backbone.encode(x[None])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    tt = torch.tensor([t], device=x0.device)
    with capture as cap:
        backbone.predict_eps(backbone.add_noise(x0, eps, tt), tt, backbone.conditions([caption]))
        maps = cap.maps()
    size = info.image_size
    acc = 0
    for m in maps.values():  # (1, HW, tokens) -> (tokens, size, size)
        side = int(round(m.shape[1] ** 0.5))
        grid = m[0].T.reshape(-1, 1, side, side).float()
        acc = acc + F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    acc = acc / len(maps)
    if isinstance(capture, CrossAttentionCapture):
        ids = backbone.tokenize([caption])[0].tolist()
        toks = backbone.tokenizer.convert_ids_to_tokens(ids)
        toks = [None if tok == backbone.tokenizer.pad_token else tok for tok in toks]
    else:
        from ..scoring.joint_attention import text_token_labels

        toks = text_token_labels(backbone, caption)
    keep = [i for i, tok in enumerate(toks) if tok is not None][: acc.shape[0]]
    img = ((x.permute(1, 2, 0).cpu().numpy() + 1) / 2).clip(0, 1)
    fig, axes = plt.subplots(1, len(keep) + 1, figsize=(1.4 * (len(keep) + 1), 1.8), squeeze=False)
    axes[0][0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    axes[0][0].set_title("image", fontsize=7)
    for ax, i in zip(axes[0][1:], keep, strict=True):
        ax.imshow(img.mean(-1), cmap="gray")
        ax.imshow(acc[i].cpu().numpy(), cmap="jet", alpha=0.55)
        ax.set_title(toks[i], fontsize=7)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{caption!r} (t={t})".replace("$", r"\$"), fontsize=8)
    meta = {"diffdisc": json.dumps({"kind": "attention-heatmap", "caption": caption, "t": t, "model": info.name})}
    return save_figure(fig, out, dpi=110, metadata=meta if Path(out).suffix.lower() == ".png" else None)
