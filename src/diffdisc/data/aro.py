"""ARO (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words") in the files its
repository (mertyg/vision-language-models-are-bows, `dataset_zoo/aro_datasets.py`) reads, scored as it reports.

- VG-Relation / VG-Attribution: ROOT/visual_genome_{relation,attribution}.json and ROOT/images/ (the extracted
  vgr_vga_images.zip). Each item is one image cropped to its box (`bbox_x/y/w/h`, as ARO crops) and two captions,
  the true one and its relation / attribute swap. ARO reports macro accuracy: per relation (its notebook drops
  the relations whose swap can stay true, `SYMMETRIC_RELATIONS`) and per attribute pair with at least 25 items
  (`evaluate_scores`). Its options are [false, true] under argmax, so a tie counts as wrong.
- COCO-Order / Flickr30k-Order: BLIP's Karpathy files (ROOT/coco_karpathy_<split>.json, ROOT/flickr30k_<split>.json)
  and the images they name under ROOT. Every caption becomes a test case: the caption (`pre_caption`, 30 words)
  against four word-order perturbations (nouns and adjectives shuffled, everything else shuffled, words shuffled
  within trigrams, trigrams shuffled). ARO draws them unseeded at load time; here they are seeded per test case
  (`perturb_seed`), so every run scores the same captions. The noun/adjective shuffles need part-of-speech tags
  from spaCy's en_core_web_sm, as ARO's do (trigram shuffles use the same tokens; ARO tokenises those with NLTK,
  which splits ordinary captions the same way). The true caption is option 0 under argmax, so a perturbation
  identical to it ties in its favour, as in ARO; precision@1 is the metric.

Nothing is downloaded: ARO's loaders call gdown / download_url when a file is missing; here that is a one-line
error naming the file. The crops are written once as PNGs (`data.derived`), into `crops_dir`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DiffdiscError
from ..jsonfile import check_strings
from ..scoring.match_metrics import bootstrap_ci
from .benchmark_files import image_file, read_annotation
from .derived import derived_png, safe_name
from .folders import stratified_subset
from .groups import Group

ARO_TASKS = ("vg_relation", "vg_attribution", "coco_order", "flickr30k_order")
ARO_BENCHMARKS = tuple(f"aro/{t}" for t in ARO_TASKS)
VG_FILES = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
ORDER_FILES = {"coco_order": "coco_karpathy_{split}.json", "flickr30k_order": "flickr30k_{split}.json"}
ORDER_IMAGES = {"coco_order": "the COCO 2014 images its 'image' fields name (val2014/COCO_val2014_*.jpg)",
                "flickr30k_order": "the Flickr30k images its 'image' fields name (flickr30k-images/*.jpg)"}  # fmt: skip
ORDER_SPLITS = ("test", "val")
PERTURBATIONS = ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams", "shuffle_trigrams")
MIN_ATTRIBUTE_COUNT = 25  # VG_Attribution.evaluate_scores drops attribute pairs with fewer items
# the relations ARO's notebook ("Replicate ARO! VG-Relation, VG-Attribution") leaves out of the macro accuracy
SYMMETRIC_RELATIONS = frozenset((
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing", "cleaning",
    "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging", "draped over",
    "drinking", "drinking from", "driving", "driving down", "driving on", "eating from", "eating in", "enclosing",
    "exiting", "facing", "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off", "hanging over",
    "higher than", "holding onto", "hugging", "in between", "jumping off", "jumping on", "jumping over", "kept in",
    "larger than", "leading", "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of", "making", "mixed with",
    "mounted on", "moving", "on the back of", "on the edge of", "on the front of", "on the other side of",
    "opening", "painted on", "parked at", "parked beside", "parked by", "parked in", "parked in front of",
    "parked near", "parked next to", "perched on", "petting", "piled on", "playing", "playing in", "playing on",
    "playing with", "pouring", "reaching for", "reading", "reflected on", "riding on", "running in", "running on",
    "running through", "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of",
    "sitting near", "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against", "standing around",
    "standing behind", "standing beside", "standing in front of", "standing near", "standing next to",
    "staring at", "stuck in", "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching",
    "traveling down", "traveling on", "tying", "typing on", "underneath", "wading in", "waiting for",
    "walking across", "walking by", "walking down", "walking next to", "walking through", "working in",
    "working on", "worn on", "wrapped around", "wrapped in", "by", "of", "near", "next to", "with", "beside",
    "on the side of", "around",
))  # fmt: skip
NOUN_TAGS = frozenset(("NN", "NNS", "NNP", "NNPS"))
ADJ_TAGS = frozenset(("JJ", "JJR", "JJS"))

Tagger = Callable[[str], list[tuple[str, str]]]  # text -> [(token, Penn Treebank tag)]


def layout(task: str, split: str = "test") -> str:
    """What ROOT must hold for `task` (said in every refusal)."""
    if task in VG_FILES:
        return (f"ROOT/{VG_FILES[task]} and ROOT/images/ (the extracted vgr_vga_images.zip), as ARO's "
                f"{'VG_Relation' if task == 'vg_relation' else 'VG_Attribution'} reads them")  # fmt: skip
    return f"ROOT/{ORDER_FILES[task].format(split=split)} (BLIP's Karpathy split) and {ORDER_IMAGES[task]} under ROOT"


def expected_files(task: str, root: Path, split: str = "test") -> list[Path]:
    """The paths a task reads before any image: what a suite checks to call a task's data missing."""
    task = _task(task)
    if task in VG_FILES:
        return [root / VG_FILES[task], root / "images"]
    return [root / ORDER_FILES[task].format(split=_order_split(task, split))]


def _task(name: str) -> str:
    task = str(name).strip().lower().removeprefix("aro/")
    if task not in ARO_TASKS:
        raise DiffdiscError(f"unknown ARO task {name!r}; known: {', '.join(ARO_BENCHMARKS)}")
    return task


def _order_split(task: str, split: str) -> str:
    if split not in ORDER_SPLITS:
        raise DiffdiscError(f"aro/{task} has no split {split!r}; it has {', '.join(ORDER_SPLITS)}")
    return split


def _read_list(path: Path, task: str, split: str) -> list:
    if not path.is_file():
        raise DiffdiscError(f"aro/{task}: nothing is downloaded, so ROOT must hold {layout(task, split)}; {path} is missing")
    return read_annotation(path, f"an ARO {task} file", "the annotation file", list, "a JSON list of items")


def pos_tagger() -> Tagger:
    """spaCy's en_core_web_sm (what ARO's shuffles tag with), or a one-line refusal saying how to install it."""
    how = "pip install spacy && python -m spacy download en_core_web_sm"
    try:
        import spacy
    except ImportError:
        raise DiffdiscError("the ARO order tasks shuffle nouns and adjectives by spaCy's part-of-speech tags, as "
                            f"ARO does: {how}") from None  # fmt: skip
    try:
        nlp = spacy.load("en_core_web_sm")
    except OSError:
        raise DiffdiscError(f"spaCy's en_core_web_sm is not installed (ARO's order tasks tag with it): {how}") from None
    return lambda text: [(t.text, t.tag_) for t in nlp(text)]


def pre_caption(caption: str, max_words: int = 30) -> str:
    """ARO's (BLIP's) caption cleaning: lower case, punctuation `.!"()*#:;~` to spaces, at most `max_words` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i : i + 3] for i in range(0, len(tokens), 3)]


def perturb(tagged: list[tuple[str, str]], rng: np.random.Generator) -> list[str]:
    """ARO's four word-order perturbations of one tagged caption, in its order (`PERTURBATIONS`), drawn from `rng`."""
    tokens = [t for t, _ in tagged]
    out = []
    for kinds in ((NOUN_TAGS, ADJ_TAGS), None):  # nouns and adjectives each among themselves; then all but those
        text = np.array(tokens, dtype=object)
        if kinds is not None:
            for tags in kinds:
                idx = [i for i, (_, g) in enumerate(tagged) if g in tags]
                text[idx] = rng.permutation(text[idx])
        else:
            idx = [i for i, (_, g) in enumerate(tagged) if g not in NOUN_TAGS | ADJ_TAGS]
            text[idx] = rng.permutation(text[idx])
        out.append(" ".join(text))
    tri = _trigrams(tokens)
    out.append(" ".join(" ".join(rng.permutation(np.array(t, dtype=object))) for t in tri))
    out.append(" ".join(" ".join(tri[i]) for i in rng.permutation(len(tri))))
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _vg_item(item, n: int, where: str, task: str) -> tuple[str, tuple, tuple[str, str], str]:
    """(image_path, box, (true, false) captions, type) of one VG item, or a one-line refusal."""
    if not isinstance(item, dict):
        raise DiffdiscError(f"{where}: item {n} is not a JSON object")
    try:
        box = tuple(item[k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        fields = {k: item[k] for k in ("image_path", "true_caption", "false_caption")}
        kind = item["relation_name"] if task == "vg_relation" else item["attributes"]
    except KeyError as e:
        raise DiffdiscError(f"{where}: item {n} lacks {e.args[0]!r} (an ARO {task} item has image_path, bbox_x/y/w/h, "
                            f"true_caption, false_caption, {'relation_name' if task == 'vg_relation' else 'attributes'})") from None  # fmt: skip
    check_strings(f"{where}: item {n}", fields)
    if not all(_number(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise DiffdiscError(f"{where}: item {n} has no usable box (bbox_x/y/w/h numbers, w and h > 0): {list(box)}")
    if task == "vg_relation":
        check_strings(f"{where}: item {n}", {"relation_name": kind})
    elif not (isinstance(kind, list) and len(kind) == 2 and all(isinstance(a, str) and a.strip() for a in kind)):
        raise DiffdiscError(f"{where}: item {n}: attributes must be a list of two strings, got {kind!r}")
    else:
        kind = f"{kind[0]}_{kind[1]}"  # ARO's type key
    return fields["image_path"], box, (fields["true_caption"], fields["false_caption"]), kind


def _crop(src: Path, box: tuple, where: str):
    """ARO's crop: the RGB image cut to (x, y, x + w, y + h) (PIL pads outside the image with black)."""

    def make():
        try:
            with Image.open(src) as im:
                x, y, w, h = box
                return im.convert("RGB").crop((x, y, x + w, y + h))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise DiffdiscError(f"{where}: cannot read image {src}: {e}") from None

    return make


def open_aro(name: str, root: str | Path, split: str = "test", *, limit: int | None = None, subset_seed: int = 0,
             crops_dir: str | Path | None = None, perturb_seed: int = 0, max_words: int = 30,
             tagger: Tagger | None = None) -> list[Group]:  # fmt: skip
    """One ARO task as groups of one image and its captions (the true one first).

    `limit`: a seeded subset (`subset_seed`; stratified over relation / attribute types for VG, so every type
    keeps items). `crops_dir`: where VG crops go (default ROOT/diffdisc-crops/<task>). `tagger`: a part-of-speech
    tagger for the order tasks (default spaCy's en_core_web_sm, `pos_tagger`).
    """
    task = _task(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DiffdiscError(f"aro/{task}: nothing is downloaded, so ROOT must hold {layout(task, split)}; {root} does not exist")
    if task in VG_FILES:
        if split != "test":
            raise DiffdiscError(f"aro/{task} has no split {split!r}; it has test (one file)")
        ann = root / VG_FILES[task]
        images = root / "images"
        items = _read_list(ann, task, split)
        if not images.is_dir():
            raise DiffdiscError(f"aro/{task}: ROOT must hold {layout(task)}; {images} is missing")
        rows = [_vg_item(it, n, str(ann), task) for n, it in enumerate(items)]
        kinds = sorted({k for *_, k in rows})
        index = {k: i for i, k in enumerate(kinds)}
        keep = stratified_subset([index[k] for *_, k in rows], limit, subset_seed)
        crops = Path(crops_dir).expanduser() if crops_dir else root / "diffdisc-crops" / task
        groups = []
        for n in keep:
            path, box, captions, kind = rows[n]
            src = image_file(images / path, f"aro/{task}", f"item {n}", layout(task))
            crop = derived_png(crops, safe_name(path, *box), _crop(src, box, f"{ann}: item {n}"), f"aro/{task}")
            groups.append(Group(f"{task}-{n}", (crop,), captions, (kind,)))
    else:
        split = _order_split(task, split)
        ann = root / ORDER_FILES[task].format(split=split)
        cases = []
        for a, entry in enumerate(_read_list(ann, task, split)):
            if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
                raise DiffdiscError(f"{ann}: entry {a} needs 'image' and 'caption' (BLIP's Karpathy format)")
            caps = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
            check_strings(f"{ann}: entry {a}", {"image": entry["image"], **{f"caption[{k}]": c for k, c in enumerate(caps)}})
            cases += [(a, k, entry["image"], c) for k, c in enumerate(caps)]
        keep = stratified_subset([None] * len(cases), limit, subset_seed)
        tag = tagger or pos_tagger()
        groups = []
        for i in keep:
            a, k, image, caption = cases[i]
            src = image_file(root / image, f"aro/{task}", f"entry {a}", layout(task, split))
            true = pre_caption(caption, max_words)
            if not true:
                raise DiffdiscError(f"{ann}: entry {a}: caption {k} is empty once cleaned as ARO cleans it")
            rng = np.random.default_rng([perturb_seed, a, k])
            options = [pre_caption(p, max_words) or true for p in perturb(tag(caption), rng)]
            groups.append(Group(f"{task}-{a}-{k}", (src,), (true, *options), ()))
    if not groups:
        raise DiffdiscError(f"{ann}: no items")
    return groups


def aro_correct(task: str, mat: np.ndarray) -> bool:
    """One test case as ARO scores it (S lower = better; the true caption is column 0): VG ties are wrong (its
    options are [false, true] under argmax), order-task ties right (the true caption is argmax's first)."""
    m = np.asarray(mat, dtype=np.float64).reshape(-1)
    others = m[1:].min()
    return bool(m[0] < others) if _task(task) in VG_FILES else bool(m[0] <= others)


def aro_metrics(task: str, mats: list[np.ndarray], tags: list[tuple[str, ...]]) -> dict:
    """ARO's reported number for `task` with a 95 % bootstrap interval, plus the plain accuracy.

    VG-Relation: macro accuracy over relations not in `SYMMETRIC_RELATIONS`; VG-Attribution: over attribute pairs
    with at least `MIN_ATTRIBUTE_COUNT` scored items (on a --limit subset, counted among those); order tasks:
    precision@1. The macro interval resamples items within each type (the types stay those reported)."""
    task = _task(task)
    correct = np.array([aro_correct(task, m) for m in mats], dtype=np.float64)
    lo, hi = bootstrap_ci(correct)
    out = {"n": len(correct), "accuracy": {"mean": float(correct.mean()) if len(correct) else float("nan"), "ci95": [lo, hi]}}
    if task not in VG_FILES:
        out["headline"] = "precision@1"
        out["precision@1"] = out["accuracy"]
        return out
    kinds = [t[0] if t else "" for t in tags]
    by: dict[str, list[float]] = {}
    for k, c in zip(kinds, correct, strict=True):
        by.setdefault(k, []).append(c)
    if task == "vg_relation":
        kept = {k: v for k, v in by.items() if k not in SYMMETRIC_RELATIONS}
        rule = "relations not in ARO's symmetric list"
    else:
        kept = {k: v for k, v in by.items() if len(v) >= MIN_ATTRIBUTE_COUNT}
        rule = f"attribute pairs with at least {MIN_ATTRIBUTE_COUNT} items"
    out["headline"] = "macro accuracy"
    out["types"] = {"kept": len(kept), "all": len(by), "rule": rule}
    if not kept:
        out["macro accuracy"] = {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}
        out["note"] = f"no {rule} among the {len(correct)} items scored: no macro accuracy"
        return out
    rng = np.random.default_rng(0)
    boots = np.mean([np.asarray(v)[rng.integers(0, len(v), (2000, len(v)))].mean(1) for v in kept.values()], axis=0)
    out["macro accuracy"] = {"mean": float(np.mean([np.mean(v) for v in kept.values()])),
                             "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}  # fmt: skip
    return out
