"""One readable training loop for every shipped model (nanoGPT style): accelerate, EMA, resumable.

What differs between the class-conditional U-Net, the text-conditional U-Net and the contrastive model (data,
module, loss, saved layout) lives in `objectives.py`.

Every random draw of step s (batch indices, label dropout, t, noise) comes from a generator seeded by
(seed, s), so a run killed and resumed from a checkpoint ends with the same weights as one that never
stopped. Checkpoints and exports are written under a temporary name and renamed: a kill while saving never
replaces a good checkpoint. A lock file stops two trainers from writing one output directory.

    python -m diffdisc.world.train fmnist-classcond OUT [steps=6000 ...] [--max-minutes M] [--quiet]
    python -m diffdisc.world.train export OUT      # EMA weights of the latest checkpoint -> OUT/model
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import DiffdiscError
from ..progress import hms, step_progress
from ..runs.guard import check_settings
from ..runs.io import atomic_write_text, remove_stale_temps
from .objectives import DATA_ORDER, init_dir, make_objective
from .recipes import CPU_SETTINGS, RECIPES, TrainConfig, default_name, get_recipe

LOG_EVERY = 20
PLAN_STEPS = 5  # steps timed (after the first, which pays for lazy initialisation) before the time plan is logged
RESUMABLE = ("steps", "checkpoint_every", "name")  # may change on resume: the weights of step s stay the same


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _ema_decay(cfg: TrainConfig, step: int) -> float:
    return min(cfg.ema_decay, step / (step + 9)) if cfg.ema_warmup else cfg.ema_decay


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary dirs of a killed save are never listed)."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    done = [p for p in d.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / "step.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]))


@contextlib.contextmanager
def _locked(path: Path, blocking: bool):
    """flock on `path` (released when the process dies, so a killed trainer never leaves a stale lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise DiffdiscError(f"{path.parent} is being trained by another process (pid {pid}); "
                                "stop it or use another output directory") from None  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve_config(recipe: str, out_dir: str | Path | None = None, log=print, **overrides) -> TrainConfig:
    """The recipe with `overrides` (None = not given) applied on top of the settings stored in `out_dir`.

    Rerunning `diffdisc train RECIPE --out DIR` resumes with what DIR was trained with (--data, --steps, ...)
    without repeating it; an option given again with another value still meets `_check_config`'s refusal.
    Keys a stored file predates keep the recipe's value.
    """
    path = Path(out_dir) / "train_config.json" if out_dir is not None else None
    if path is None or not path.is_file():
        return get_recipe(recipe, **overrides)
    stored = json.loads(path.read_text())
    if stored.get("recipe", recipe) != recipe:
        raise DiffdiscError(f"{out_dir} holds a {stored['recipe']!r} run, not {recipe!r}; "
                            f"rerun with recipe {stored['recipe']} to resume, or use another output directory")  # fmt: skip
    cfg = get_recipe(recipe, **{**stored, **{k: v for k, v in overrides.items() if v is not None}})
    kept = {k: getattr(cfg, k) for k in stored
            if overrides.get(k) is None and getattr(cfg, k) != getattr(RECIPES[recipe], k)}  # fmt: skip
    if kept:
        log(f"resuming with the settings stored in {path}: " + ", ".join(f"{k}={v!r}" for k, v in kept.items()))
    return cfg


def _check_config(out: Path, cfg: TrainConfig, log) -> None:
    """A resumed run must use the same config, else its weights mean nothing.

    Only keys that leave the weights of step s unchanged (`RESUMABLE`) may differ (the lr schedule is warmup +
    constant, so `steps` is one).
    """
    path = out / "train_config.json"
    check_settings(path, cfg.to_dict(),
                   runtime_keys=RESUMABLE, verb="trained", hint="use the same config to resume, or another output directory",
                   predates=lambda k, v: log(f"{path} predates option {k!r}; using {v!r}"))  # fmt: skip
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2))


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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)
    model.train()
    times = []
    for s in range(timed_steps + 1):  # step 0 pays for lazy initialisation: not timed
        t = time.time()
        _optimise(obj, model, opt, acc, _step_generator(cfg.seed, s)).item()
        times.append(time.time() - t)
    rate = statistics.median(times[1:])
    ckpts = _checkpoints(Path(out_dir)) if out_dir is not None else []
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
    with _locked(out / "train.lock", blocking=False):
        _check_config(out, cfg, log)
        set_seed(cfg.seed)
        acc = Accelerator(cpu=not torch.cuda.is_available())
        obj = make_objective(cfg)
        if obj.resize_note:
            log(obj.resize_note)
        log(f"EMA weights are exported to {out / 'model'} at every checkpoint (each {cfg.checkpoint_every} steps)")
        dhash = obj.data_hash
        model = obj.build()
        step, wall_before, ckpts = 0, 0.0, _checkpoints(out)
        if cfg.init_from and not ckpts:  # fine-tuning; a resume takes the weights from its checkpoint instead
            src = init_dir(cfg)
            obj.init_weights(model, src)
            log(f"initialised from {src}")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, cfg.warmup_steps)
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
                last = _checkpoints(out)
                kept = f"{last[-1].name} is intact" if last else "no earlier checkpoint exists"
                raise DiffdiscError(f"cannot write checkpoint step {step} in {out}: {e.strerror or e}; {kept}; "
                                    "free space and rerun the same command to resume") from e  # fmt: skip
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in _checkpoints(out)[:-2]:
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
                    torch._foreach_lerp_(ema_t, live_t, 1 - _ema_decay(cfg, step))
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


def export(out: Path, ema: dict, obj, step: int, wall: float, device: str = "cpu") -> Path:
    """EMA weights -> out/model in the objective's layout, plus diffdisc.json (recipe, data hash, steps)."""
    import diffusers

    out, cfg = Path(out), obj.cfg
    model = obj.build()
    model.load_state_dict({k: v.to(next(model.parameters()).dtype) for k, v in ema.items()})
    final, tmp = out / "model", out / f".model.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = obj.save(model, tmp)
    meta.update({
        "name": cfg.name or default_name(cfg), "recipe": cfg.recipe, "kind": cfg.kind, "config": cfg.to_dict(),
        "data_hash": obj.data_hash, "steps": step, "wall_time_s": round(wall, 1), "device": device, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "params": int(sum(p.numel() for p in model.parameters())),
    })  # fmt: skip
    if cfg.kind != "classcond" and not cfg.data:
        meta["colour_correlation"] = cfg.colour_correlation  # the cue the cue-conflict probe contradicts
    if cfg.init_from:  # provenance of a fine-tune: which weights it started from
        try:
            src = init_dir(cfg)
            base = json.loads((src / "diffdisc.json").read_text()) if (src / "diffdisc.json").is_file() else {}
        except (DiffdiscError, OSError, ValueError):  # base model moved since training: keep what we know
            src, base = cfg.init_from, {}
        meta["init_from"] = {"dir": str(src), "recipe": base.get("recipe"), "steps": base.get("steps"),
                             "data_hash": base.get("data_hash")}  # fmt: skip
    (tmp / "diffdisc.json").write_text(json.dumps(meta, indent=2))
    with _locked(out / "export.lock", blocking=True):  # the trainer and `export_checkpoint` may race
        old = out / f".model.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        remove_stale_temps(out, ".model.tmp-*")
        remove_stale_temps(out, ".model.old-*")
    return final


def export_checkpoint(out_dir: str | Path) -> Path:
    """Export the EMA weights of the latest checkpoint to out_dir/model; safe while training continues."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    ckpts = _checkpoints(out)
    if not ckpts or not (out / "train_config.json").is_file():
        raise DiffdiscError(f"{out} has no training checkpoint (expected {out / 'checkpoints' / 'step-*'})")
    cfg = TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
    for ck in reversed(ckpts):  # the newest may be pruned by the trainer while we read it
        try:
            state = json.loads((ck / "step.json").read_text())
            ema = load_file(str(ck / "ema.safetensors"))
            break
        except (OSError, ValueError):
            continue
    else:
        raise DiffdiscError(f"no readable checkpoint in {out / 'checkpoints'}")
    return export(out, ema, make_objective(cfg), state["step"], state.get("wall_time_s", 0.0),
                  state.get("device", "cpu"))  # fmt: skip


def parse_argv(argv: list[str]) -> tuple[list[str], dict, float | None, bool]:
    """`POSITIONAL... [key=value ...] [--max-minutes M] [--quiet]` -> (positional, overrides, minutes, quiet).

    Values are JSON when they parse (numbers, lists, true/false), else strings.
    """
    args, quiet, max_minutes = list(argv), "--quiet" in argv, None
    args = [a for a in args if a != "--quiet"]
    if "--max-minutes" in args:
        i = args.index("--max-minutes")
        max_minutes = float(args[i + 1])
        del args[i : i + 2]
    overrides = {}
    for kv in [a for a in args if "=" in a]:
        k, _, v = kv.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    return [a for a in args if "=" not in a], overrides, max_minutes, quiet


def main(argv: list[str]) -> None:
    """`RECIPE OUT [key=value ...] [--max-minutes M] [--quiet]` or `export OUT` (no argparse: few options)."""
    pos, overrides, max_minutes, quiet = parse_argv(argv)
    if len(pos) < 2:
        sys.exit(__doc__.split("\n\n")[-1])
    if pos[0] == "export":
        print(export_checkpoint(pos[1]))
        return
    cfg = resolve_config(pos[0], pos[1], log=lambda m: print(m, flush=True), **overrides)
    print(train(cfg, pos[1], max_minutes=max_minutes, quiet=quiet, log=lambda m: print(m, flush=True)))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        main(sys.argv[1:])
    except DiffdiscError as e:
        sys.exit(f"error: {e}")
