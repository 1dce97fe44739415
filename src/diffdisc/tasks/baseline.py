"""A supervised baseline: train any timm classifier from scratch on an ImageFolder, evaluate it on others.

"Would a plain CNN beat the diffusion classifier on my data?" — and the classifier `diffdisc synth train` fits
on generated sets. Model selection uses a validation split of the training folder only (the synthetic-data code
this came from picked checkpoints on the real test set, which turns the test set into a validation set).
accelerate handles device, mixed precision and the resumable training state; checkpoints, the best model and
its classifier.json are written under a temporary name and renamed. A time limit (`max_minutes`) stops
mid-epoch with the position and the augmentation generator checkpointed, so a rerun continues the same schedule.
Evaluations can be recorded (per-image predictions and confidences) in evaluations.json for `diffdisc report`.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigMixin
from ..data.folders import open_image_dataset
from ..data.images import open_image, to_tensor
from ..errors import DiffdiscError
from ..features.heads import stratified_split
from ..results.base import load_object
from ..results.baseline import CLASSIFIER_JSON, EVALUATIONS_JSON, BaselineResult
from ..runs.io import atomic_write, atomic_write_text, remove_stale_temps
from ..runs.store import RunStore

STATE_JSON = "checkpoints/last/state.json"  # the resumable state, with the config it was trained with


@dataclass(frozen=True)
class ClassifierConfig(ConfigMixin):
    config_label = "classifier config"

    model: str = "resnet18"  # any timm model name, trained from scratch
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    val_fraction: float = 0.1  # of the training folder, stratified: picks the best epoch (never the test set)
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
    labels = ds.label_index(names)
    if None in labels:
        raise DiffdiscError(f"{path}: {labels.count(None)} of {len(labels)} images have no label (use an ImageFolder)")
    x = torch.stack([to_tensor(open_image(it.path), size, 3) for it in ds.items])
    return ((x + 1) * 127.5).round().to(torch.uint8), torch.tensor(labels), names


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


def train_classifier(data: str | Path, cfg: ClassifierConfig | None = None, *, out: str | Path,
                     log: Callable[[str], None] | None = None, progress: Callable[[int, int, str], None] | None = None,
                     max_minutes: float | None = None, synthetic: bool = False) -> BaselineResult:  # fmt: skip
    """Train (or resume) into `out`: checkpoints/last, the best model (model.safetensors) and classifier.json
    (classes, config, validation accuracy, training data); returns it read back.

    `log` defaults to print. `progress(done_steps, total_steps, info)` after each optimiser step
    (diffdisc.progress.step_progress). `max_minutes` stops once that much time has passed, checkpointed
    mid-epoch (rerun to continue) with the best model so far saved. `synthetic` labels validation accuracy as
    measured on generated images (the log says so and classifier.json also gets the historical
    `val_acc_synthetic` key). The run's store guards the config (the `config` of checkpoints/last/state.json),
    writes the run.json header and keeps a second trainer out of `out`."""
    from accelerate import Accelerator

    cfg, out, log = cfg or ClassifierConfig(), Path(out), print if log is None else log
    x, y, names = _load_folder(data, cfg.image_size)
    tr, va = stratified_split(y.numpy(), cfg.val_fraction, cfg.seed, names)
    torch.manual_seed(cfg.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    model = _create(cfg.model, len(names))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(tr) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    model, opt, sched = acc.prepare(model, opt, sched)
    task = "synth-train" if synthetic else "baseline"  # named in the run.json header beside classifier.json
    with RunStore(out, task, cfg, settings_file=STATE_JSON, section="config", shards=False, runtime_keys=(),
                  verb="trained", hint="use another --out") as store:  # fmt: skip
        state = {"epoch": 0, "step": 0, "best_val": -1.0, "compute_s": 0.0, "total_s": 0.0, "images": 0}
        if store.stored is not None:
            saved = json.loads((out / STATE_JSON).read_text())
            acc.load_state(str(out / "checkpoints" / "last"))
            state = {"step": 0, "images": 0, **saved}
            part = f" and {state['step']}/{steps_per_epoch} steps of epoch {state['epoch'] + 1}" if state["step"] else ""
            log(f"resumed after epoch {state['epoch']}{part}")
        _fit(acc, model, opt, sched, (x, y, tr, va), state, data=data, names=names, cfg=cfg, out=out, log=log,
             progress=progress, max_minutes=max_minutes, synthetic=synthetic)  # fmt: skip
    return BaselineResult.load(out)


def _fit(acc, model, opt, sched, arrays, state: dict, *, data, names: list[str], cfg: ClassifierConfig, out: Path,
         log, progress, max_minutes: float | None, synthetic: bool) -> None:  # fmt: skip
    """The epochs left after `state`, each ending in a checkpoint (and the best model, if it is)."""
    from safetensors.torch import load_file, save_file

    x, y, tr, va = arrays
    ckdir = out / "checkpoints"
    steps_per_epoch = -(-len(tr) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    val_name = "val acc (synthetic)" if synthetic else "val acc"
    t_start, deadline = time.perf_counter(), time.perf_counter() + 60 * max_minutes if max_minutes else float("inf")
    steps_run, warned, last, stopped = 0, False, None, False
    for epoch in range(state["epoch"], cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = tr[torch.randperm(len(tr), generator=g).numpy()]
        first = state["step"]  # > 0: this epoch was stopped by a time limit after `first` batches
        if first:
            g.set_state(load_file(str(ckdir / "last" / "generator.safetensors"))["state"])
        model.train()
        t_epoch, stopped = time.perf_counter(), False
        for k in range(first, steps_per_epoch):
            idx = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            xb = _augment(x[idx], g).to(acc.device)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(xb), y[idx].to(acc.device))
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state["compute_s"] += time.perf_counter() - t0
            state["images"] += len(idx)
            steps_run += 1
            if progress:
                progress(epoch * steps_per_epoch + k + 1, total_steps, f"epoch {epoch + 1}/{cfg.epochs}")
            if time.perf_counter() > deadline and k + 1 < steps_per_epoch:
                state["step"], stopped = k + 1, True
                break
        else:
            state["step"] = 0
            state["epoch"] = epoch + 1
        state["total_s"] += time.perf_counter() - t_epoch
        val_acc = _accuracy(model, x[va], y[va], acc.device)
        if val_acc > state["best_val"]:
            state["best_val"] = val_acc
            out.mkdir(parents=True, exist_ok=True)
            weights = {k: v.detach().cpu().contiguous() for k, v in acc.unwrap_model(model).state_dict().items()}
            atomic_write(out / "model.safetensors", partial(save_file, weights))
            meta = {"classes": names, "config": cfg.to_dict(), "epoch": epoch + 1, "val_acc": val_acc,
                    "data": str(Path(data).resolve()), "n_train": len(tr), "n_val": len(va)}  # fmt: skip
            if synthetic:
                meta["val_acc_synthetic"] = val_acc
            atomic_write_text(out / CLASSIFIER_JSON, json.dumps(meta, indent=2))
        tmp = ckdir / f".tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        acc.save_state(str(tmp))
        (tmp / "state.json").write_text(json.dumps({**state, "config": cfg.to_dict()}))
        if stopped:
            save_file({"state": g.get_state()}, str(tmp / "generator.safetensors"))
        shutil.rmtree(ckdir / "last", ignore_errors=True)
        os.replace(tmp, ckdir / "last")
        remove_stale_temps(ckdir, ".tmp-*")  # left by killed saves
        last = (epoch + 1, val_acc)
        if stopped:
            log(f"stopped by --max-minutes {max_minutes:g} in epoch {epoch + 1}/{cfg.epochs} (step {state['step']}/"
                f"{steps_per_epoch}), checkpointed; {val_name} {val_acc:.3f} there; {_kept(out, val_name)}; "
                "rerun the same command to continue")  # fmt: skip
            break
        per_step = (time.perf_counter() - t_start) / max(steps_run, 1)
        left = (cfg.epochs - epoch - 1) * steps_per_epoch * per_step
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f} {val_name} {val_acc:.3f} "
            f"({time.perf_counter() - t_epoch:.0f} s; ETA {left / 60:.1f} min)")  # fmt: skip
        if max_minutes and not warned and time.perf_counter() + left > deadline and epoch + 1 < cfg.epochs:
            fit = epoch + 1 + int(max(deadline - time.perf_counter(), 0) / (steps_per_epoch * per_step))
            log(f"at this rate about {min(fit, cfg.epochs)} of {cfg.epochs} epochs fit in --max-minutes {max_minutes:g}")
            warned = True
    log(f"training throughput {state['images'] / max(state['total_s'], 1e-9):.0f} images/s; "
        f"{state['compute_s'] / max(state['total_s'], 1e-9):.0%} of the time in forward/backward")  # fmt: skip
    kept = _kept(out, val_name)
    if not stopped:  # the stop line said it already
        same = last is None or kept.startswith(f"kept epoch {last[0]} ")
        log(kept if same else f"{kept}; last epoch {last[0]}: {val_name} {last[1]:.3f}")


def _kept(out: Path, val_name: str) -> str:
    """Which epoch model.safetensors holds: the best on validation, not the last epoch, whose accuracy the
    epoch lines print last (0.980 printed, 0.982 kept, read as one number)."""
    try:
        meta = json.loads((out / CLASSIFIER_JSON).read_text())
        return f"kept epoch {meta['epoch']} ({val_name} {meta['val_acc']:.3f}, the best) in {out / 'model.safetensors'}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no model kept in {out} yet"


@torch.no_grad()
def _logits(model, x: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    model.eval()
    out = [model((x[s : s + batch].float() / 127.5 - 1).to(device)).float().cpu() for s in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def _accuracy(model, x: torch.Tensor, y: torch.Tensor, device) -> float:
    return float((_logits(model, x, device).argmax(-1) == y).float().mean()) if len(x) else 0.0


def load_classifier(model_dir: str | Path):
    """(timm model with the best weights, classifier.json) from a `train_classifier` output directory."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / CLASSIFIER_JSON).is_file():
        raise DiffdiscError(f"{model_dir} has no {CLASSIFIER_JSON} (train one with `diffdisc baseline train`)")
    meta = BaselineResult.load(model_dir).meta
    model = _create(ClassifierConfig.from_dict(meta["config"]).model, len(meta["classes"]))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model, meta


def evaluate_classifier(model_dir: str | Path, data: str | Path, per_image: bool = False, record: bool = False) -> dict:
    """Top-1, top-5 and mean per-class accuracy of a trained classifier on a labelled ImageFolder (classes aligned
    by name). `per_image` adds the 0/1 correctness of every image (in folder order) for bootstrap intervals;
    `record` also keeps the evaluation, with per-image predictions and softmax confidences, in
    MODEL_DIR/evaluations.json (one entry per data folder), where `diffdisc report` finds it."""
    model, meta = load_classifier(model_dir)
    cfg = ClassifierConfig.from_dict(meta["config"])
    x, y, names = _load_folder(data, cfg.image_size, meta["classes"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = _logits(model.to(device), x, device)
    pred = logits.argmax(-1)
    correct = pred == y
    top5 = (logits.topk(min(5, logits.shape[1]), -1).indices == y[:, None]).any(-1)
    per_class = [float(correct[y == c].float().mean()) for c in y.unique()]
    out = {"accuracy": float(correct.float().mean()), "top5": float(top5.float().mean()),
           "mean_per_class_accuracy": float(np.mean(per_class)), "n_images": len(y), "model": cfg.model,
           "data": str(Path(data).resolve())}  # fmt: skip
    if record:
        path = Path(model_dir) / EVALUATIONS_JSON
        try:
            kept = load_object(path).get("evaluations", []) if path.is_file() else []
        except DiffdiscError:
            raise DiffdiscError(f"{path} is unreadable: move it away to record new evaluations") from None
        entry = {**out, "classes": names, "predictions": pred.tolist(), "labels": y.tolist(),
                 "confidence": [round(v, 5) for v in logits.softmax(-1).max(-1).values.tolist()]}  # fmt: skip
        kept = [e for e in kept if e.get("data") != out["data"]] + [entry]
        atomic_write_text(path, json.dumps({"evaluations": kept}))
    return {**out, "correct": correct.int().tolist()} if per_image else out
