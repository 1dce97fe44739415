"""A `diffdisc match` / `diffdisc probe` run read back: one score matrix per group, and who made it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..runs.store import run_task
from .base import Result, ShardedResult, model_label

# probe group ids are "<probe>-<version>[-train]-s<seed>-<index>": the probe a run scored, from its settings
_PROBE_ID = re.compile(r"^(?P<probe>.+?)-v[^-]+(?:-train)?-s\d+-\d+$")


class MatchResult(ShardedResult):
    """Score matrices S[image, caption] per group (lower = better), U-Net calls per group, the run's settings.

    Probe runs are match runs (`diffdisc probe` writes one per probe and model), so they share this reader.
    `match` returns one, in the order of its groups; it also reads as the list of records `match` returned
    before (`len`, iteration, `[i]`, `==`), so scripts written then keep working."""

    depth = 3  # probe output is OUT/<probe>-<version>-s<seed>-n<n>/<model>/run.json

    def __init__(self, settings: dict, records: list[dict], path: str | Path | None = None):
        self.settings, self.path, self.problems = settings, Path(path) if path else None, []
        self.records: list[dict] = []
        self.score_mats: list[np.ndarray] = []
        self.calls: list[int] = []
        order = {g: i for i, g in enumerate(settings.get("groups") or [])}  # shards of several processes: group order
        for r in sorted(records, key=lambda r: order.get(r.get("image_id") if isinstance(r, dict) else None, len(order))):
            try:
                mat, calls = np.array(r["scores"], dtype=np.float64), int(r.get("calls", 0))
            except (KeyError, TypeError, ValueError):
                continue
            self.records.append(r)
            self.score_mats.append(mat)
            self.calls.append(calls)
        self.stored_metrics: dict | None = None
        self.title: str | None = None  # what to call a run whose groups are no probe's (a report: where it was found)

    @classmethod
    def claims(cls, run_dir: Path) -> bool:
        return run_task(run_dir) == "match"

    def __len__(self) -> int:
        return len(self.score_mats)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __eq__(self, other) -> bool:
        if isinstance(other, MatchResult):
            return self.records == other.records
        return self.records == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # compared by its records, like the list it stands for

    @property
    def model(self) -> str:
        """The model's label; "+lora" when the fingerprint says an adapter was loaded."""
        m = self.settings.get("model", {})
        name = model_label(m)
        fingerprint = str(m.get("fingerprint", "")) if isinstance(m, dict) else ""
        return name + "+lora" if "+lora" in fingerprint and not name.endswith("+lora") else name

    @property
    def kind(self) -> str:
        """"contrastive" (no timesteps), else "diffusion" (+ the scorer when it is not the denoising one)."""
        if not self.settings.get("timesteps"):
            return "contrastive"
        scorer = (self.settings.get("score") or {}).get("scorer", "denoise")
        return "diffusion" if scorer in (None, "denoise") else f"diffusion {scorer}"

    @property
    def probe(self) -> str | None:
        """The probe whose groups the run scored, from their ids; else `title` (the groups are not one probe's)."""
        names = {m["probe"] if (m := _PROBE_ID.match(str(g))) else None for g in self.settings.get("groups") or []}
        return (names.pop() if len(names) == 1 else None) or self.title

    def metrics(self) -> dict:
        """metrics.json: Winoground text/image/group (or R@k) scores with bootstrap intervals, over the groups
        finished so far, and "by_tag" when groups are tagged Object / Relation / Both (Winoground)."""
        from ..data.winoground import tag_breakdown
        from ..scoring.match_metrics import match_metrics

        out = match_metrics(self.score_mats)
        by_tag = {k: v for k, v in tag_breakdown(self.records).items() if k != "all"}  # "all" is `out` itself
        if by_tag:
            out["by_tag"] = by_tag
        return out


class ProbeResult(list, Result):
    """`run_probes`' rows, one per (probe, model): what `diffdisc probe` prints. A list of the row dicts, as
    `run_probes` returned before, so scripts and `json.dumps` keep working; each row names its match run."""

    def __init__(self, rows: list[dict], path: str | Path | None = None):
        super().__init__(rows)
        self.path, self.problems = Path(path) if path else None, []

    def metrics(self) -> dict:
        """{"<probe> / <model>": text/image/group scores (and shape_bias), with calls per group}."""
        skip = ("probe", "version", "model", "kind", "n", "run_dir")
        return {f"{r['probe']} / {r['model']}": {k: v for k, v in r.items() if k not in skip} for r in self}
