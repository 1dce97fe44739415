"""Every task a suite can run, by name: what family runs it (match or classify), how its paper scores it, where
its data lies under a suite's --root, and which files must be there (a task whose files are missing is skipped,
with the expected path, before any model runs).

Data roots follow the field's habit of one folder per dataset under one root (clip_benchmark's
`--dataset_root root/{dataset}`): winoground/, sugar_crepe/, aro/ (VG), coco/ and flickr30k/ (ARO's order
tasks), eqbench/, clevr/ (or ROOT itself), and <clip_benchmark name>/ for classification; a task whose layout
sits directly in ROOT is found there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...data import aro, clevr, eqben
from ...data.benchmarks import ALIASES as CB_ALIASES
from ...data.benchmarks import BENCHMARKS
from ...data.compositional import canonical
from ...data.winoground import MATCH_BENCHMARKS, SUGAR_CREPE_TASKS
from ...errors import DiffdiscError

EMBEDDED = ("embedded/classification", "embedded/80-way", "embedded/binding", "embedded/spatial",
            "embedded/cue-conflict")  # fmt: skip
SUITES: dict[str, tuple[str, ...]] = {
    "compositional": ("winoground", *aro.ARO_BENCHMARKS, *(f"sugar_crepe/{t}" for t in SUGAR_CREPE_TASKS),
                      "clevr/pair_binding_color", "eqben"),
    "classification": tuple(sorted(BENCHMARKS)),
    "embedded": EMBEDDED,
}  # fmt: skip

# how each metric family is reported: the table's rows, in order, and their chance levels (None: per task)
METRIC_ROWS = {
    "winoground": ("text", "image", "group"),
    "choice": ("accuracy",),  # 1 image x K captions, caption 0 strictly best (SugarCrepe; ties wrong)
    "aro_vg": ("macro accuracy",),
    "aro_order": ("precision@1",),
    "clevr": ("accuracy",),  # Jeong et al.'s argmax: a tie goes to the true caption
    "shape_bias": ("shape bias",),
    "classification": ("top-1 accuracy",),
}


@dataclass(frozen=True)
class TaskInfo:
    """`name` (canonical), `family` (match | classify), `metric` (a METRIC_ROWS key), `folder` under the suite
    root (None: ROOT itself; "" for embedded tasks, which need no data), `layout` (what the folder must hold)."""

    name: str
    family: str
    metric: str
    folder: str | None
    layout: str

    @property
    def embedded(self) -> bool:
        return self.name.startswith("embedded/")

    def expected(self, root: Path, split: str) -> list[Path]:
        """The files and folders read before any image (their absence = the task's data is missing)."""
        n = self.name
        if n == "winoground":
            return [next((d / "examples.jsonl" for d in (root / "data", root) if (d / "examples.jsonl").is_file()),
                         root / "data" / "examples.jsonl")]  # fmt: skip
        if n.startswith("sugar_crepe/"):
            return [root / f"{n.partition('/')[2]}.json", root / "val2017"]
        if n.startswith("aro/"):
            return aro.expected_files(n, root, split)
        if n.startswith("eqben"):
            return eqben.expected_files(root)
        if n.startswith("clevr/"):
            return clevr.expected_files(n, root)
        if n.startswith("hf:"):
            return []  # the cache is searched by the reader
        b = BENCHMARKS[n]
        if n == "imagenet1k" and not (root / "ILSVRC2012_devkit_t12.tar.gz").is_file():
            return [root / ("train" if split == "train" else "val")]
        if n == "imagenetv2":
            return [root / "ImageNetV2-matched-frequency"]
        return [root, *(root / p for p in b.needs(split))]


def task_info(name: str) -> TaskInfo:
    """A task name (ours, clip_benchmark's, an alias, hf:NAME, embedded/...) -> its `TaskInfo`."""
    key = str(name).strip()
    low = key.lower()
    if low.startswith("hf:"):
        return TaskInfo(key, "classify", "classification", None, "a Hugging Face dataset in the local cache, a "
                        "save_to_disk folder or parquet files")  # fmt: skip
    if low in EMBEDDED:
        kind = low.partition("/")[2]
        family, metric = {"classification": ("classify", "classification"), "80-way": ("classify", "classification"),
                          "cue-conflict": ("match", "shape_bias")}.get(kind, ("match", "winoground"))  # fmt: skip
        return TaskInfo(low, family, metric, "", "nothing: built from the shipped Fashion-MNIST test items")
    low = canonical(low)
    if low == "winoground":
        return TaskInfo(low, "match", "winoground", "winoground", "data/examples.jsonl and data/images.zip (or "
                        "data/images/), as the Hugging Face dataset facebook/winoground ships them")  # fmt: skip
    if low.startswith("sugar_crepe/") and low in MATCH_BENCHMARKS:
        t = low.partition("/")[2]
        return TaskInfo(low, "match", "choice", "sugar_crepe", f"{t}.json (from the SugarCrepe repository's data/) "
                        "and val2017/*.jpg (COCO val2017)")  # fmt: skip
    if low in aro.ARO_BENCHMARKS:
        t = low.partition("/")[2]
        folder = {"coco_order": "coco", "flickr30k_order": "flickr30k"}.get(t, "aro")
        return TaskInfo(low, "match", "aro_vg" if t in aro.VG_FILES else "aro_order", folder,
                        aro.layout(t).replace("ROOT/", "").replace(" under ROOT", ""))  # fmt: skip
    if low in eqben.EQBEN_BENCHMARKS:
        return TaskInfo(low, "match", "winoground", "eqbench", eqben.LAYOUT.replace("ROOT/", ""))
    if low in clevr.CLEVR_BENCHMARKS:
        return TaskInfo(low, "match", "clevr", None, clevr.layout(low.partition("/")[2]).replace("ROOT/", ""))
    cb = CB_ALIASES.get(low, low)
    if cb in BENCHMARKS:
        return TaskInfo(cb, "classify", "classification", cb, BENCHMARKS[cb].layout)
    known = ", ".join([*SUITES["compositional"], "eqben/<subset>", "clevr/<task>", *SUITES["classification"],
                       *EMBEDDED, "hf:NAME[/CONFIG]"])  # fmt: skip
    raise DiffdiscError(f"unknown suite task {name!r}; known: {known}")


def task_root(info: TaskInfo, root: Path | None, split: str, own: bool = False) -> tuple[Path | None, list[Path]]:
    """Where `info`'s data is under the suite's `root` (`own`: the task's own root, used as it is) and which
    expected paths are missing there ([] when all are present). ROOT/<folder> first; the layout directly in
    ROOT also counts."""
    if info.embedded:
        return None, []
    if info.name.startswith("hf:"):
        return (root if own else None), []  # the suite's --root is no datasets cache; a task's own root is
    if root is None:
        return None, [Path(info.folder or ".")]
    candidates = [root / info.folder, root] if info.folder and not own else [root]
    for c in candidates:
        expected = info.expected(c, split)
        if c is not candidates[0] and all(p == c for p in expected):
            continue  # a layout of bare class folders (ImageNet-A, ...) is never taken to be the whole root
        missing = [p for p in expected if not p.exists()]
        if not missing:
            return c, []
    first = candidates[0]
    return first, [p for p in info.expected(first, split) if not p.exists()]
