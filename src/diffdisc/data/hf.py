"""Hugging Face datasets as classification data, offline: `hf:NAME[/CONFIG]` from the local cache, or `hf:DIR` for
a folder written by `save_to_disk` or holding parquet files.

Where the data comes from, in this order: DIR saved with `save_to_disk` (`load_from_disk`); DIR of parquet files
(`load_dataset(DIR)`, splits from the file names as the Hub names them, `data/test-00000-of-00001.parquet`);
otherwise NAME in the `datasets` cache (`load_dataset(NAME, CONFIG, cache_dir=ROOT)`, what an earlier online
`load_dataset` prepared) or, failing that, a Hub snapshot in the hub cache (`huggingface-cli download --repo-type
dataset NAME`). Hub look-ups are switched off while loading (HF_HUB_OFFLINE), so nothing is downloaded, and no
dataset script runs (datasets 4+ has none; `trust_remote_code` is never passed).

Columns: the image column is the one `Image` feature, the label column the one `ClassLabel` (one named "label"
wins among several); `image_column` / `label_column` override, and a spec may carry them as
`hf:NAME?image=img&label=fine_label` (for commands whose data is one `--data` value; `@SPLIT` likewise picks the
split there). Class names are the ClassLabel's; a string label column gives its sorted values, an integer one
without names gives "0".."K-1" (which only a class-conditional model's own classes can match).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import DiffdiscError
from .benchmarks import BENCHMARKS, BenchmarkDataset, benchmark_templates
from .folders import Item
from .templates import resolve_templates

log = logging.getLogger("diffdisc")
PREFIX = "hf:"


def is_hf(name) -> bool:
    return isinstance(name, (str, os.PathLike)) and str(name).startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """"hf:NAME[/CONFIG][@SPLIT][?image=COL&label=COL]" -> (NAME[/CONFIG], split or None, {image, label})."""
    body = str(spec)[len(PREFIX) :] if is_hf(spec) else str(spec)
    body, _, query = body.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=False))
    unknown = sorted(set(opts) - {"image", "label"})
    if unknown:
        raise DiffdiscError(f"{spec}: unknown option {unknown[0]!r} (a spec takes ?image=COLUMN&label=COLUMN)")
    body, at, split = body.rpartition("@") if "@" in body else (body, "", "")
    if not body.strip():
        raise DiffdiscError(f"{spec}: give a dataset after hf: (a cached Hub name like uoft-cs/cifar10, or a folder)")
    return body.strip(), (split.strip() or None) if at else None, opts


@contextlib.contextmanager
def _offline():
    """Hub look-ups off for the duration (env for modules not yet imported, constants for those that are)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    patched = []
    for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, attr):
            patched.append((m, attr, getattr(m, attr)))
            setattr(m, attr, True)
    try:
        yield
    finally:
        for m, attr, v in patched:
            setattr(m, attr, v)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DiffdiscError("hf: datasets need the `datasets` package: pip install datasets") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _pick_split(obj, split: str, where: str):
    """A split of a DatasetDict (or the Dataset itself when it has one split only and that is asked for)."""
    ds = _datasets()
    if isinstance(obj, ds.DatasetDict):
        if split not in obj:
            raise DiffdiscError(f"{where} has no split {split!r}; it has {', '.join(obj) or 'none'}")
        return obj[split]
    return obj


def _load(name: str, split: str, root: Path | None):
    """(Dataset, the folder it was read from) for `name`, offline, or one line saying what was looked for."""
    ds = _datasets()
    path = Path(name).expanduser()
    with _offline():
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                try:
                    return _pick_split(ds.load_from_disk(str(path)), split, str(path)), path
                except (FileNotFoundError, ValueError, OSError) as e:
                    raise DiffdiscError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
            if not any(path.rglob("*.parquet")):
                raise DiffdiscError(f"hf:{name}: the folder holds neither a save_to_disk dataset (dataset_dict.json or "
                                    "state.json) nor parquet files")  # fmt: skip
            return _load_dataset(ds, str(path), None, split, root, f"hf:{name}"), path
        candidates = [(name, None)]
        if name.count("/") == 2:  # user/name/config
            user, repo_name, config = name.split("/")
            candidates = [(f"{user}/{repo_name}", config)]
        elif name.count("/") == 1:  # user/name, or name/config
            first, second = name.split("/")
            candidates = [(name, None), (first, second)]
        tried = []
        for repo, config in candidates:
            try:
                return _load_dataset(ds, repo, config, split, root, f"hf:{name}"), _cache_root(root)
            except _NotCached as e:
                tried.append(str(e))
            snap = _snapshot(repo)
            if snap is not None:
                return _load_dataset(ds, str(snap), config, split, root, f"hf:{name}"), snap
        where = f"under {root}" if root else "in the Hugging Face cache (HF_HOME / HF_DATASETS_CACHE)"
        raise DiffdiscError(f"hf:{name}: not found {where} and nothing is downloaded; load it once online with "
                            f"datasets.load_dataset, save it with save_to_disk and pass hf:DIR, or pass a folder of "
                            f"parquet files ({'; '.join(tried)})")  # fmt: skip


class _NotCached(Exception):
    pass


def _cache_root(root: Path | None) -> Path:
    if root is not None:
        return root
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def _snapshot(repo: str) -> Path | None:
    """The newest Hub snapshot of dataset `repo` in the hub cache, if any (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # not cached, a malformed repo id: there is no snapshot to read
        return None


def _load_dataset(ds, path: str, config: str | None, split: str, root: Path | None, where: str):
    try:
        return ds.load_dataset(path, config, split=split, cache_dir=str(root) if root else None)
    except ValueError as e:
        if "split" in str(e).lower():
            raise DiffdiscError(f"{where}: {e}") from None
        raise _NotCached(f"{path}{f' (config {config})' if config else ''}: {e}") from None
    except (ConnectionError, FileNotFoundError, OSError) as e:
        raise _NotCached(f"{path}{f' (config {config})' if config else ''}: {type(e).__name__}") from None
    except Exception as e:  # datasets' own errors (DatasetNotFoundError, EmptyDatasetError, ...): one line
        if type(e).__module__.startswith("datasets") or type(e).__module__.startswith("huggingface_hub"):
            raise _NotCached(f"{path}{f' (config {config})' if config else ''}: {type(e).__name__}") from None
        raise


def detect_columns(features, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str]:
    """The image and label columns: given, else the only Image / ClassLabel feature (or the ClassLabel "label")."""
    import datasets

    cols = dict(features)
    shown = ", ".join(f"{k} ({type(v).__name__})" for k, v in cols.items())
    for what, given in (("image", image_column), ("label", label_column)):
        if given is not None and given not in cols:
            raise DiffdiscError(f"{where}: no column {given!r} for the {what}s; it has {shown}")
    if image_column is None:
        images = [k for k, v in cols.items() if isinstance(v, datasets.Image)]
        if len(images) != 1:
            raise DiffdiscError(f"{where}: {'no' if not images else 'several'} Image columns ({shown}); "
                                "name it with --image-column")  # fmt: skip
        image_column = images[0]
    elif not isinstance(cols[image_column], datasets.Image):
        raise DiffdiscError(f"{where}: column {image_column!r} is {type(cols[image_column]).__name__}, not Image")
    if label_column is None:
        labels = [k for k, v in cols.items() if isinstance(v, datasets.ClassLabel)]
        if len(labels) > 1 and "label" in labels:
            labels = ["label"]
        if len(labels) != 1:
            plain = [k for k in ("label", "labels") if k in cols]
            if not labels and plain:
                labels = plain[:1]
            else:
                raise DiffdiscError(f"{where}: {'no' if not labels else 'several'} ClassLabel columns ({shown}); "
                                    "name the label column with --label-column")  # fmt: skip
        label_column = labels[0]
    return image_column, label_column


def _class_names(feature, values: list, where: str, column: str) -> tuple[list[str], list[int]]:
    """Class names and integer targets from a label column (ClassLabel, strings, or plain integers)."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return [str(n) for n in feature.names], [int(v) for v in values]
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        return names, [index[v] for v in values]
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        log.warning("%s: label column %r has no class names (not a ClassLabel): classes are named 0..%d", where,
                    column, max(values, default=0))  # fmt: skip
        return [str(i) for i in range(max(values, default=0) + 1)], [int(v) for v in values]
    raise DiffdiscError(f"{where}: label column {column!r} holds neither class ids nor names")


class _Rows:
    """A Dataset's image column as clip_benchmark-style (image, target) items, decoded one at a time."""

    def __init__(self, dataset, image_column: str, targets: list[int]):
        self.dataset, self.column, self.targets = dataset.select_columns([image_column]), image_column, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.dataset[int(i)][self.column], self.targets[i]


def open_hf(spec: str, root: str | Path | None = None, split: str | None = "test", templates: str | None = None,
            image_column: str | None = None, label_column: str | None = None):  # fmt: skip
    """`hf:NAME[/CONFIG]` (or `hf:DIR`) -> (dataset, class names, templates), as `open_benchmark` returns them.

    `root`: the `datasets` cache_dir to read NAME from (default: the user's cache). `templates`: a template set
    (`benchmark_templates`); None gives clip_benchmark's templates when NAME's last part is a clip_benchmark
    dataset (cifar10, ...), else none (the model's own prompt)."""
    name, spec_split, opts = parse_spec(spec)
    split = split or spec_split or "test"
    opts = {"image": image_column or opts.get("image"), "label": label_column or opts.get("label")}
    image_column, label_column = opts["image"], opts["label"]
    where = f"hf:{name} ({split})"
    root_path = Path(root).expanduser() if root else None
    data, folder = _load(name, split, root_path)
    image_column, label_column = detect_columns(data.features, image_column, label_column, where)
    values = list(data[label_column])
    classes, targets = _class_names(data.features[label_column], values, where, label_column)
    if not targets:
        raise DiffdiscError(f"{where}: no rows")
    if not 0 <= min(targets) <= max(targets) < len(classes):
        raise DiffdiscError(f"{where}: a label lies outside its {len(classes)} classes (-1: unlabelled rows?)")
    base = Path(name).name.lower().replace("-", "_") if not Path(name).is_dir() else ""
    if templates is None:
        tpl = benchmark_templates(base) if base in BENCHMARKS else ()
    elif templates in ("clip_benchmark", "li"):
        tpl = benchmark_templates(base if base in BENCHMARKS else "imagenet1k", templates)
    else:
        tpl = resolve_templates(templates)
    # the run's "data" identity: one per dataset and split, so weights fitted on train are not taken for test
    own = Path(name).expanduser().is_dir() or "snapshots" in folder.parts
    folder = (folder if own else folder / name.replace("/", "___")) / split
    width = len(str(len(targets) - 1))
    ids = [f"{split}/{i:0{width}d}" for i in range(len(targets))]
    items = [Item(k, folder / k, classes[y]) for k, y in zip(ids, targets, strict=True)]
    given = {k: v for k, v in (("image", opts.get("image") or None), ("label", opts.get("label") or None)) if v}
    label = f"hf:{name}" + ("?" + "&".join(f"{k}={v}" for k, v in given.items()) if given else "")
    out = BenchmarkDataset(folder, items, classes, name=label, split=split, targets=targets, templates=tuple(tpl),
                           source=_Rows(data, image_column, targets), _index={k: i for i, k in enumerate(ids)})  # fmt: skip
    out.columns = {"image": image_column, "label": label_column}
    return out, list(classes), tuple(tpl)


def open_hf_dataset(spec: str, labels_csv=None):
    """`--data hf:...` for the commands that take one data value (features, timesteps fit): the dataset alone."""
    if labels_csv is not None:
        raise DiffdiscError(f"{spec}: labels come from the dataset's label column, not a --labels CSV")
    return open_hf(spec, split=None)[0]
