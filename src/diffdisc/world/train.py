"""One readable training loop for the shipped class-conditional model (accelerate, EMA, resumable).

Every random draw of step s (batch indices, t, noise, label dropout) comes from a generator seeded by
(seed, s), so a run killed and resumed from a checkpoint ends with the same weights as one that never
stopped. Checkpoints and exports are written to a temporary name and renamed: a kill while saving never
replaces a good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DiffdiscError
from .recipes import TrainConfig


def load_training_data(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images [N, C, S, S] in [-1, 1], labels [N], class names), through the inference preprocessing."""
    from ..data.images import array_to_tensor, open_image, to_tensor

    if cfg.data:
        from ..data.folders import open_image_dataset

        ds = open_image_dataset(cfg.data)
        names = ds.class_names
        x = torch.stack([to_tensor(open_image(it.path), cfg.image_size, cfg.channels) for it in ds.items])
        y = torch.tensor(ds.label_index(names))
        return x, y, names
    if cfg.recipe == "tiny":
        from .fashion_mnist import CLASS_NAMES, load_shipped_subset

        imgs, labels, _ = load_shipped_subset()
        imgs, labels = imgs[:64], labels[:64]
    else:
        from .fashion_mnist import CLASS_NAMES, load_fashion_mnist

        imgs, labels = load_fashion_mnist("train")
    x = torch.stack([array_to_tensor(a, cfg.image_size, cfg.channels) for a in imgs])
    return x, torch.from_numpy(labels), list(CLASS_NAMES)


def build_model(cfg: TrainConfig, n_classes: int):
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, num_class_embeds=n_classes + 1,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
    )  # fmt: skip


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    return sorted(p for p in d.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if d.is_dir() else []


def train(cfg: TrainConfig, out_dir: str | Path, max_minutes: float | None = None, log=print) -> Path:
    """Train (or resume) into out_dir; returns the exported model directory `out_dir/model`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "train_config.json"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        new = cfg.to_dict()
        diff = [k for k in sorted(set(old) | set(new)) if k != "steps" and old.get(k) != new.get(k)]
        if diff:
            raise DiffdiscError(f"{out} was trained with a different config ({diff[0]}: {old.get(diff[0])!r} there, "
                                f"{new.get(diff[0])!r} now); use another output directory")  # fmt: skip
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    set_seed(cfg.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    x, y, names = load_training_data(cfg)
    data_hash = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
    model = build_model(cfg, len(names))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type="epsilon")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    model, opt, lr_sched = acc.prepare(model, opt, lr_sched)
    ema = {k: v.detach().clone().float() for k, v in acc.unwrap_model(model).state_dict().items()}

    step = 0
    ckpts = _checkpoints(out)
    if ckpts:
        acc.load_state(str(ckpts[-1]))
        ema = load_file(str(ckpts[-1] / "ema.safetensors"))
        step = json.loads((ckpts[-1] / "step.json").read_text())["step"]
        log(f"resumed from {ckpts[-1].name}")

    def save_checkpoint():
        final = out / "checkpoints" / f"step-{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        acc.save_state(str(tmp))
        save_file(ema, str(tmp / "ema.safetensors"))
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(out)[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        export(out, ema, cfg, names, step, data_hash, time.time() - t_start)

    t_start, t_log = time.time(), time.time()
    ac = sched.alphas_cumprod
    model.train()
    while step < cfg.steps:
        g = _step_generator(cfg.seed, step)
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        x0, labels = x[idx].to(acc.device), y[idx].clone()
        labels[torch.rand(cfg.batch_size, generator=g) < cfg.cond_dropout] = len(names)  # null class (CFG)
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(x_t.to(acc.device), t.to(acc.device), class_labels=labels.to(acc.device)).sample
        loss = F.mse_loss(pred.float(), noise.to(acc.device))
        acc.backward(loss)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        with torch.no_grad():
            for k, v in acc.unwrap_model(model).state_dict().items():
                ema[k].mul_(cfg.ema_decay).add_(v.detach().float(), alpha=1 - cfg.ema_decay)
        if not math.isfinite(loss.item()):
            raise DiffdiscError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        if step % 20 == 0 or step == cfg.steps:
            now = time.time()
            log(f"step {step}/{cfg.steps} loss {loss.item():.4f} {(now - t_log) / 20:.2f} s/step")
            t_log = now
        out_of_time = max_minutes is not None and time.time() - t_start > max_minutes * 60
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            save_checkpoint()
        if out_of_time:
            log(f"time limit reached at step {step}; rerun to continue")
            break
    return out / "model"


def export(out: Path, ema: dict, cfg: TrainConfig, names: list[str], step: int, data_hash: str, wall: float) -> Path:
    """EMA weights -> out/model (unet/, scheduler/, diffdisc.json), the layout `create_backbone` loads."""
    import diffusers
    from diffusers import DDPMScheduler

    model = build_model(cfg, len(names))
    model.load_state_dict({k: v.to(model.dtype) for k, v in ema.items()})
    final, tmp = out / "model", out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule).save_pretrained(tmp / "scheduler")
    prev = json.loads((final / "diffdisc.json").read_text()) if (final / "diffdisc.json").is_file() else {}
    meta = {
        "class_names": names, "null_class": len(names), "recipe": cfg.recipe, "config": cfg.to_dict(),
        "data_hash": data_hash, "steps": step, "wall_time_s": round(prev.get("wall_time_s", 0) + wall if prev.get("steps", 0) < step else wall, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "diffusers": diffusers.__version__,
        "ema_decay": cfg.ema_decay, "params": int(sum(p.numel() for p in model.parameters())),
    }  # fmt: skip
    (tmp / "diffdisc.json").write_text(json.dumps(meta, indent=2))
    old = out / "model.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
