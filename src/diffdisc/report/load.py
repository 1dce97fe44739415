"""Read run directories into plain dataclasses: what each task left on disk, and what it did not.

Reading never raises for a partial or odd directory: a run killed mid-way, an unmerged shard set, a torn
JSON file or an image that moved all become notes in `Run.problems`, so the report shows what exists and
says what is missing. Only a path that does not exist (a typo) is a user error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from ..results import read_records
from ..scoring.calibrate import default_ranking

MAX_PNG_BYTES = 8 << 20  # an overlay larger than this is not embedded (the page must stay loadable)
SYNTH_PER_CLASS = 6  # sample images shown per class of a synthetic set


@dataclass
class Classification:
    """A classify run (merged or not): per-image arrays, in the run's image order."""

    path: Path
    settings: dict
    classes: list[str]
    image_ids: list[str]
    paths: list[str | None]
    labels: np.ndarray  # [N], -1 = unlabelled
    preds: np.ndarray  # [N]
    rankings: np.ndarray  # [N, M] the strategy's ranking, best first (top-k comes from it)
    scores: np.ndarray  # [N, M], lower is better; inf = never scored
    n_calls: np.ndarray  # [N, M] U-Net calls spent on each candidate
    timesteps: list[list[int]]  # per image: the t evaluated, in evaluation order
    errors: list[list[list[float | None]] | None]  # per image: [candidate][t index], None = not evaluated
    metrics: dict | None  # metrics.json (None: not merged yet)
    calibration: dict | None  # calibration.json from `diffdisc calibrate`

    @property
    def strategy(self) -> str:
        return str(self.settings.get("adaptive", {}).get("strategy", "?"))

    @property
    def model(self) -> str:
        return model_label(self.settings.get("model"))

    def image_path(self, i: int) -> Path | None:
        """Where image i is now: its recorded path, else the run's data root + image id (a relative path
        recorded from another working directory)."""
        root = self.settings.get("data")
        for p in (self.paths[i], Path(str(root)) / self.image_ids[i] if root else None):
            if p and Path(p).is_file():
                return Path(p)
        return None

    @property
    def contrastive(self) -> bool:
        return len(self) > 0 and all(ts == [0] for ts in self.timesteps) and not self.n_calls.any()

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class Matching:
    """One (probe or matching set, model) run of `diffdisc match` / `diffdisc probe`."""

    path: Path
    probe: str
    model: str
    kind: str  # "diffusion", "diffusion attention", "contrastive" (+ " lora")
    score_mats: list[np.ndarray]
    calls: list[int]
    settings: dict


@dataclass
class Sweep:
    """`diffdisc features sweep` output: validation accuracy over (block, timestep)."""

    path: Path
    model: str
    blocks: list[str]
    timesteps: list[int]
    val_acc: np.ndarray  # [blocks, timesteps]; nan where missing
    best: dict
    extra: dict  # test_acc, head, pooling, n_train, n_val, n_test (those present)


@dataclass
class Overlay:
    """A cross-attention heat-map PNG from `diffdisc attention heatmap`."""

    path: Path
    caption: str
    png: bytes


@dataclass
class SynthSample:
    class_name: str
    path: Path
    prompt: str | None
    guidance: float | None


@dataclass
class SynthSet:
    """`diffdisc synth generate` output: settings, images per class, a few samples per class."""

    path: Path
    settings: dict
    counts: dict[str, int]
    samples: list[SynthSample]


@dataclass
class BaselineEval:
    """One recorded evaluation of a baseline classifier on a labelled folder (evaluations.json entry)."""

    data: str
    labels: np.ndarray  # [N]
    preds: np.ndarray  # [N]
    confidence: np.ndarray  # [N] softmax probability of the predicted class
    top5: float | None


@dataclass
class Baseline:
    """A timm classifier from `diffdisc baseline train` / `synth train` (classifier.json) and its evaluations."""

    path: Path
    model: str
    meta: dict  # classifier.json
    evaluations: list[BaselineEval]


@dataclass
class Run:
    """Everything found under one run directory."""

    name: str
    path: Path
    classification: Classification | None = None
    matchings: list[Matching] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    overlays: list[Overlay] = field(default_factory=list)
    synth: list[SynthSet] = field(default_factory=list)
    baselines: list[Baseline] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # partial or unreadable data, said plainly

    @property
    def absent(self) -> list[tuple[str, str]]:
        """Kinds of data this run does not have, each with the command that makes it."""
        out = []
        if self.classification is None:
            out.append(("classification results", "diffdisc classify --out DIR"))
        if not self.matchings:
            out.append(("probe / matching tables", "diffdisc probe --out DIR"))
        if not self.sweeps:
            out.append(("feature sweep", "diffdisc features sweep --out DIR"))
        if not self.overlays:
            out.append(("cross-attention overlays", "diffdisc attention heatmap --out DIR/heatmap.png"))
        if not self.synth:
            out.append(("synthetic samples", "diffdisc synth generate --out DIR"))
        return out

    @property
    def empty(self) -> bool:
        return not (self.classification or self.matchings or self.sweeps or self.overlays or self.synth or self.baselines)


def model_label(model) -> str:
    """A run's `settings["model"]` -> the name to show: the model's label (`BackboneInfo.label`, recorded by
    runs since labels exist), else the last part of its name (older runs, and settings that hold only a name)."""
    if isinstance(model, dict):
        return str(model.get("label") or Path(str(model.get("name", "?"))).name)
    return Path(str(model)).name if model else "?"


def _json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path.name} is unreadable ({type(e).__name__}); skipped")
        return None


def _task(run_json: Path) -> str | None:
    try:
        d = json.loads(run_json.read_text())
        return d.get("task") if isinstance(d, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def load_runs(paths: list[str | Path]) -> list[Run]:
    """One Run per directory; a directory holding several classify runs (like `runs/demo`) gives one each."""
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise DiffdiscError(f"run directory {p} does not exist")
        if not p.is_dir():
            raise DiffdiscError(f"{p} is not a directory (pass the run's --out directory)")
        run = load_run(p)
        children = [] if run.classification else sorted(c.parent for c in p.glob("*/run.json") if _task(c) == "classify")
        if children:
            runs += [load_run(c, name=f"{p.resolve().name}/{c.name}") for c in children]
            rest = load_run(p, exclude=set(children))  # what the folder holds besides those runs
            if not (rest.empty and not rest.problems):
                runs.append(rest)
        else:
            runs.append(run)
    return runs


def load_run(path: Path, name: str | None = None, exclude: set[Path] = frozenset()) -> Run:
    """Everything under `path` (files inside the `exclude` directories belong to other runs)."""
    run = Run(name or path.resolve().name or str(path), path)

    def mine(f: Path) -> bool:
        return not any(d in f.parents for d in exclude)

    if (path / "run.json").is_file():
        settings = _json(path / "run.json", run.problems)
        if isinstance(settings, dict) and settings.get("task") == "classify":
            run.classification = _classification(path, settings, run.problems)
    # probe output is OUT/<probe>-<version>-s<seed>-n<n>/<model>/run.json: found in DIR or one level down
    for rj in sorted({path / "run.json", *(p for d in ("*", "*/*", "*/*/*") for p in path.glob(f"{d}/run.json"))}):
        if rj.is_file() and mine(rj) and _task(rj) == "match":
            m = _matching(rj.parent, path, run.problems)
            if m:
                run.matchings.append(m)
    for sj in sorted([path / "features_sweep.json", *path.glob("*/features_sweep.json")]):
        if sj.is_file() and mine(sj):
            s = _sweep(sj, run.problems)
            if s:
                run.sweeps.append(s)
    run.overlays = [o for o in _overlays(path, run.problems) if mine(o.path)]
    for sj in sorted([path / "synth.json", *path.glob("*/synth.json")]):
        if sj.is_file() and mine(sj):
            s = _synth(sj.parent, run.problems)
            if s:
                run.synth.append(s)
    for cj in sorted([path / "classifier.json", *path.glob("*/classifier.json")]):
        if cj.is_file() and mine(cj):
            b = _baseline(cj.parent, run.problems)
            if b:
                run.baselines.append(b)
    return run


# ------------------------------------------------------------------ classify
def _classification(path: Path, settings: dict, problems: list[str]) -> Classification | None:
    classes = list(settings.get("classes") or settings.get("candidates") or [])
    if not classes:
        problems.append("run.json lists no classes; classification skipped")
        return None
    recs, bad = [], 0
    for r in read_records(path / "shards"):
        ok = all(k in r for k in ("image_id", "pred", "scores")) and len(r["scores"]) == len(classes)
        if ok:
            recs.append(r)
        else:
            bad += 1
    if bad:
        problems.append(f"{bad} shard record(s) without the expected fields were skipped")
    recs.sort(key=lambda r: r.get("order", 0))
    M = len(classes)
    metrics = _json(path / "metrics.json", problems) if (path / "metrics.json").is_file() else None
    if not recs:
        problems.append("classification started but no image is finished yet (shards are empty)")
    elif metrics is None:
        problems.append(f"not merged: metrics.json is missing (unfinished run, or run `diffdisc merge {path}`); "
                        f"showing the {len(recs)} finished image(s) from the shards")  # fmt: skip
    cal = _json(path / "calibration.json", problems) if (path / "calibration.json").is_file() else None

    def nc(r):
        v = r.get("n_calls")
        return v if isinstance(v, list) and len(v) == M else [0] * M

    errors = [r.get("errors") if isinstance(r.get("errors"), list) else None for r in recs]
    scores = np.array([[np.inf if s is None else float(s) for s in r["scores"]] for r in recs], dtype=np.float64).reshape(-1, M)

    def ranking(r, row):
        v = r.get("ranking")
        return v if isinstance(v, list) and sorted(v) == list(range(M)) else default_ranking(row[None])[0].tolist()

    return Classification(
        path=path, settings=settings, classes=classes,
        image_ids=[str(r["image_id"]) for r in recs], paths=[r.get("path") for r in recs],
        labels=np.array([-1 if r.get("label") is None else int(r["label"]) for r in recs], dtype=np.int64),
        preds=np.array([int(r["pred"]) for r in recs], dtype=np.int64),
        rankings=np.array([ranking(r, row) for r, row in zip(recs, scores, strict=True)], dtype=np.int64).reshape(-1, M),
        scores=scores,
        n_calls=np.array([nc(r) for r in recs], dtype=np.int64).reshape(-1, M),
        timesteps=[list(r.get("timesteps") or []) for r in recs], errors=errors,
        metrics=metrics if isinstance(metrics, dict) else None, calibration=cal if isinstance(cal, dict) else None,
    )  # fmt: skip


# ------------------------------------------------------------------ match / probe
_PROBE_DIR = re.compile(r"^(?P<probe>.+?)-(?P<version>v[^-]+)-s(?P<seed>\d+)-n(?P<n>\d+)$")


def _matching(path: Path, root: Path, problems: list[str]) -> Matching | None:
    settings = _json(path / "run.json", problems) or {}
    mats, calls = [], []
    for r in read_records(path / "shards"):
        try:
            mats.append(np.array(r["scores"], dtype=np.float64))
            calls.append(int(r.get("calls", 0)))
        except (KeyError, TypeError, ValueError):
            continue
    rel = path.relative_to(root).as_posix() if path != root else path.name
    if not mats:
        problems.append(f"matching run {rel} has no finished groups yet")
        return None
    m = _PROBE_DIR.match(path.parent.name) if path != root else None
    probe = m["probe"] if m else ("match" if path == root else path.parent.name if path.parent != root else path.name)
    model = settings.get("model", {})
    name = model_label(model)
    fingerprint = str(model.get("fingerprint", "")) if isinstance(model, dict) else ""
    kind = "contrastive" if not settings.get("timesteps") else "diffusion"
    scorer = (settings.get("score") or {}).get("scorer", "denoise")
    if kind == "diffusion" and scorer not in (None, "denoise"):
        kind += f" {scorer}"
    if "+lora" in fingerprint and not name.endswith("+lora"):
        name += "+lora"
    return Matching(path, probe, name, kind, mats, calls, settings)


# ------------------------------------------------------------------ features sweep
def _sweep(path: Path, problems: list[str]) -> Sweep | None:
    d = _json(path, problems)
    if not isinstance(d, dict):
        return None
    try:
        blocks, ts = [str(b) for b in d["blocks"]], [int(t) for t in d["timesteps"]]
        grid = np.full((len(blocks), len(ts)), np.nan)
        for i, row in enumerate(d["val_acc"][: len(blocks)]):
            for j, v in enumerate(row[: len(ts)]):
                grid[i, j] = np.nan if v is None else float(v)
    except (KeyError, TypeError, ValueError):
        problems.append(f"{path.name}: needs blocks, timesteps and val_acc[block][t]; skipped")
        return None
    extra = {k: d[k] for k in ("test_acc", "head", "pooling", "n_train", "n_val", "n_test") if d.get(k) is not None}
    best = d.get("best") if isinstance(d.get("best"), dict) else {}
    return Sweep(path, str(d.get("model", "?")), blocks, ts, grid, best, extra)


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


# ------------------------------------------------------------------ synthetic sets
def _synth(path: Path, problems: list[str]) -> SynthSet | None:
    settings = _json(path / "synth.json", problems)
    if not isinstance(settings, dict):
        return None
    counts: dict[str, int] = {c: 0 for c in settings.get("classes", [])}
    samples: list[SynthSample] = []
    meta = path / "metadata.jsonl"
    if not meta.is_file():
        problems.append(f"synthetic set {path.name} has synth.json but no metadata.jsonl (no image finished yet)")
        return SynthSet(path, settings, counts, samples)
    shown: dict[str, int] = {}
    for line in meta.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            name, f = str(row["class"]), path / row["file"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        counts[name] = counts.get(name, 0) + 1
        if shown.get(name, 0) < SYNTH_PER_CLASS and f.is_file():
            shown[name] = shown.get(name, 0) + 1
            samples.append(SynthSample(name, f, row.get("prompt"), row.get("guidance")))
    return SynthSet(path, settings, counts, samples)


# ------------------------------------------------------------------ supervised baselines
def _baseline(path: Path, problems: list[str]) -> Baseline | None:
    meta = _json(path / "classifier.json", problems)
    if not isinstance(meta, dict):
        return None
    cfg = meta.get("config")
    model = str(cfg.get("model", "?")) if isinstance(cfg, dict) else "?"
    evals: list[BaselineEval] = []
    ej = path / "evaluations.json"
    d = _json(ej, problems) if ej.is_file() else None
    for e in (d.get("evaluations") if isinstance(d, dict) else None) or []:
        try:
            labels, preds = np.asarray(e["labels"], dtype=np.int64), np.asarray(e["predictions"], dtype=np.int64)
            conf = np.asarray(e["confidence"], dtype=np.float64)
            if not (labels.shape == preds.shape == conf.shape and labels.ndim == 1):
                raise ValueError
            evals.append(BaselineEval(str(e.get("data", "?")), labels, preds, conf,
                                      float(e["top5"]) if e.get("top5") is not None else None))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            problems.append(f"{ej.name}: an evaluation without labels, predictions and confidence lists of one length; skipped")
    if not evals:
        problems.append(f"baseline classifier {path.name} ({model}) has no recorded evaluation: "
                        f"run `diffdisc baseline eval {path} --data TEST_FOLDER`")  # fmt: skip
    return Baseline(path, model, meta, evals)
