"""Find the runs under the directories given to `diffdisc report` and load each as its Result.

Each Result class says whether a directory is one of its kind (`claims`) and reads it; the run's identity
(model label, strategy, probe) comes from its stored settings. Reading never raises for a partial or odd
directory: a run killed mid-way, an unmerged shard set, a torn JSON file or an image that moved all become
notes in `Run.problems`, so the report shows what exists and says what is missing. Only a path that does not
exist (a typo) is a user error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from ..results import (
    BaselineResult,
    ClaimsResult,
    ClassificationResult,
    FeatureProbeResult,
    MatchResult,
    Result,
    SuiteResult,
    SweepResult,
    SynthResult,
)
from ..runs.store import RUN_JSON, run_task

MAX_PNG_BYTES = 8 << 20  # an overlay larger than this is not embedded (the page must stay loadable)
Classification = ClassificationResult  # the report reads classify runs exactly as `diffdisc merge` does


@dataclass
class Sweep:
    """A feature sweep as the report draws it: validation accuracy over (block, timestep)."""

    path: Path
    model: str
    blocks: list[str]
    timesteps: list[int]
    val_acc: np.ndarray  # [blocks, timesteps]; nan where missing
    best: dict
    extra: dict  # test_acc, head, pooling, n_train, n_val, n_test (those present)

    @classmethod
    def of(cls, r: SweepResult) -> Sweep:
        return cls(r.path, r.model, r.blocks, r.timesteps, r.grid, r.best, r.extra)


@dataclass
class Overlay:
    """A cross-attention heat-map PNG from `diffdisc attention heatmap`."""

    path: Path
    caption: str
    png: bytes


@dataclass
class Run:
    """Everything found under one run directory."""

    name: str
    path: Path
    classification: ClassificationResult | None = None
    matchings: list[MatchResult] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    feature_probes: list[FeatureProbeResult] = field(default_factory=list)
    overlays: list[Overlay] = field(default_factory=list)
    synth: list[SynthResult] = field(default_factory=list)
    baselines: list[BaselineResult] = field(default_factory=list)
    claims: ClaimsResult | None = None  # a `diffdisc claims` directory's table
    suite: SuiteResult | None = None  # a `diffdisc suite` directory's table
    problems: list[str] = field(default_factory=list)  # partial or unreadable data, said plainly

    @property
    def absent(self) -> list[tuple[str, str]]:
        """What this kind of run lacks, each with the command that makes it. A run with data is only told what
        its own kind is missing (a feature sweep never scored on test images), never every other kind of run;
        a directory where nothing was found is told what diffdisc writes, and how."""
        if self.empty:
            return [("classification results", "diffdisc classify --out DIR"),
                    ("probe / matching tables", "diffdisc probe --out DIR"),
                    ("feature sweep or probe", "diffdisc features sweep --out DIR, diffdisc features probe --out DIR"),
                    ("cross-attention overlays", "diffdisc attention heatmap --out DIR/heatmap.png"),
                    ("synthetic samples", "diffdisc synth generate --out DIR")]  # fmt: skip
        out = []
        if any("test_acc" not in s.extra for s in self.sweeps):
            out.append(("a test score for the feature sweep", "diffdisc features sweep ... --test-data DIR"))
        if any(p.test_acc is None for p in self.feature_probes):
            out.append(("a test score for the feature probe", "diffdisc features probe ... --test-data DIR"))
        return out

    @property
    def empty(self) -> bool:
        return not (self.classification or self.matchings or self.sweeps or self.feature_probes or self.overlays
                    or self.synth or self.baselines or self.claims or self.suite)  # fmt: skip


def load_runs(paths: list[str | Path]) -> list[Run]:
    """One Run per directory; a directory holding several classify runs (like `runs/demo`) gives one each."""
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise DiffdiscError(f"run directory {p} does not exist")
        if not p.is_dir():
            raise DiffdiscError(f"{p} is not a directory (pass the run's --out directory)")
        run = load_run(p)
        children = [] if run.classification else sorted(c.parent for c in p.glob(f"*/{RUN_JSON}") if run_task(c.parent) == "classify")
        if children:
            runs += [load_run(c, name=f"{p.resolve().name}/{c.name}") for c in children]
            rest = load_run(p, exclude=set(children))  # what the folder holds besides those runs
            if not (rest.empty and not rest.problems):
                runs.append(rest)
        else:
            runs.append(run)
    return runs


def _found(path: Path, kind: type[Result], exclude: set[Path]) -> list[Path]:
    """Directories of this kind in `path` or up to `kind.depth` levels down (not inside `exclude`)."""
    markers = {path / kind.marker, *(p for n in range(1, kind.depth + 1) for p in path.glob("*/" * n + kind.marker))}
    return [m.parent for m in sorted(markers) if m.is_file() and not any(d in m.parents for d in exclude)
            and kind.claims(m.parent)]  # fmt: skip


def load_run(path: Path, name: str | None = None, exclude: set[Path] = frozenset()) -> Run:
    """Everything under `path` (files inside the `exclude` directories belong to other runs)."""
    run = Run(name or path.resolve().name or str(path), path)
    if SuiteResult.claims(path):  # a suite directory is its table: its runs are the table's cells
        run.suite = SuiteResult.read(path, run.problems)
        return run
    if ClaimsResult.claims(path):
        run.claims = ClaimsResult.read(path, run.problems)
    if ClassificationResult.claims(path):
        run.classification = ClassificationResult.read(path, run.problems)
    for d in _found(path, MatchResult, exclude):
        m = MatchResult.read(d, run.problems)
        rel = d.relative_to(path).as_posix() if d != path else d.name
        if m is not None and not m.score_mats:
            run.problems.append(f"matching run {rel} has no finished groups yet")
        elif m is not None:  # a run whose groups are no probe's is called after where it was found
            m.title = "match" if d == path else d.parent.name if d.parent != path else d.name
            run.matchings.append(m)
    run.sweeps = [Sweep.of(s) for d in _found(path, SweepResult, exclude) if (s := SweepResult.read(d, run.problems))]
    run.feature_probes = [f for d in _found(path, FeatureProbeResult, exclude) if (f := FeatureProbeResult.read(d, run.problems))]
    run.overlays = [o for o in _overlays(path, run.problems) if not any(d in o.path.parents for d in exclude)]
    run.synth = [s for d in _found(path, SynthResult, exclude) if (s := SynthResult.read(d, run.problems))]
    run.baselines = [b for d in _found(path, BaselineResult, exclude) if (b := BaselineResult.read(d, run.problems))]
    return run


# ------------------------------------------------------------------ attention overlays
def _is_overlay(p: Path) -> bool:
    n = p.name.lower()
    return "heatmap" in n or "attention" in n


def _overlays(path: Path, problems: list[str]) -> list[Overlay]:
    """PNGs named *heatmap* / *attention* in the run dir or one level down (class folders are not walked)."""
    out = []
    cands = [p for p in path.glob("*.png") if _is_overlay(p)] + [p for p in path.glob("*/*.png") if _is_overlay(p)]
    for p in sorted(set(cands)):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            problems.append(f"{p.name} is not a PNG; skipped")
            continue
        if len(data) > MAX_PNG_BYTES:
            problems.append(f"{p.name} is larger than {MAX_PNG_BYTES >> 20} MB; not embedded")
            continue
        out.append(Overlay(p, _png_caption(p) or p.stem, data))
    return out


def _png_caption(p: Path) -> str | None:
    """The caption `diffdisc attention heatmap` stores in the PNG's text chunk (None for other PNGs)."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            meta = json.loads(getattr(im, "text", {}).get("diffdisc", "null"))
    except (OSError, ValueError, SyntaxError):
        return None
    if isinstance(meta, dict) and meta.get("caption") is not None:
        return f"{meta['caption']} (t={meta['t']})" if "t" in meta else str(meta["caption"])
    return None
