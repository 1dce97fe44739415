"""`diffdisc probe`: the compositional and cue-conflict probes for one or more models, one table (diffusion vs
contrastive)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ConfigMixin
from ..datasets.probes import PROBE_VERSIONS, PROBES, make_probe
from ..results.match import ProbeResult
from ..scoring.config import ScoreConfig
from ..scoring.match_metrics import match_metrics
from ..scoring.scorers import scorer_class
from .match import MatchConfig, match


@dataclass(frozen=True)
class ProbeConfig(ConfigMixin):
    """`n` groups per probe made from `seed`, scored at `n_timesteps` (diffusion models) with `score`.

    Not saved as such: each (probe, model) run is a match run, whose run.json stores the score and timesteps, and
    n and seed name its directory."""

    config_label = "probe config"

    n: int = 200
    seed: int = 0
    n_timesteps: int = 20
    score: ScoreConfig = ScoreConfig()

    def __post_init__(self):  # n and n_timesteps are checked where they are used (make_probe, dc_grid)
        object.__setattr__(self, "score", self.score or ScoreConfig())  # None: the defaults, as before


def model_tag(bb) -> str:
    """A run's name part for its model: the fingerprint's head, and the adapter's when a LoRA is applied
    ("<model>+lora<adapter>": both parts name the run)."""
    fp = bb.info.fingerprint
    return fp[:8] + (f"-lora{fp.split('+lora', 1)[1][:8]}" if "+lora" in fp else "")


def run_probes(models: list, names: list[str] | None = None, config: ProbeConfig | None = None, *,
               out: str | Path = "runs/probes", progress_factory=None, **overrides) -> ProbeResult:  # fmt: skip
    """One row per (probe, model): text/image/group score with bootstrap 95% intervals and chance levels (a
    `ProbeResult`: the list of rows it always returned, with `metrics()`).

    cue-conflict rows have a text score only (one image, shape vs colour caption), also given as `shape_bias`.

    `models` are loaded backbones (diffusion or contrastive). Each (probe, model) run is stored under
    `out/<probe>-<version>-s<seed>-n<n>/<model>` and resumes. `progress_factory(description)` gives each of
    those runs its own progress context (yielding a `match` progress callback), as `classify_progress` does.
    `overrides` (n=, seed=, n_timesteps=, score=) replace fields of `config`, as in `match`.
    """
    import numpy as np

    def label(bb) -> str:  # shipped name or recipe; two dirs both called "model" stay apart by fingerprint
        base = bb.info.metadata.get("recipe") or Path(bb.info.name).name
        return base + ("+lora" if bb.info.name.endswith("+lora") and not base.endswith("+lora") else "")

    cfg = replace(config or ProbeConfig(), **overrides)
    n, seed, score = cfg.n, cfg.seed, cfg.score
    rows = []
    for name in names or list(PROBES):
        groups, version = make_probe(name, n, seed), PROBE_VERSIONS[name]
        for bb in models:
            scorer = scorer_class(bb, score)
            how = "-attention" if scorer.name == "attention" else ""  # the default scorers leave the run name as it was
            run_dir = Path(out) / f"{name}-{version}-s{seed}-n{n}" / f"{label(bb)}-{model_tag(bb)}{how}"
            ctx = progress_factory(f"{name} / {label(bb)}") if progress_factory else None
            cb = ctx.__enter__() if ctx else None
            try:
                recs = match(bb, groups, MatchConfig(n_timesteps=cfg.n_timesteps), score=score, out=run_dir, progress=cb)
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
            m = match_metrics(recs.score_mats)
            row = {"probe": name, "version": version, "model": label(bb), "kind": scorer.kind,
                   "n": len(recs), "calls_per_group": float(np.mean(recs.calls)), **m,
                   "run_dir": str(run_dir)}  # fmt: skip
            if name == "cue-conflict":  # 2 captions: decisions follow either shape or colour
                row["shape_bias"] = m["text"]
            rows.append(row)
    return ProbeResult(rows, out)
