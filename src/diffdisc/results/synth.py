"""A `diffdisc synth generate` set read back: its settings (synth.json) and the images metadata.jsonl records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .base import PathResult, load_object

SYNTH_JSON = "synth.json"
METADATA = "metadata.jsonl"
CLASSES_JSON = "classes.json"
SAMPLES_PER_CLASS = 6  # sample images kept per class for a report


def metadata_rows(folder: Path) -> list[dict]:
    """The intact rows of a set's metadata.jsonl (a torn or foreign line is skipped); [] if there is none."""
    path = Path(folder) / METADATA
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "file" in row:
            rows.append(row)
    return rows


def done_files(folder: Path) -> set[str]:
    """Files recorded in the metadata AND present on disk (a torn last line or a lost file is redone)."""
    return {r["file"] for r in metadata_rows(folder) if (Path(folder) / r["file"]).is_file()}


@dataclass
class SynthSample:
    class_name: str
    path: Path
    prompt: str | None
    guidance: float | None


class SynthResult(PathResult):
    """Settings, images per class and a few samples per class of one generated set (`generate` returns it, and
    it stands for the set's folder as the path returned before)."""

    marker = SYNTH_JSON

    def __init__(self, path: Path, settings: dict, counts: dict[str, int], samples: list[SynthSample]):
        self.path, self.settings, self.counts, self.samples, self.problems = path, settings, counts, samples, []

    @classmethod
    def load(cls, run_dir: str | Path) -> SynthResult:
        path = Path(run_dir)
        settings = load_object(path / SYNTH_JSON)
        r = cls(path, settings, {c: 0 for c in settings.get("classes", [])}, [])
        if not (path / METADATA).is_file():
            r.problems.append(f"synthetic set {path.name} has synth.json but no metadata.jsonl (no image finished yet)")
        shown: dict[str, int] = {}
        for row in metadata_rows(path):
            try:
                name, f = str(row["class"]), path / row["file"]
            except (KeyError, TypeError):
                continue
            r.counts[name] = r.counts.get(name, 0) + 1
            if shown.get(name, 0) < SAMPLES_PER_CLASS and f.is_file():
                shown[name] = shown.get(name, 0) + 1
                r.samples.append(SynthSample(name, f, row.get("prompt"), row.get("guidance")))
        return r

    def metrics(self) -> dict:
        return {"n_images": sum(self.counts.values()), "per_class": dict(self.counts)}
