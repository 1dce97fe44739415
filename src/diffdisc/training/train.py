"""One readable training loop for every model kind (nanoGPT style): accelerate, AdamW, EMA, resumable.

What differs between the class-conditional U-Net, the text-conditional U-Net and the contrastive model (data,
module, loss, saved layout) lives in `objectives/`; the exported model in `export.py`; the directory read back
(checkpoints, steps done) in `results.training`. `diffdisc train` is the command line.

Every random draw of step s (batch indices, label dropout, t, noise) comes from a generator seeded by
(seed, s), so a run killed and resumed from a checkpoint ends with the same weights as one that never
stopped. Checkpoints and exports are written under a temporary name and renamed: a kill while saving never
replaces a good checkpoint. A lock file (train.lock, holding the pid) stops two trainers from writing one
output directory; train_config.json is the run store's settings file, and run.json its header (task "train").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import DiffdiscError
from ..progress import hms, progress_interval, step_progress
from ..results.training import TRAIN_CONFIG, checkpoints
from ..runs.io import remove_stale_temps
from ..runs.store import RunStore
from .config import OptimizerConfig, TrainConfig
from .export import export, exported, locked
from .objectives import DATA_ORDER, init_dir, make_objective
from .recipes import CPU_SETTINGS, default_name, get_recipe

PLAN_STEPS = 5  # steps timed (after the first, which pays for lazy initialisation) before the time plan is logged
WARMUP_STEPS = 2  # steps the dry run runs before timing any
TICK_S = 2.0  # the loss is read back (a device sync) at most this often: a live bar moves, the GPU rarely waits
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
    constant, so `steps` is one); train_config.json is rewritten with them, and run.json carries them under the
    header every output has (task "train", version), while train_config.json keeps only what `TrainConfig`
    reads back. The caller holds train.lock (it names the trainer's pid), so the store takes no lock of its own.
    """
    path = out / TRAIN_CONFIG
    return RunStore(out, "train", cfg.to_dict(), settings_file=TRAIN_CONFIG, shards=False, rewrite=True, sort_keys=False,
                    lock=False, runtime_keys=RESUMABLE, verb="trained",
                    hint="use the same config to resume, or another output directory",
                    predates=lambda k, v: log(f"{path} predates option {k!r}; using {v!r}"))  # fmt: skip


def time_plan(cfg: TrainConfig, step: int, rate: float, max_minutes: float | None, elapsed: float = 0.0,
              spread: tuple[float, float] | None = None) -> str:  # fmt: skip
    """One line once the rate is measured: when the run ends, and whether --max-minutes stops it first (a run
    that silently stops at step 559 of 2000 looks finished). `spread` (fastest, slowest s/step measured) turns
    both into ranges: a few timed steps do not make one number trustworthy."""
    left = cfg.steps - step
    if spread:
        lo, hi = spread
        msg = (f"{rate:.3f} s/step (measured {lo:.3f}-{hi:.3f}): {left} steps to go, ~{hms(left * rate)} "
               f"({hms(left * lo)}-{hms(left * hi)})")  # fmt: skip
    else:
        msg = f"{rate:.3f} s/step: {left} steps to go, ~{hms(left * rate)}"
    if max_minutes is None:
        return msg
    budget = max_minutes * 60 - elapsed
    fit = max(0, int(budget / rate))
    if fit >= left and (not spread or budget / spread[1] >= left):
        return f"{msg}, within --max-minutes {max_minutes:g}"
    if spread and fit >= left:
        return (f"warning: {msg}; at the slowest rate measured --max-minutes {max_minutes:g} stops it near step "
                f"{step + int(budget / spread[1])} of {cfg.steps} (rerun the same command to continue)")  # fmt: skip
    near = f"near step {step + fit}"
    if spread:
        first, last = step + int(budget / spread[1]), min(cfg.steps, step + int(budget / spread[0]))
        near += f" (between {first} and {last if last < cfg.steps else 'the end'})"
    return (f"warning: {msg}, but --max-minutes {max_minutes:g} fits ~{fit} more: it stops {near} of {cfg.steps} "
            "(rerun the same command to continue)")  # fmt: skip


def _optimise(obj, model, opt, acc, g: torch.Generator) -> torch.Tensor:
    """One optimiser step (without the lr schedule and EMA): what `estimate` times and `train` repeats."""
    loss = obj.loss(model, g, acc.device)
    acc.backward(loss)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def estimate(cfg: TrainConfig, out_dir: str | Path | None = None, max_minutes: float | None = None,
             timed_steps: int = 10, budget_s: float = 20.0) -> dict:  # fmt: skip
    """`diffdisc train --dry-run`: time a few steps of `cfg` on this machine and write nothing.

    The first `WARMUP_STEPS` are not timed (lazy initialisation, allocator and kernel caches). Then up to
    `timed_steps` are timed, at least 3 and no more than `budget_s` seconds' worth: the median of three, given as
    one number, said "stops near step 169" of a run that reached 296. Returns steps (total, already done in out_dir), batch,
    data size, s/step (median, and the fastest and slowest step: the plan's ranges), the estimated time left,
    the plan for `max_minutes` and the recipe's documented CPU setting.
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
    for s in range(WARMUP_STEPS):
        _optimise(obj, model, opt, acc, _step_generator(cfg.seed, s)).item()
    times: list[float] = []
    while len(times) < max(3, timed_steps) and (len(times) < 3 or sum(times) < budget_s):
        t = time.perf_counter()
        _optimise(obj, model, opt, acc, _step_generator(cfg.seed, WARMUP_STEPS + len(times))).item()
        times.append(max(time.perf_counter() - t, 1e-6))
    rate, spread = statistics.median(times), (min(times), max(times))
    ckpts = checkpoints(Path(out_dir)) if out_dir is not None else []
    done = int(ckpts[-1].name[5:]) if ckpts else 0
    doc = CPU_SETTINGS.get(cfg.recipe)
    return {
        "recipe": cfg.recipe, "steps": cfg.steps, "done": done,
        "name": cfg.name or (default_name(cfg, out_dir) if out_dir or not cfg.data else None),  # None: after --out
        "batch_size": cfg.batch_size, "images": len(obj.images), "data_s": round(data_s, 1),
        "params": int(sum(p.numel() for p in model.parameters())), "device": str(acc.device),
        "warmup_steps": WARMUP_STEPS, "timed_steps": len(times), "s_per_step": rate, "s_per_step_range": spread,
        "seconds_left": max(0, cfg.steps - done) * rate, "resize": obj.resize_note,
        "plan": time_plan(cfg, min(done, cfg.steps), rate, max_minutes, spread=spread),  # clock starts after data
        "cpu_setting": asdict(doc) if doc else None,
    }  # fmt: skip


class _StopRequest:
    """Ctrl-C while training: the first one is noted and the loop stops between steps (a step cut in half would
    be checkpointed as a whole one), saving a checkpoint of the steps done; a second one interrupts at once."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopped at once; the last complete checkpoint is kept; "
                                    "rerun the same command to resume")  # fmt: skip
        self.requested = True


@contextlib.contextmanager
def _stop_between_steps():
    stop = _StopRequest()
    # Signal handlers live in the main thread only; an ignored SIGINT (a background job of a script) stays so.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield stop
        return
    old = signal.signal(signal.SIGINT, stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)


def _write_error(what: str, out: Path, e: BaseException, kept: str) -> DiffdiscError:
    """One line for a write that failed (a full disk, a quota): torch.save reports ENOSPC as a RuntimeError
    ("unexpected pos ..."), so the disk's free space is said too."""
    reason = getattr(e, "strerror", None) or next(iter(str(e).strip().splitlines()), "") or type(e).__name__
    try:
        free = f", {shutil.disk_usage(out).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    return DiffdiscError(f"cannot write {what} in {out} ({reason}{free}); {kept}; "
                         "free space and rerun the same command to resume")  # fmt: skip


def train(
    cfg: TrainConfig, out_dir: str | Path, max_minutes: float | None = None, log=print, quiet: bool = False
) -> Path:
    """Train (or resume) into out_dir: checkpoints/, train_config.json, model/; returns `out_dir/model`.

    Progress: a bar (`progress.step_progress`: live on a terminal, else a plain line every
    DIFFDISC_PROGRESS_INTERVAL seconds), or with `quiet` a `step N/M loss ...` line to `log` as often (the loss
    curve `results.training` reads back). Ctrl-C stops between steps, checkpoints them and raises
    KeyboardInterrupt with a message saying which step was saved.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    write_errors = (OSError, RuntimeError, SafetensorError)  # what a full disk raises through torch / safetensors
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

        def export_model(wall: float) -> None:
            try:
                export(out, ema, obj, step, wall, device=str(acc.device))
            except write_errors as e:
                raise _write_error(f"{out / 'model'} (step {step})", out, e,
                                   f"checkpoint step-{step:06d} is saved and {out / 'model'} holds the previous "
                                   "export") from e  # fmt: skip

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
            # A kill between a checkpoint's rename and the export (or a full disk during the export) leaves
            # model/ behind its checkpoint; a resume with a new --name relabels it too. Only then: a rewritten
            # diffdisc.json is a new model fingerprint, which the runs scored with this export would refuse.
            have = exported(out)
            if (have.get("steps"), have.get("name") if cfg.name else None) != (step, cfg.name):
                was = "is missing" if not have else f"held step {have.get('steps')}" if have.get("steps") != step \
                    else f"is named {have.get('name')!r}"  # fmt: skip
                log(f"{out / 'model'} {was}: exporting {ckpts[-1].name} to it")
                export_model(wall_before)
        saved = step  # the step of the newest checkpoint (0: none)

        def save_checkpoint() -> None:
            nonlocal saved
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
            except write_errors as e:  # disk full, quota, ...: the last complete checkpoint stays as it was
                shutil.rmtree(tmp, ignore_errors=True)
                last = checkpoints(out)
                kept = f"{last[-1].name} is intact" if last else "no earlier checkpoint exists"
                raise _write_error(f"checkpoint step {step}", out, e, kept) from e
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            saved = step
            for old in checkpoints(out)[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            remove_stale_temps(out / "checkpoints", ".tmp-step-*")  # left by killed saves
            export_model(wall)  # model/ is always fresh (a resume re-exports if a kill came first)

        if step >= cfg.steps:
            log(f"already trained to step {step} (steps={cfg.steps})")
        interval = progress_interval()
        t_start = time.time()
        step0, t_first, t_tick, t_line = step, t_start, t_start, t_start
        tick_loss, tick_n, line_loss, line_n = None, 0, 0.0, 0  # the loss is read back once a tick
        live = raw.state_dict()  # shares storage with the parameters: read after each optimiser step
        ema_t, live_t = [ema[k] for k in ema], [live[k].float() for k in ema]
        model.train()
        with step_progress("train", enabled=not quiet) as bar, _stop_between_steps() as stop:
            if bar:
                bar(step, cfg.steps)
            while step < cfg.steps and not stop.requested:
                loss = _optimise(obj, model, opt, acc, _step_generator(cfg.seed, step))
                lr_sched.step()
                step += 1
                with torch.no_grad():  # one fused kernel per dtype group instead of one per tensor
                    torch._foreach_lerp_(ema_t, live_t, 1 - _ema_decay(cfg.optimizer, step))
                tick_loss = loss.detach().float() if tick_loss is None else tick_loss + loss.detach().float()
                tick_n += 1
                if step == step0 + 1:
                    t_first = time.time()
                elif step == step0 + 1 + PLAN_STEPS:
                    loss.item()  # wait for the device, so the rate is the steps' and not the queue's
                    rate = (time.time() - t_first) / PLAN_STEPS
                    log(time_plan(cfg, step, rate, max_minutes, time.time() - t_start))
                now = time.time()
                out_of_time = max_minutes is not None and now - t_start > max_minutes * 60
                last = step == cfg.steps or out_of_time or stop.requested
                if last or now - t_tick >= min(interval, TICK_S):
                    mean = tick_loss.item() / tick_n
                    if not math.isfinite(mean):
                        raise DiffdiscError(f"loss became {mean} before step {step}; lower the learning rate")
                    line_loss, line_n = line_loss + mean * tick_n, line_n + tick_n
                    tick_loss, tick_n, t_tick = None, 0, now
                    rate = (now - t_start) / (step - step0)  # checkpoint saves included
                    eta, note = (cfg.steps - step) * rate, ""
                    if max_minutes is not None and max_minutes * 60 - (now - t_start) < eta:
                        eta = max(0.0, max_minutes * 60 - (now - t_start))
                        note = f" (--max-minutes stops it near step {min(cfg.steps, step + int(eta / rate))})"
                    if bar:
                        bar(step, cfg.steps, f"loss {mean:.4f}  {rate:.3f} s/step{note}", rate=1 / rate, eta=eta)
                    elif last or now - t_line >= interval:
                        log(f"step {step}/{cfg.steps} loss {line_loss / line_n:.4f} {rate:.3f} s/step "
                            f"elapsed {hms(now - t_start)} eta {hms(eta)}{note}")  # fmt: skip
                        line_loss, line_n, t_line = 0.0, 0, now
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                    save_checkpoint()
                if out_of_time:
                    log(f"time limit reached at step {step} of {cfg.steps}; rerun the same command to continue")
                    break
            if stop.requested:
                if step > saved:
                    save_checkpoint()
                where = f"checkpoint step-{saved:06d} is saved" if saved else "no step was trained"
                raise KeyboardInterrupt(f"interrupted at step {step} of {cfg.steps}: {where}; "
                                        "rerun the same command to resume")  # fmt: skip
        if not (out / "model").is_dir():  # e.g. steps=0: nothing trained, nothing exported yet
            save_checkpoint()
    return out / "model"
