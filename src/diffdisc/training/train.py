"""One readable training loop for every model kind (nanoGPT style): accelerate, AdamW, EMA, resumable.

What differs between the class-conditional U-Net, the text-conditional U-Net and the contrastive model (data,
module, loss, saved layout) lives in `objectives/`; the exported model in `export.py`; the directory read back
(checkpoints, steps done) in `results.training`. `diffdisc train` is the command line.

Every random draw of step s (batch indices, label dropout, t, noise) comes from a generator seeded by
(seed, s), so a run killed and resumed from a checkpoint ends with the same weights as one that never
stopped. Checkpoints and exports are written under a temporary name and renamed: a kill while saving never
replaces a good checkpoint. A lock file (train.lock, holding the pid) stops two trainers from writing one
output directory; train_config.json is the run store's settings file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import DiffdiscError
from ..progress import hms, step_progress
from ..results.training import TRAIN_CONFIG, checkpoints
from ..runs.io import remove_stale_temps
from ..runs.store import RunStore
from .config import OptimizerConfig, TrainConfig
from .export import export, locked
from .objectives import DATA_ORDER, init_dir, make_objective
from .recipes import CPU_SETTINGS, default_name, get_recipe

LOG_EVERY = 20
PLAN_STEPS = 5  # steps timed (after the first, which pays for lazy initialisation) before the time plan is logged
RESUMABLE = ("steps", "checkpoint_every", "name")  # may change on resume: the weights of step s stay the same


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _ema_decay(opt: OptimizerConfig, step: int) -> float:
    return min(opt.ema_decay, step / (step + 9)) if opt.ema_warmup else opt.ema_decay


def _optimizer(opt: OptimizerConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def resolve_config(recipe: str, out_dir: str | Path | None = None, log=print, **overrides) -> TrainConfig:
    """The recipe with `overrides` (None = not given) applied on top of the settings stored in `out_dir`.

    Rerunning `diffdisc train RECIPE --out DIR` resumes with what DIR was trained with (--data, --steps, ...)
    without repeating it; an option given again with another value still meets `_check_config`'s refusal.
    Keys a stored file predates keep the recipe's value.
    """
    path = Path(out_dir) / TRAIN_CONFIG if out_dir is not None else None
    if path is None or not path.is_file():
        return get_recipe(recipe, **overrides)
    stored = json.loads(path.read_text())
    base = get_recipe(recipe)
    if stored.get("recipe", base.recipe) != base.recipe:
        raise DiffdiscError(f"{out_dir} holds a {stored['recipe']!r} run, not {recipe!r}; "
                            f"rerun with recipe {stored['recipe']} to resume, or use another output directory")  # fmt: skip
    cfg = get_recipe(recipe, **{**stored, **{k: v for k, v in overrides.items() if v is not None}})
    new, old = cfg.options(), base.options()
    kept = {k: new[k] for k in stored if overrides.get(k) is None and new[k] != old[k]}
    if kept:
        log(f"resuming with the settings stored in {path}: " + ", ".join(f"{k}={v!r}" for k, v in kept.items()))
    return cfg


def _check_config(out: Path, cfg: TrainConfig, log) -> RunStore:
    """The run's store: a resumed run must use the same config, else its weights mean nothing.

    Only keys that leave the weights of step s unchanged (`RESUMABLE`) may differ (the lr schedule is warmup +
    constant, so `steps` is one); train_config.json is rewritten with them. The caller holds train.lock (it
    names the trainer's pid), so the store takes no lock of its own.
    """
    path = out / TRAIN_CONFIG
    return RunStore(out, None, cfg.to_dict(), settings_file=TRAIN_CONFIG, shards=False, rewrite=True, sort_keys=False,
                    lock=False, runtime_keys=RESUMABLE, verb="trained",
                    hint="use the same config to resume, or another output directory",
                    predates=lambda k, v: log(f"{path} predates option {k!r}; using {v!r}"))  # fmt: skip


def time_plan(cfg: TrainConfig, step: int, rate: float, max_minutes: float | None, elapsed: float = 0.0) -> str:
    """One line once the rate is measured: when the run ends, and whether --max-minutes stops it first (a run
    that silently stops at step 559 of 2000 looks finished)."""
    left = cfg.steps - step
    msg = f"{rate:.3f} s/step: {left} steps to go, ~{hms(left * rate)}"
    if max_minutes is None:
        return msg
    fit = max(0, int((max_minutes * 60 - elapsed) / rate))
    if fit >= left:
        return f"{msg}, within --max-minutes {max_minutes:g}"
    return (f"warning: {msg}, but --max-minutes {max_minutes:g} fits ~{fit} more: it stops near step "
            f"{step + fit} of {cfg.steps} (rerun the same command to continue)")  # fmt: skip


def _optimise(obj, model, opt, acc, g: torch.Generator) -> torch.Tensor:
    """One optimiser step (without the lr schedule and EMA): what `estimate` times and `train` repeats."""
    loss = obj.loss(model, g, acc.device)
    acc.backward(loss)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def estimate(cfg: TrainConfig, out_dir: str | Path | None = None, max_minutes: float | None = None,
             timed_steps: int = 3) -> dict:  # fmt: skip
    """`diffdisc train --dry-run`: time a few steps of `cfg` on this machine and write nothing.

    Returns steps (total, already done in out_dir), batch, data size, s/step (median of `timed_steps` after one
    untimed step), the estimated time left, the plan for `max_minutes` and the recipe's documented CPU setting.
    """
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available())
    t0 = time.time()
    obj = make_objective(cfg)
    data_s = time.time() - t0
    model = obj.build()
    opt = _optimizer(cfg.optimizer, model)
    model, opt = acc.prepare(model, opt)
    model.train()
    times = []
    for s in range(timed_steps + 1):  # step 0 pays for lazy initialisation: not timed
        t = time.time()
        _optimise(obj, model, opt, acc, _step_generator(cfg.seed, s)).item()
        times.append(time.time() - t)
    rate = statistics.median(times[1:])
    ckpts = checkpoints(Path(out_dir)) if out_dir is not None else []
    done = int(ckpts[-1].name[5:]) if ckpts else 0
    doc = CPU_SETTINGS.get(cfg.recipe)
    return {
        "recipe": cfg.recipe, "name": cfg.name or default_name(cfg), "steps": cfg.steps, "done": done,
        "batch_size": cfg.batch_size, "images": len(obj.images), "data_s": round(data_s, 1),
        "params": int(sum(p.numel() for p in model.parameters())), "device": str(acc.device),
        "timed_steps": timed_steps, "s_per_step": rate, "seconds_left": max(0, cfg.steps - done) * rate,
        "resize": obj.resize_note,
        "plan": time_plan(cfg, min(done, cfg.steps), rate, max_minutes),  # the clock starts after the data
        "cpu_setting": asdict(doc) if doc else None,
    }  # fmt: skip


def train(
    cfg: TrainConfig, out_dir: str | Path, max_minutes: float | None = None, log=print, quiet: bool = False
) -> Path:
    """Train (or resume) into out_dir: checkpoints/, train_config.json, model/; returns `out_dir/model`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    with locked(out / "train.lock", blocking=False), _check_config(out, cfg, log):
        set_seed(cfg.seed)
        acc = Accelerator(cpu=not torch.cuda.is_available())
        obj = make_objective(cfg)
        if obj.resize_note:
            log(obj.resize_note)
        log(f"EMA weights are exported to {out / 'model'} at every checkpoint (each {cfg.checkpoint_every} steps)")
        dhash = obj.data_hash
        model = obj.build()
        step, wall_before, ckpts = 0, 0.0, checkpoints(out)
        if cfg.init_from and not ckpts:  # fine-tuning; a resume takes the weights from its checkpoint instead
            src = init_dir(cfg)
            obj.init_weights(model, src)
            log(f"initialised from {src}")
        opt = _optimizer(cfg.optimizer, model)
        warm = max(1, cfg.optimizer.warmup_steps)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        model, opt, lr_sched = acc.prepare(model, opt, lr_sched)
        raw = acc.unwrap_model(model)
        ema = {k: v.detach().clone().float() for k, v in raw.state_dict().items()}

        if ckpts:
            state = json.loads((ckpts[-1] / "step.json").read_text())
            if state.get("data_hash", dhash) != dhash:
                was, now = state["data_hash"][:12], dhash[:12]
                msg = f"the training data changed since {ckpts[-1]} (hash {now}, was {was})"
                raise DiffdiscError(f"{msg}; use another output directory")
            acc.load_state(str(ckpts[-1]))
            ema = {k: v.to(acc.device) for k, v in load_file(str(ckpts[-1] / "ema.safetensors")).items()}
            step, wall_before = state["step"], state.get("wall_time_s", 0.0)
            log(f"resumed from {ckpts[-1].name}")

        def save_checkpoint() -> None:
            wall = wall_before + time.time() - t_start
            final = out / "checkpoints" / f"step-{step:06d}"
            tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            meta = {"step": step, "seed": cfg.seed, "data_order": DATA_ORDER, "data_hash": dhash,
                    "wall_time_s": round(wall, 1), "device": str(acc.device)}  # fmt: skip
            try:
                acc.save_state(str(tmp))  # model, optimizer, lr scheduler, RNG states
                save_file(ema, str(tmp / "ema.safetensors"))
                (tmp / "step.json").write_text(json.dumps(meta, indent=2))
            except OSError as e:  # disk full, quota, ...: the last complete checkpoint stays as it was
                shutil.rmtree(tmp, ignore_errors=True)
                last = checkpoints(out)
                kept = f"{last[-1].name} is intact" if last else "no earlier checkpoint exists"
                raise DiffdiscError(f"cannot write checkpoint step {step} in {out}: {e.strerror or e}; {kept}; "
                                    "free space and rerun the same command to resume") from e  # fmt: skip
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoints(out)[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            remove_stale_temps(out / "checkpoints", ".tmp-step-*")  # left by killed saves
            export(out, ema, obj, step, wall, device=str(acc.device))  # model/ is always fresh

        if step >= cfg.steps:
            log(f"already trained to step {step} (steps={cfg.steps})")
        t_start = t_log = time.time()
        step0, t_first = step, t_start
        losses: list[torch.Tensor] = []  # synced once per LOG_EVERY steps: the GPU never waits for the logger
        live = raw.state_dict()  # shares storage with the parameters: read after each optimiser step
        ema_t, live_t = [ema[k] for k in ema], [live[k].float() for k in ema]
        model.train()
        with step_progress("train", enabled=not quiet) as bar:
            if bar:
                bar(step, cfg.steps)  # the ETA counts steps from here, not the resumed ones
            while step < cfg.steps:
                loss = _optimise(obj, model, opt, acc, _step_generator(cfg.seed, step))
                lr_sched.step()
                step += 1
                with torch.no_grad():  # one fused kernel per dtype group instead of one per tensor
                    torch._foreach_lerp_(ema_t, live_t, 1 - _ema_decay(cfg.optimizer, step))
                losses.append(loss.detach())
                if step == step0 + 1:
                    t_first = time.time()
                elif step == step0 + 1 + PLAN_STEPS:
                    loss.item()  # wait for the device, so the rate is the steps' and not the queue's
                    rate = (time.time() - t_first) / PLAN_STEPS
                    log(time_plan(cfg, step, rate, max_minutes, time.time() - t_start))
                if step % LOG_EVERY == 0 or step == cfg.steps or len(losses) >= LOG_EVERY:
                    now, mean = time.time(), torch.stack(losses).float().mean().item()
                    if not math.isfinite(mean):
                        raise DiffdiscError(f"loss became {mean} before step {step}; lower the learning rate")
                    if bar:
                        bar(step, cfg.steps, f"loss {mean:.4f}")
                    eta = (cfg.steps - step) * (now - t_start) / (step - step0)  # checkpoint saves included
                    limit = max_minutes is not None and max_minutes * 60 - (now - t_start) < eta
                    eta = max(0.0, max_minutes * 60 - (now - t_start)) if limit else eta
                    log(f"step {step}/{cfg.steps} loss {mean:.4f} {(now - t_log) / len(losses):.3f} s/step "
                        f"eta {hms(eta)}{' (--max-minutes stops it)' if limit else ''}")  # fmt: skip
                    t_log, losses = now, []
                out_of_time = max_minutes is not None and time.time() - t_start > max_minutes * 60
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                    save_checkpoint()
                if out_of_time:
                    log(f"time limit reached at step {step} of {cfg.steps}; rerun the same command to continue")
                    break
        if not (out / "model").is_dir():  # e.g. resumed a finished run whose model/ was deleted
            save_checkpoint()
    return out / "model"
