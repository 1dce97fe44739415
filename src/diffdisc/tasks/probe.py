"""`diffdisc probe`: the compositional and cue-conflict probes for one or more models, one table (diffusion vs
contrastive)."""

from __future__ import annotations

from pathlib import Path

from ..scoring.config import ScoreConfig
from ..world.probes import PROBE_VERSIONS, PROBES, make_probe
from .match import MatchConfig, match, match_metrics


def run_probes(models: list, names: list[str] | None = None, *, n: int = 200, seed: int = 0, n_timesteps: int = 20,
               score: ScoreConfig | None = None, out: str | Path = "runs/probes", progress_factory=None) -> list[dict]:  # fmt: skip
    """One row per (probe, model): text/image/group score with bootstrap 95% intervals and chance levels.

    cue-conflict rows have a text score only (one image, shape vs colour caption), also given as `shape_bias`.

    `models` are loaded backbones (diffusion or contrastive). Each (probe, model) run is stored under
    `out/<probe>-<version>-s<seed>-n<n>/<model>` and resumes.
    """
    import numpy as np

    def label(bb) -> str:  # shipped name or recipe; two dirs both called "model" stay apart by fingerprint
        base = bb.info.metadata.get("recipe") or Path(bb.info.name).name
        return base + ("+lora" if bb.info.name.endswith("+lora") and not base.endswith("+lora") else "")

    rows = []
    for name in names or list(PROBES):
        groups, version = make_probe(name, n, seed), PROBE_VERSIONS[name]
        for bb in models:
            contrastive = getattr(bb, "is_contrastive", False)
            how = "" if contrastive or score is None or score.scorer == "denoise" else f"-{score.scorer}"
            fp = bb.info.fingerprint  # "<model>" or "<model>+lora<adapter>": both parts name the run
            tag = fp[:8] + (f"-lora{fp.split('+lora', 1)[1][:8]}" if "+lora" in fp else "")
            run_dir = Path(out) / f"{name}-{version}-s{seed}-n{n}" / f"{label(bb)}-{tag}{how}"
            ctx = progress_factory(f"{name} / {label(bb)}") if progress_factory else None
            cb = ctx.__enter__() if ctx else None
            try:
                cfg = MatchConfig(n_timesteps=n_timesteps)
                recs = match(bb, groups, cfg, score=score, out=run_dir, progress=cb)
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
            m = match_metrics([np.array(r["scores"]) for r in recs])
            kind = "contrastive" if contrastive else f"diffusion{how.replace('-', ' ')}"
            row = {"probe": name, "version": version, "model": label(bb), "kind": kind,
                   "n": len(recs), "calls_per_group": float(np.mean([r["calls"] for r in recs])), **m,
                   "run_dir": str(run_dir)}  # fmt: skip
            if name == "cue-conflict":  # 2 captions: decisions follow either shape or colour
                row["shape_bias"] = m["text"]
            rows.append(row)
    return rows
