"""A training directory's files: the lock that keeps one trainer per directory, and the exported model (EMA
weights in the objective's layout + diffdisc.json), written whole or not at all. Its checkpoints are listed by
`results.training`, the directory's reader."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import DiffdiscError
from ..results.training import TRAIN_CONFIG, checkpoints
from ..runs.io import remove_stale_temps
from .config import TrainConfig
from .objectives import init_dir, make_objective
from .recipes import default_name


@contextlib.contextmanager
def locked(path: Path, blocking: bool):
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


def exported(out: Path) -> dict:
    """out/model/diffdisc.json ({} when model/ is missing or torn): what a resume compares its checkpoint with."""
    try:
        meta = json.loads((Path(out) / "model" / "diffdisc.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def export(out: Path, ema: dict, obj, step: int, wall: float, device: str = "cpu") -> Path:
    """EMA weights -> out/model in the objective's layout, plus diffdisc.json (recipe, data hash, steps).

    Written to a temporary folder that any failure (a full disk) removes, then renamed: model/ is the previous
    export or the new one, never half of each."""
    import diffusers

    out, cfg = Path(out), obj.cfg
    model = obj.build()
    model.load_state_dict({k: v.to(next(model.parameters()).dtype) for k, v in ema.items()})
    final, tmp = out / "model", out / f".model.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = obj.save(model, tmp)
        meta.update({
            "name": cfg.name or default_name(cfg, out), "recipe": cfg.recipe, "kind": cfg.kind, "config": cfg.to_dict(),
            "data_hash": obj.data_hash, "steps": step, "wall_time_s": round(wall, 1), "device": device,
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "params": int(sum(p.numel() for p in model.parameters())),
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with locked(out / "export.lock", blocking=True):  # the trainer and `export_checkpoint` may race
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
    ckpts = checkpoints(out)
    if not ckpts or not (out / TRAIN_CONFIG).is_file():
        raise DiffdiscError(f"{out} has no training checkpoint (expected {out / 'checkpoints' / 'step-*'})")
    cfg = TrainConfig.from_dict(json.loads((out / TRAIN_CONFIG).read_text()))
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
