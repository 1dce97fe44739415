"""Train any timm classifier from scratch on a (synthetic) ImageFolder; evaluate it on real images.

Model selection uses a held-out part of the *synthetic* set only (the original code picked checkpoints on the
real test set, which turns the test set into a validation set). accelerate handles device, mixed precision
and the resumable training state; each epoch's checkpoint, and the best model with its classifier.json, are
written under a temporary name and renamed.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.folders import open_image_dataset
from ..data.images import open_image, to_tensor
from ..errors import DiffdiscError
from ..features.heads import stratified_split
from ..results import atomic_write_text


@dataclass(frozen=True)
class ClassifierConfig:
    model: str = "resnet18"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    val_fraction: float = 0.1
    image_size: int = 32
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: no | bf16 | fp16


def _create(name: str, num_classes: int):
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise DiffdiscError(f"unknown timm model {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=3)


def _load_folder(path: str | Path, size: int, classes: list[str] | None = None):
    ds = open_image_dataset(path)
    names = classes or list(ds.class_names)
    if not names or not len(ds):
        raise DiffdiscError(f"{path}: need an ImageFolder with one subfolder per class")
    x = torch.stack([to_tensor(open_image(it.path), size, 3) for it in ds.items])
    y = torch.tensor(ds.label_index(names))
    return ((x + 1) * 127.5).round().to(torch.uint8), y, names


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-sample random resized crop (scale 0.6-1) and horizontal flip on a uint8 batch -> [-1, 1] floats."""
    n, _, h, w = x.shape
    scale = 0.6 + 0.4 * torch.rand(n, generator=g)
    side = (scale.sqrt() * h).round().long().clamp(4, h)
    out = torch.empty(n, 3, h, w)
    for i in range(n):
        s = int(side[i])
        top, left = (int(torch.randint(0, h - s + 1, (1,), generator=g)), int(torch.randint(0, w - s + 1, (1,), generator=g)))
        crop = x[i : i + 1, :, top : top + s, left : left + s].float()
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out / 127.5 - 1


def train_classifier(data: str | Path, out: str | Path, cfg: ClassifierConfig | None = None,
                     log: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Train (or resume) into `out`: checkpoints/, best model.safetensors + classifier.json (classes, config)."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    cfg, out = cfg or ClassifierConfig(), Path(out)
    x, y, names = _load_folder(data, cfg.image_size)
    tr, va = stratified_split(y.numpy(), cfg.val_fraction, cfg.seed, names)
    torch.manual_seed(cfg.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    model = _create(cfg.model, len(names))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(tr) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    model, opt, sched = acc.prepare(model, opt, sched)
    ckdir, state = out / "checkpoints", {"epoch": 0, "best_val": -1.0, "compute_s": 0.0, "total_s": 0.0}
    if (ckdir / "last" / "state.json").is_file():
        saved = json.loads((ckdir / "last" / "state.json").read_text())
        if saved.get("config") != asdict(cfg):
            raise DiffdiscError(f"{out} was trained with another config; use another --out")
        acc.load_state(str(ckdir / "last"))
        state = saved
        log(f"resumed after epoch {state['epoch']}")
    for epoch in range(state["epoch"], cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = tr[torch.randperm(len(tr), generator=g).numpy()]
        model.train()
        t_epoch = time.perf_counter()
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            xb = _augment(x[idx], g).to(acc.device)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(xb), y[idx].to(acc.device))
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state["compute_s"] += time.perf_counter() - t0
        state["total_s"] += time.perf_counter() - t_epoch
        val_acc = _accuracy(model, x[va], y[va], acc.device)
        state["epoch"] = epoch + 1
        if val_acc > state["best_val"]:
            state["best_val"] = val_acc
            out.mkdir(parents=True, exist_ok=True)
            weights = {k: v.detach().cpu().contiguous() for k, v in acc.unwrap_model(model).state_dict().items()}
            save_file(weights, str(out / ".model.tmp"))
            os.replace(out / ".model.tmp", out / "model.safetensors")
            meta = {"classes": names, "config": asdict(cfg), "epoch": epoch + 1, "val_acc_synthetic": val_acc}
            atomic_write_text(out / "classifier.json", json.dumps(meta, indent=2))
        tmp = ckdir / f".tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        acc.save_state(str(tmp))
        (tmp / "state.json").write_text(json.dumps({**state, "config": asdict(cfg)}))
        shutil.rmtree(ckdir / "last", ignore_errors=True)
        os.replace(tmp, ckdir / "last")
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f} val acc (synthetic) {val_acc:.3f}")
    imgs = len(tr) * cfg.epochs
    log(f"training throughput {imgs / max(state['total_s'], 1e-9):.0f} images/s; "
        f"{state['compute_s'] / max(state['total_s'], 1e-9):.0%} of the time in forward/backward")  # fmt: skip
    return out


@torch.no_grad()
def _correct(model, x: torch.Tensor, y: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    model.eval()
    out = [model((x[s : s + batch].float() / 127.5 - 1).to(device)).argmax(-1).cpu() == y[s : s + batch]
           for s in range(0, len(x), batch)]  # fmt: skip
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _accuracy(model, x: torch.Tensor, y: torch.Tensor, device) -> float:
    return float(_correct(model, x, y, device).float().mean()) if len(x) else 0.0


def evaluate_classifier(model_dir: str | Path, data: str | Path, per_image: bool = False) -> dict:
    """Top-1 of a trained classifier on a labelled ImageFolder (classes aligned by name); `per_image` adds the
    0/1 correctness of every image (in folder order) for bootstrap intervals."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / "classifier.json").is_file():
        raise DiffdiscError(f"{model_dir} has no classifier.json (train one with `diffdisc synth train`)")
    meta = json.loads((model_dir / "classifier.json").read_text())
    cfg = ClassifierConfig(**meta["config"])
    model = _create(cfg.model, len(meta["classes"]))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    x, y, _ = _load_folder(data, cfg.image_size, meta["classes"])
    correct = _correct(model, x, y, "cpu")
    out = {"accuracy": float(correct.float().mean()), "n_images": len(y), "model": cfg.model}
    return {**out, "correct": correct.int().tolist()} if per_image else out
