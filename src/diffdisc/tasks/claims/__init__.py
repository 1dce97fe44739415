"""`diffdisc claims`: every paper claim tested on the embedded world, one stage per claim family, one table.

The protocol (what each stage compares, the verdict rule) is fixed in docs/methods.md; a size only scales items,
timesteps, steps and seeds. Each stage writes its rows to `out/<stage>/stage.json` beside the resumable runs it
made; a rerun reuses a stage whose size, knobs, seed and model fingerprints are unchanged and resumes the others
where their runs stopped. The table goes to `out/claims_table.json` (the report's claims section reads it).
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...config import ConfigMixin, check_choice
from ...errors import DiffdiscError
from ...results.claims import ClaimsResult
from ...runs.io import atomic_write_text
from ...runs.store import write_header
from .base import FAILS, HOLDS, INCONCLUSIVE, Claim, ClaimContext, ModelSpec, check_knob, paired, verdict

STAGES = ("zero_shot", "compositional", "shape_bias", "attention_lora", "features", "diversity", "robustness")
SIZE_NAMES = ("tiny", "quick", "full")
TABLE = ClaimsResult.marker  # claims_table.json
STAGE_FILE = "stage.json"
OUTCOME_FILE = "outcome.json"  # what the stage's owner did with it in its latest run: ran it, or reused it


def stage_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def sizes(name: str) -> dict[str, dict]:
    """Each stage's knobs at size `name` (the documented values; `ClaimsConfig.knobs` overrides them)."""
    check_choice("claims size", name, SIZE_NAMES)
    return {s: dict(stage_module(s).SIZES[name]) for s in STAGES}


def check_knobs(knobs: dict, size: str, flag: str = "knob") -> dict:
    """{stage: {knob: value}} with every stage and knob known and every value typed and in range
    (`base.check_knob`), before any model loads: a bad value must not surface as a traceback mid-run."""
    check_choice("claims size", size, SIZE_NAMES)
    out = {}
    for stage, given in knobs.items():
        check_choice("claims stage", stage, STAGES)
        if not isinstance(given, dict):
            raise DiffdiscError(f"{flag}s of stage {stage}: expected {{knob: value}}, got {given!r}")
        base = stage_module(stage).SIZES[size]
        unknown = sorted(set(given) - set(base))
        if unknown:
            raise DiffdiscError(f"unknown knob(s) {', '.join(unknown)} for stage {stage} (it has {', '.join(base)})")
        out[stage] = {k: check_knob(stage, k, v, base[k], flag) for k, v in given.items()}
    return out


@dataclass(frozen=True)
class ClaimsConfig(ConfigMixin):
    """Which `stages` (names of `STAGES` or claim ids; None: all) run at which `size`, on which `models`, with
    which noise/subset `seed`; `knobs` = {stage: {knob: value}} replaces single knobs of the size."""

    config_label = "claims config"

    size: str = "quick"
    stages: tuple[str, ...] | None = None
    text_model: str = "fmnist-scenes-text"
    clip_model: str = "fmnist-scenes-clip"
    classcond_model: str = "fmnist-classcond"
    seed: int = 0
    knobs: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("claims size", self.size, SIZE_NAMES)
        if self.knobs:
            object.__setattr__(self, "knobs", check_knobs(self.knobs, self.size))

    def selected(self) -> list[str]:
        if not self.stages:
            return list(STAGES)
        by_id = {cid: s for s in STAGES for cid in stage_module(s).IDS}
        out = []
        for name in self.stages:
            if name not in STAGES and name not in by_id:
                raise DiffdiscError(f"unknown claim or stage {name!r} (choose from {', '.join(dict.fromkeys([*STAGES, *by_id]))})")
            s = name if name in STAGES else by_id[name]
            out += [s] if s not in out else []
        return [s for s in STAGES if s in out]  # the documented order, whatever order they were named in

    def stage_knobs(self, stage: str) -> dict:
        return {**stage_module(stage).SIZES[self.size], **self.knobs.get(stage, {})}  # checked in __post_init__


def _model_identity(ctx: ClaimContext) -> dict:
    return {k: {"name": getattr(ctx.models, k), "fingerprint": ctx.load(k).info.fingerprint}
            for k in ("text", "clip", "classcond")}  # fmt: skip


def run_claims(config: ClaimsConfig | None = None, *, out: str | Path, device: str | None = None, batch_size: int = 64,
               progress: Callable | None = None, log: Callable[[str], None] | None = None, rank: int = 0,
               world_size: int = 1) -> ClaimsResult | None:  # fmt: skip
    """Run the selected stages into `out` and write the claims table (returned as a `ClaimsResult`, which is
    the table's dict too) and the run.json header (config and model identities).

    `rank` / `world_size`: one of several processes sharing `out`. Stages are not split (some train models):
    the i-th selected stage is rank i % world_size's; the process that then finds every other stage finished
    writes the table, the others return None.

    `progress(description)`: a context manager yielding a classify/match progress callback (the CLI passes
    `classify_progress`); `log(line)`: one line per stage. `batch_size`: the U-Net batch of every score (0:
    auto-tune; speed only, errors do not depend on it)."""
    from ... import __version__

    cfg = config or ClaimsConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: None)
    ctx = ClaimContext(out, ModelSpec(cfg.text_model, cfg.clip_model, cfg.classcond_model), device, cfg.seed,
                       batch_size, progress, log)  # fmt: skip
    models = _model_identity(ctx)
    stages = cfg.selected()
    write_header(out, "claims", {**cfg.to_dict(), "models": models})
    prior = _read_table(out / TABLE)
    rows, done, used, others = {}, {}, {}, {}
    for i, s in enumerate(stages, 1):
        knobs = used[s] = cfg.stage_knobs(s)
        settings = {"stage": s, "size": cfg.size, "knobs": knobs, "seed": cfg.seed, "models": models,
                    "revision": getattr(stage_module(s), "REVISION", 0)}  # a stage's test changed: its rows are stale
        file = out / s / STAGE_FILE
        if (i - 1) % world_size != rank:  # its owner says whether it ran it or found it done (a rank may start late)
            others[s] = (file, settings)
            continue
        stored = _read_table(file)
        if stored and stored.get("settings") == settings:
            rows[s], done[s] = stored["claims"], {"reused": True, "wall_s": stored.get("wall_s")}
            atomic_write_text(out / s / OUTCOME_FILE, json.dumps(done[s]))
            log(f"[{i}/{len(stages)}] {s}: reused ({file})")
            continue
        log(f"[{i}/{len(stages)}] {s} ({cfg.size})")
        t0 = time.time()
        ctx.out = out / s
        ctx.out.mkdir(parents=True, exist_ok=True)
        found = stage_module(s).run(ctx, knobs)
        wall = round(time.time() - t0, 1)
        rows[s] = [c.to_dict() for c in found]
        done[s] = {"reused": False, "wall_s": wall}
        atomic_write_text(out / s / OUTCOME_FILE, json.dumps(done[s]))  # before the rows: whoever reads them reads it
        atomic_write_text(file, json.dumps({"settings": settings, "claims": rows[s], "wall_s": wall}, indent=1))
        log(f"      {', '.join(f'{c.id}: {c.verdict}' for c in found)} ({wall:.0f} s)")
    for s, (file, settings) in others.items():  # other processes' stages: finished by now, or one of them writes the table
        stored = _read_table(file)
        if not (stored and stored.get("settings") == settings):
            log(f"{s} is another process's stage, still running: the last process to finish writes the table")
            return None
        rows[s], done[s] = stored["claims"], _read_table(file.with_name(OUTCOME_FILE)) or {"reused": False, "wall_s": stored.get("wall_s")}
    # stages run before with the same size/models but not selected now stay in the table
    kept = {s: r for s, r in (prior or {}).get("by_stage", {}).items() if s not in rows and prior.get("size") == cfg.size
            and prior.get("models") == models}  # fmt: skip
    by_stage = {s: (rows.get(s) or kept.get(s)) for s in STAGES if s in rows or s in kept}
    table = {"version": __version__, "size": cfg.size, "seed": cfg.seed, "models": models,
             "knobs": {s: d for s in by_stage if (d := _changed(s, cfg.size, used.get(s)) if s in used
                                                   else (prior or {}).get("knobs", {}).get(s))},  # fmt: skip
             "claims": [r for s in by_stage for r in by_stage[s]], "by_stage": by_stage,
             "stages": {s: done.get(s) or (prior or {}).get("stages", {}).get(s) for s in by_stage},
             "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    atomic_write_text(out / TABLE, json.dumps(table, indent=1))
    return ClaimsResult(table, out)


def _changed(stage: str, size: str, knobs: dict) -> dict:
    """The knobs that differ from the size's own (what the table must say was changed)."""
    default = stage_module(stage).SIZES[size]
    return {k: v for k, v in knobs.items() if default.get(k) != v}


def _read_table(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # torn: recompute
    return d if isinstance(d, dict) else None


__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "STAGES", "Claim", "ClaimContext", "ClaimsConfig", "ModelSpec",
           "check_knobs", "paired", "run_claims", "sizes", "verdict"]  # fmt: skip
