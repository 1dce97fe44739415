"""Compositional matching benchmarks in their published layouts: Winoground as Hugging Face ships it, SugarCrepe
as clip_benchmark reads it; and Winoground's per-tag breakdown of a match run.

Winoground (facebook/winoground on the Hub) is `data/examples.jsonl` (captions, image names, tags) and
`data/images.zip` (`images/ex_<i>_img_<j>.png`). `match` reads images from files, so the zip is unpacked once
into `data/images/` beside it, exactly what `unzip images.zip` makes (members by file name only, never a path
out of the folder), or into `extract_to`. An unpacked `images/` is used as it is.

Each example's `collapsed_tag` (Object, Relation or Both: what the two captions swap) is one of its group's
tags, so `tag_breakdown` gives text / image / group scores per tag from a match run's per-group score matrices.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import DiffdiscError
from ..jsonfile import check_strings, jsonl_rows
from .benchmark_files import image_file, read_annotation, require
from .compositional import COMPOSITIONAL_BENCHMARKS, canonical, open_compositional
from .groups import Group
from .images import IMAGE_SUFFIXES

COLLAPSED_TAGS = ("Object", "Relation", "Both")
SUGAR_CREPE_TASKS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
MATCH_BENCHMARKS = ("winoground", *(f"sugar_crepe/{t}" for t in SUGAR_CREPE_TASKS), *COMPOSITIONAL_BENCHMARKS)
_LAYOUT = "data/examples.jsonl and data/images.zip (or an unpacked data/images/), as the Hugging Face dataset facebook/winoground ships them"


def _data_dir(root: Path) -> Path:
    for d in (root / "data", root):
        if (d / "examples.jsonl").is_file():
            return d
    if not root.is_dir():
        raise DiffdiscError(f"winoground: nothing is downloaded, so ROOT must hold {_LAYOUT}; {root} does not exist")
    raise DiffdiscError(f"winoground: ROOT must hold {_LAYOUT}; {root / 'data' / 'examples.jsonl'} is missing")


def _image_names(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _unzip_images(archive: Path, dest: Path) -> None:
    """Image members of `archive` into `dest`, by file name only (a member's folders, `..` and absolute paths
    never reach the disk), through a temporary folder renamed into place: a killed unpack leaves no half folder."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".images-", dir=dest.parent))
    except OSError as e:
        raise DiffdiscError(f"winoground: cannot unpack {archive} into {dest.parent} ({e.strerror or e}); "
                            f"unzip it elsewhere and pass that folder's parent as extract_to") from None  # fmt: skip
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                name = Path(info.filename).name
                if info.is_dir() or name.startswith(".") or "__MACOSX" in info.filename:
                    continue
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    with z.open(info) as src, open(tmp / name, "wb") as out:
                        shutil.copyfileobj(src, out)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # another process unpacked it first: theirs is used
                raise
    except (zipfile.BadZipFile, OSError) as e:
        raise DiffdiscError(f"winoground: cannot unpack {archive} ({e}); unzip it yourself into {dest}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_winoground(root: str | Path, extract_to: str | Path | None = None) -> list[Group]:
    """Winoground's 400 examples as 2x2 groups (image i matches caption i), tags (tag, collapsed_tag[,
    secondary_tag]) on each. `root`: the dataset's folder (with data/) or its data/ folder itself."""
    data = _data_dir(Path(root).expanduser())
    images = data / "images"
    if not (images.is_dir() and any(images.iterdir())):
        archive = data / "images.zip"
        if not archive.is_file():
            raise DiffdiscError(f"winoground: ROOT must hold {_LAYOUT}; neither {images} nor {archive} exists")
        images = Path(extract_to).expanduser() / "images" if extract_to else images
        if not (images.is_dir() and any(images.iterdir())):
            _unzip_images(archive, images)
    found = _image_names(images)
    groups = []
    for n, r in jsonl_rows(data / "examples.jsonl"):
        try:
            names, captions = (r["image_0"], r["image_1"]), (r["caption_0"], r["caption_1"])
        except (KeyError, TypeError) as e:
            raise DiffdiscError(f"{data / 'examples.jsonl'}:{n}: not a Winoground example ({e!r})") from None
        where = f"{data / 'examples.jsonl'}:{n}"
        check_strings(where, dict(zip(("image_0", "image_1", "caption_0", "caption_1"), (*names, *captions), strict=True)))
        missing = [k for k in names if str(k) not in found]
        if missing:
            raise DiffdiscError(f"winoground: image {missing[0]!r} of example {r.get('id', n)} is not in {images}")
        tags = tuple(str(r[k]) for k in ("tag", "collapsed_tag", "secondary_tag") if r.get(k))
        groups.append(Group(str(r.get("id", n - 1)), tuple(found[str(k)] for k in names), captions, tags))
    if not groups:
        raise DiffdiscError(f"{data / 'examples.jsonl'}: no examples")
    return groups


def open_sugar_crepe(root: str | Path, task: str) -> list[Group]:
    """SugarCrepe's `task` (swap_att, ...) as 1 image x 2 caption groups (the true caption first), in the layout
    clip_benchmark reads: ROOT/<task>.json and the COCO val2017 images in ROOT/val2017/."""
    task = task.removeprefix("sugar_crepe/")
    layout = f"ROOT/{task}.json (from the SugarCrepe repository's data/) and ROOT/val2017/*.jpg (COCO val2017)"
    if task not in SUGAR_CREPE_TASKS:
        raise DiffdiscError(f"unknown SugarCrepe task {task!r}; known: {', '.join(SUGAR_CREPE_TASKS)}")
    root = Path(root).expanduser()
    ann, images = root / f"{task}.json", root / "val2017"
    require(f"sugar_crepe/{task}", layout, root, ann, images)
    # read as clip_benchmark's SugarCrepe dataset reads it (json.load; entries in file order), but checked
    data = read_annotation(ann, "a SugarCrepe annotation file", "the annotation file", dict, "a JSON object of entries")
    groups = []
    for key, a in data.items():
        try:
            fields = {"filename": a["filename"], "caption": a["caption"], "negative_caption": a["negative_caption"]}
        except (KeyError, TypeError):
            raise DiffdiscError(f"{ann}: entry {key!r} lacks filename / caption / negative_caption") from None
        check_strings(f"{ann}: entry {key!r}", fields)
        path = image_file(images / fields["filename"], f"sugar_crepe/{task}", f"entry {key!r}", layout)
        captions = fields["caption"], fields["negative_caption"]
        groups.append(Group(f"{task}-{key}", (path,), captions, (task,)))
    return groups


def open_match_benchmark(name: str, root: str | Path, **kwargs) -> list[Group]:
    """A matching benchmark by name: "winoground" or "sugar_crepe/<task>" -> the groups `match` scores."""
    key = str(name).strip().lower()
    if key == "winoground":
        return open_winoground(root, **kwargs)
    if key.startswith("sugar_crepe"):
        return open_sugar_crepe(root, key.partition("/")[2] or "?")
    if canonical(key) in COMPOSITIONAL_BENCHMARKS:  # ARO, EqBen, CLEVR (data.compositional)
        return open_compositional(key, root, **kwargs)
    raise DiffdiscError(f"unknown matching benchmark {name!r}; known: {', '.join(MATCH_BENCHMARKS)}")


def tag_breakdown(records: list[dict] | str | Path, tags: tuple[str, ...] | None = COLLAPSED_TAGS,
                  groups: list[Group] | None = None) -> dict[str, dict]:  # fmt: skip
    """Text / image / group scores (with bootstrap intervals, as `match_metrics` gives them) per tag, plus "all".

    `records`: what `match` returns, or a match run directory; a group counts under each of `tags` it carries
    (None: every tag seen). `groups` supplies the tags when the records lack them (runs made before tags were
    stored), keyed by group id. A tag no group carries is left out.
    """
    import numpy as np

    from ..runs.store import read_records
    from ..scoring.match_metrics import match_metrics

    if isinstance(records, (str, Path)):
        shards = Path(records) / "shards"
        if not shards.is_dir():
            raise DiffdiscError(f"{records} is not a match run directory (no shards/)")
        records = list(read_records(shards))
    by_id = {g.id: g.tags for g in groups or ()}
    per: dict[str, list] = {}
    mats = []
    for r in records:
        m = np.asarray(r["scores"], dtype=np.float64)
        mats.append(m)
        for t in dict.fromkeys(r.get("tags") or by_id.get(str(r.get("image_id")), ())):
            if tags is None or t in tags:
                per.setdefault(t, []).append(m)
    order = list(tags) if tags is not None else sorted(per)
    return {"all": match_metrics(mats), **{t: match_metrics(per[t]) for t in order if t in per}}
