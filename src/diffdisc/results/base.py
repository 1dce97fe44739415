"""What every Result shares: how a report finds its kind of directory, and reading its JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from ..errors import DiffdiscError
from ..runs.store import RUN_JSON, read_records


def model_label(model) -> str:
    """A run's `settings["model"]` -> the name to show: the model's label (`BackboneInfo.label`, recorded by
    runs since labels exist), else the last part of its name (older runs, and settings that hold only a name)."""
    if isinstance(model, dict):
        return str(model.get("label") or Path(str(model.get("name", "?"))).name)
    return Path(str(model)).name if model else "?"


def load_json(path: Path):
    """A run's JSON file; unreadable (torn, not JSON) is a DiffdiscError that names it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffdiscError(f"{Path(path).name} is unreadable ({type(e).__name__}); skipped") from None


def load_object(path: Path) -> dict:
    """`load_json` for the files that hold one JSON object (settings, classifier.json)."""
    d = load_json(path)
    if not isinstance(d, dict):
        raise DiffdiscError(f"{Path(path).name} is unreadable (not an object); skipped")
    return d


def optional_json(path: Path, problems: list[str]) -> dict | None:
    """A JSON file a run may lack (metrics.json before merge): None if absent; unreadable adds a note."""
    if not Path(path).is_file():
        return None
    try:
        d = load_json(path)
    except DiffdiscError as e:
        problems.append(str(e))
        return None
    return d if isinstance(d, dict) else None


class Result:
    """A task's output read back from disk. Subclasses name the file that marks their kind of directory."""

    marker: ClassVar[str]  # the file this kind of run writes first
    depth: ClassVar[int] = 1  # how many folder levels below a report's directory the kind is looked for
    path: Path
    problems: list[str]  # partial or odd data, said plainly (a report shows it)

    @classmethod
    def claims(cls, run_dir: Path) -> bool:
        """Whether `run_dir` is a run of this kind (its marker file exists)."""
        return (Path(run_dir) / cls.marker).is_file()

    @classmethod
    def load(cls, run_dir: str | Path) -> Result:
        raise NotImplementedError

    @classmethod
    def marker_object(cls, run_dir: Path, kind: str) -> dict:
        """The JSON object in the marker file, or a one-line refusal naming the kind of directory expected."""
        if not (run_dir / cls.marker).is_file():
            raise DiffdiscError(f"{run_dir} is not a diffdisc {kind} directory (no {cls.marker})")
        return load_object(run_dir / cls.marker)

    @classmethod
    def read(cls, run_dir: Path, problems: list[str]) -> Result | None:
        """`load` for a report: what cannot be read becomes a note, never an exception."""
        try:
            r = cls.load(run_dir)
        except DiffdiscError as e:
            problems.append(str(e))
            return None
        problems += r.problems
        return r

    def metrics(self) -> dict:
        raise NotImplementedError


class DictResult(dict, Result):
    """A Result that is also the dict its task returned before results were objects (colour prior, calibration,
    claims table): the same keys, so `r["share"]`, `json.dumps(r)` and scripts written then keep working."""

    path: Path | None = None

    def __init__(self, data: dict, path: str | Path | None = None):
        super().__init__(data)
        self.path, self.problems = Path(path) if path else None, []

    def metrics(self) -> dict:
        return dict(self)


class PathResult(Result):
    """A Result that stands for its directory as the `Path` its task returned before (a synthetic set, a LoRA
    adapter): `os.fspath(r)`, `r / "file"`, `str(r)` and Path's methods (`r.rglob`), so callers keep working."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "path":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.path, name)


class ShardedResult(Result):
    """A run written through `RunStore` with shards (classify, match, probe): run.json's settings, the shards'
    finished records, and metrics.json once merged. Subclasses read the records in `__init__` and may add
    notes after loading (`_loaded`)."""

    marker = RUN_JSON
    stored_metrics: dict | None

    @classmethod
    def load(cls, run_dir: str | Path) -> ShardedResult:
        run_dir = Path(run_dir)
        r = cls(cls.marker_object(run_dir, "run"), list(read_records(run_dir / "shards")), run_dir)
        r.stored_metrics = optional_json(run_dir / "metrics.json", r.problems)
        r._loaded()
        return r

    def _loaded(self) -> None:
        """Hook after `load` (notes about a partial run, extra files)."""
