"""What the suite's modules share: the task and suite specs, suite files, the loaded models and the context every
task runner gets."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...backbones.capabilities import Capability
from ...backbones.registry import create_backbone
from ...errors import DiffdiscError
from ...jsonfile import parse_json, read_json_text
from ...runtime import quiet_libraries
from ...scoring.config import ScoreConfig, default_weighting
from .catalogue import SUITES, TaskInfo, task_info

TABLE = "suite_table.json"
MARKDOWN = "suite_table.md"
TASK_KEYS = ("name", "root", "split", "limit", "timesteps", "templates", "image_column", "label_column", "adaptive")
EMBEDDED_SIZES = {"embedded/classification": 1000, "embedded/80-way": 200, "embedded/binding": 200,
                  "embedded/spatial": 200, "embedded/cue-conflict": 200}  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite: its `name` and, optionally, its own data `root`, `split`, item `limit` (a seeded
    subset; None: all, embedded tasks their documented size), `timesteps`, classification `templates`, Hugging
    Face columns and an `adaptive` dict (an `AdaptiveConfig`, classification only)."""

    name: str
    root: str | None = None
    split: str = "test"
    limit: int | None = None
    timesteps: int | None = None
    templates: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    adaptive: dict | None = None

    def __post_init__(self):
        for k in ("limit", "timesteps"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise DiffdiscError(f"suite task {self.name}: {k} must be a whole number >= 1, got {v!r}")
        if self.adaptive is not None and not isinstance(self.adaptive, dict):
            raise DiffdiscError(f"suite task {self.name}: adaptive must be a mapping of AdaptiveConfig fields")


@dataclass(frozen=True)
class SuiteConfig:
    """The `tasks` of suite `name`, run on `models` (names or directories; a column each) with `timesteps`
    evenly spaced t per candidate (diffusion), `limit` items per task unless a task says otherwise, noise `seed`."""

    name: str
    tasks: tuple[TaskSpec, ...]
    models: tuple[str, ...] = ("fmnist-scenes-text", "fmnist-scenes-clip")
    root: str | None = None
    timesteps: int = 20
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    dtype: str = "fp32"

    def __post_init__(self):
        if not self.tasks:
            raise DiffdiscError(f"suite {self.name}: no tasks")
        if not self.models:
            raise DiffdiscError("a suite needs at least one model")
        names = [t.name for t in self.tasks]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup and len({(t.name, t.split) for t in self.tasks}) != len(self.tasks):
            raise DiffdiscError(f"suite {self.name}: task {dup} is listed twice")


def named_suite(name: str) -> tuple[TaskSpec, ...]:
    if name not in SUITES:
        raise DiffdiscError(f"unknown suite {name!r} (choose from {', '.join(SUITES)}, or give a YAML / JSON file)")
    return tuple(TaskSpec(n) for n in SUITES[name])


def load_suite_file(path: str | Path) -> tuple[str, tuple[TaskSpec, ...], dict]:
    """A YAML / JSON suite file -> (name, tasks, suite-level settings). Tasks are names or mappings with
    `TASK_KEYS`; relative roots are relative to the file. Top level: tasks, and optionally name, root,
    timesteps, limit. YAML is read with `safe_load` (no Python objects)."""
    path = Path(path).expanduser()
    text = read_json_text(path, "a suite file")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise DiffdiscError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the suite as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DiffdiscError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        data = parse_json(text, str(path), "the suite file")
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise DiffdiscError(f"{path}: expected a list of tasks, or a mapping with a 'tasks' list")
    unknown = sorted(set(data) - {"name", "tasks", "root", "timesteps", "limit"})
    if unknown:
        raise DiffdiscError(f"{path}: unknown key {unknown[0]!r} (a suite has name, tasks, root, timesteps, limit)")

    def rel(p):
        if p is None:
            return None
        if not isinstance(p, str) or not p.strip():
            raise DiffdiscError(f"{path}: a root must be a path, got {p!r}")
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else path.parent / q)

    tasks = []
    for n, t in enumerate(data["tasks"]):
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise DiffdiscError(f"{path}: task {n} must be a name or a mapping with a 'name'")
        bad = sorted(set(t) - set(TASK_KEYS))
        if bad:
            raise DiffdiscError(f"{path}: task {t['name']}: unknown key {bad[0]!r} (a task has {', '.join(TASK_KEYS)})")
        t = dict(t)
        if "root" in t:
            t["root"] = rel(t["root"])
        task_info(t["name"])  # an unknown name fails before any model loads
        tasks.append(TaskSpec(**t))
    settings = {k: data[k] for k in ("timesteps", "limit") if data.get(k) is not None}
    if data.get("root") is not None:
        settings["root"] = rel(data["root"])
    return str(data.get("name") or path.stem), tuple(tasks), settings


def slug(text: str) -> str:
    """A folder name for a task or model; hf: specs and long names keep a short hash of the whole text."""
    s = re.sub(r"[^0-9A-Za-z._+-]+", "_", text).strip("._")[:50] or "task"
    return f"{s}-{hashlib.sha256(text.encode()).hexdigest()[:8]}" if text.startswith("hf:") or len(text) > 50 else s


@dataclass
class _Model:
    spec: str
    backbone: object
    label: str = ""
    kind: str = ""
    folder: str = ""

    def identity(self) -> dict:
        info = self.backbone.info
        return {"label": self.label, "name": str(info.name), "fingerprint": info.fingerprint, "kind": self.kind,
                "conditioning": info.conditioning}  # fmt: skip


@dataclass
class SuiteContext:
    """What every task runner shares: the suite's config, its output folder, the loaded models, progress."""

    config: SuiteConfig
    out: Path
    models: list[_Model]
    progress: Callable[[str], contextlib.AbstractContextManager] | None = None
    log: Callable[[str], None] = lambda msg: None

    def track(self, description: str):
        return self.progress(description) if self.progress else contextlib.nullcontext(None)

    def score(self, model: _Model) -> ScoreConfig:
        c = self.config
        return ScoreConfig(weighting=default_weighting(model.backbone), batch_size=c.batch_size, dtype=c.dtype, seed=c.seed)


def load_models(specs: tuple[str, ...], device: str | None) -> list[_Model]:
    quiet_libraries()
    out, seen = [], {}
    for spec in specs:
        bb = create_backbone(spec, device)
        label = str(bb.info.label or Path(str(spec)).name)
        if label in seen:  # two columns must not share a heading
            label = f"{label} ({bb.info.fingerprint[:8]})"
        seen[label] = True
        matches = Capability.MATCH in bb.capabilities
        kind = "contrastive" if matches else f"diffusion ({bb.info.conditioning}-conditional)"
        out.append(_Model(spec, bb, label, kind, slug(f"{label}-{bb.info.fingerprint[:8]}")))
    return out


def applicable(info: TaskInfo, model: _Model) -> str | None:
    """Why `model` cannot run `info` (None: it can)."""
    cond = model.backbone.info.conditioning
    if info.family == "match" and cond != "text":
        return f"scores captions; {model.label} is {cond}-conditional"
    if info.name == "embedded/80-way" and cond != "text":
        return f"80 caption classes ('a red sneaker'); {model.label} is {cond}-conditional"
    return None


class Skip(DiffdiscError):
    """A task that cannot run here for a reason other than its files (a missing optional package)."""


