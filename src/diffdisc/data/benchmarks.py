"""The standard benchmarks by name, read from disk through clip_benchmark's dataset builder.

`open_benchmark("cifar10", root)` gives what `classify` scores (an `ImageDataset`), clip_benchmark's English
class names and its zero-shot templates (or Li et al.'s single prompt per dataset, `templates="li"`), so a
diffusion row and a CLIP row of one table saw the same images, classes and prompts. Nothing is downloaded:
clip_benchmark calls wget / kaggle / gdown for some datasets whose root is missing, even with
`download=False`, so the files torchvision reads are checked first and a missing one is a `DiffdiscError`
that says what to put where.

Images are read lazily, like an image folder: datasets of files (ImageNet, Pets, Food-101, ...) list their
paths up front; datasets held in arrays (CIFAR, STL-10, MNIST) are read from the torch dataset clip_benchmark
built (`BenchmarkDataset.open`). Labels are the dataset's own integer targets, not names matched again:
ImageNet's class names, as clip_benchmark (and Li et al.) have them, hold "missile" and "sunglasses" twice.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DiffdiscError
from .folders import ImageDataset, Item
from .images import normalise_mode, open_image
from .templates import resolve_templates


@dataclass(frozen=True)
class Benchmark:
    """One dataset clip_benchmark builds: `name` is its `dataset_name` (ours too), `layout` what ROOT holds in
    torchvision's (or clip_benchmark's) layout, `needs(split)` the paths under ROOT checked before building,
    `li` Li et al.'s prompt for it (None: they have none)."""

    name: str
    layout: str
    needs: Callable[[str], list[str]]
    splits: tuple[str, ...] = ("train", "test")
    li: str | None = None
    wnid_folders: bool = False  # class folders named by WordNet id, labels mapped through the 1,000 ImageNet ids


def _cifar(folder: str, train: list[str], test: str, meta: str) -> Callable[[str], list[str]]:
    return lambda split: [f"{folder}/{f}" for f in (*train, test, meta)]  # torchvision checks all, either split


_IMAGENET_FOLDER = "one folder per WordNet id (n01440764/, ...) holding its images"

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("cifar10", "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta: the extracted "
              "cifar-10-python.tar.gz)", _cifar("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                                                "test_batch", "batches.meta"), li="a blurry photo of a {}."),
    Benchmark("cifar100", "cifar-100-python/ (train, test, meta: the extracted cifar-100-python.tar.gz)",
              _cifar("cifar-100-python", ["train"], "test", "meta"), li="a blurry photo of a {}."),
    Benchmark("stl10", "stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, "
              "class_names.txt: the extracted stl10_binary.tar.gz)",
              lambda s: [f"stl10_binary/{f}" for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin",
                                                       "unlabeled_X.bin", "class_names.txt")],
              li="a photo of a {}."),
    Benchmark("mnist", "MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte, gunzipped)",
              lambda s: [f"MNIST/raw/{p}-{k}" for p in (("train",) if s == "train" else ("t10k",))
                         for k in ("images-idx3-ubyte", "labels-idx1-ubyte")],
              li="a photo of the number: '{}'."),
    Benchmark("pets", "oxford-iiit-pet/images/*.jpg and oxford-iiit-pet/annotations/{trainval,test}.txt (the "
              "extracted images.tar.gz and annotations.tar.gz)",
              lambda s: ["oxford-iiit-pet/images", f"oxford-iiit-pet/annotations/{s}.txt"],
              splits=("trainval", "test"), li="a photo of a {}, a type of pet."),
    Benchmark("flowers", "flowers-102/jpg/image_*.jpg, flowers-102/imagelabels.mat and flowers-102/setid.mat",
              lambda s: ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"],
              splits=("train", "val", "test"), li="a photo of a {}, a type of flower."),
    Benchmark("food101", "food-101/images/<class>/*.jpg and food-101/meta/{train,test}.json (the extracted "
              "food-101.tar.gz)", lambda s: ["food-101/images", f"food-101/meta/{s}.json"],
              li="a photo of {}, a type of food."),
    Benchmark("fgvc_aircraft", "fgvc-aircraft-2013b/data/images/*.jpg, fgvc-aircraft-2013b/data/variants.txt and "
              "images_variant_<split>.txt (the extracted fgvc-aircraft-2013b.tar.gz)",
              lambda s: ["fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/variants.txt",
                         f"fgvc-aircraft-2013b/data/images_variant_{s}.txt"],
              splits=("train", "val", "trainval", "test"), li="a photo of a {}, a type of aircraft."),
    Benchmark("cars", "stanford_cars/devkit/cars_meta.mat, stanford_cars/cars_test/ and "
              "stanford_cars/cars_test_annos_withlabels.mat (cars_train/ and devkit/cars_train_annos.mat for train)",
              lambda s: ["stanford_cars/devkit/cars_meta.mat"] + (
                  ["stanford_cars/cars_train", "stanford_cars/devkit/cars_train_annos.mat"] if s == "train"
                  else ["stanford_cars/cars_test", "stanford_cars/cars_test_annos_withlabels.mat"])),
    Benchmark("dtd", "dtd/dtd/images/<class>/*.jpg and dtd/dtd/labels/<split>1.txt (dtd-r1.0.1.tar.gz extracted "
              "into ROOT/dtd)", lambda s: ["dtd/dtd/images", f"dtd/dtd/labels/{s}1.txt"],
              splits=("train", "val", "test")),
    Benchmark("sun397", "SUN397/ClassName.txt and SUN397/<letter>/<class>/sun_*.jpg (the extracted SUN397.tar.gz)",
              lambda s: ["SUN397/ClassName.txt"], splits=("test",)),
    Benchmark("eurosat", "eurosat/2750/<class>/*.jpg (the extracted EuroSAT.zip)", lambda s: ["eurosat/2750"],
              splits=("test",)),
    Benchmark("gtsrb", "gtsrb/GTSRB/Final_Test/Images/*.ppm and gtsrb/GT-final_test.csv (gtsrb/GTSRB/Training/ "
              "for train)", lambda s: ["gtsrb/GTSRB/Training"] if s == "train"
              else ["gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"]),
    Benchmark("country211", "country211/<split>/<country code>/*.jpg (the extracted country211.tgz)",
              lambda s: [f"country211/{s}"], splits=("train", "valid", "test")),
    Benchmark("renderedsst2", "rendered-sst2/<split>/{negative,positive}/*.png (the extracted "
              "rendered-sst2.tgz)", lambda s: [f"rendered-sst2/{s}"], splits=("train", "val", "test")),
    Benchmark("fer2013", "train/ and test/, each with one folder per emotion (angry/, disgust/, ...) of *.jpg "
              "(the Kaggle msambare/fer2013 archive extracted)", lambda s: [s]),
    Benchmark("imagenet1k", f"val/ (train/ for train) with {_IMAGENET_FOLDER}, or ILSVRC2012_devkit_t12.tar.gz "
              "and ILSVRC2012_img_val.tar, which torchvision's ImageNet unpacks into val/ once",
              lambda s: [], li="a photo of a {}.", wnid_folders=True),
    Benchmark("imagenetv2", "ImageNetV2-matched-frequency/<0..999>/*.jpeg (imagenetv2-matched-frequency.tar.gz "
              "extracted; its folder imagenetv2-matched-frequency-format-val renamed so, as clip_benchmark does)",
              lambda s: [], splits=("test",), li="a photo of a {}."),
    Benchmark("imagenet_sketch", f"{_IMAGENET_FOLDER} (the sketch/ folder of ImageNet-Sketch.zip)",
              lambda s: [], splits=("test",), wnid_folders=True),
    Benchmark("imagenet-a", f"{_IMAGENET_FOLDER}, all 200 (the extracted imagenet-a.tar)", lambda s: [],
              splits=("test",)),
    Benchmark("imagenet-r", f"{_IMAGENET_FOLDER}, all 200 (the extracted imagenet-r.tar)", lambda s: [],
              splits=("test",)),
    Benchmark("imagenet-o", f"{_IMAGENET_FOLDER}, all 200 (the extracted imagenet-o.tar)", lambda s: [],
              splits=("test",)),
    Benchmark("objectnet", "objectnet-1.0/images/<folder>/*.png and, in ROOT itself, the mapping files "
              "folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json, pytorch_to_imagenet_2012_id.json "
              "and imagenet_to_label_2012_v2 (objectnet-1.0.zip extracted; its mappings/ copied into ROOT)",
              lambda s: ["objectnet-1.0/images", "folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                         "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2"],
              splits=("test",), li="a photo of a {}."),
)}  # fmt: skip

# names people type for the same datasets
ALIASES = {"oxford_pets": "pets", "oxford-iiit-pet": "pets", "flowers102": "flowers", "oxford_flowers": "flowers",
           "food": "food101", "food-101": "food101", "aircraft": "fgvc_aircraft", "imagenet": "imagenet1k",
           "stanford_cars": "cars", "imagenet-sketch": "imagenet_sketch", "imagenet_a": "imagenet-a",
           "imagenet_r": "imagenet-r", "imagenet_o": "imagenet-o"}  # fmt: skip

# Li et al.'s single prompt per dataset, from the Diffusion Classifier's prompts/<dataset>_prompts.csv (CIFAR-100:
# cifar100_blurry_prompts.csv); ImageNetV2, ImageNet's 1,000 classes again, gets their ImageNet prompt. Their pets
# CSV also appends the species ("a photo of a Abyssinian cat, a type of pet."); with clip_benchmark's class names
# the template is the one in their templates.json. Their "a" stays "a" before vowels: those are the prompts they
# scored. Only the template is theirs: class names stay clip_benchmark's (CIFAR-100's keep its underscores).
LI_TEMPLATES: dict[str, tuple[str, ...]] = {b.name: (b.li,) for b in BENCHMARKS.values() if b.li}

CLIP_BENCHMARK = "clip_benchmark"  # the template set clip_benchmark's own evaluation uses (its default)
TEMPLATE_SETS = (CLIP_BENCHMARK, "li")


def benchmark_names() -> list[str]:
    return sorted(BENCHMARKS)


def resolve_benchmark(name: str) -> Benchmark:
    """Our (or clip_benchmark's) name -> its `Benchmark`; an unknown name lists the known ones."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        from .winoground import MATCH_BENCHMARKS

        if key in MATCH_BENCHMARKS or key.startswith("sugar_crepe"):
            raise DiffdiscError(f"{name} is an image-caption matching benchmark: use it with `match` "
                                f"(open_match_benchmark), not `classify`")  # fmt: skip
        raise DiffdiscError(f"unknown dataset {name!r}; known: {', '.join(benchmark_names())}")
    return BENCHMARKS[key]


@dataclass
class BenchmarkDataset(ImageDataset):
    """An `ImageDataset` whose items come from a torch dataset clip_benchmark built; `targets` are its labels.

    `class_names` are clip_benchmark's (all of them: a 1,000-class run scores every class), `templates` the
    set chosen in `open_benchmark`. For datasets held in arrays, `source` is the torch dataset and `open`
    reads an item from it; for datasets of files `open` reads the file, exactly as an image folder does.
    """

    name: str = ""
    split: str = "test"
    targets: list[int] = field(default_factory=list)
    templates: tuple[str, ...] = ()
    source: object = None  # set for in-memory datasets only
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def open(self, item: Item) -> Image.Image:
        """The item's image, decoded and mode-normalised like `open_image` does for a file."""
        if self.source is None:
            return open_image(item.path)
        try:
            img = self.source[self._index[item.image_id]][0]
        except (KeyError, IndexError, OSError, ValueError) as e:
            raise DiffdiscError(f"cannot read image {item.image_id} of {self.name} in {self.root}: {e}") from None
        return normalise_mode(img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img)))

    def label_index(self, classes: list[str]) -> list[int | None]:
        """The dataset's own targets when scored against its own classes (names may repeat: ImageNet's do);
        against another class list, matched by name like an image folder."""
        if list(classes) == list(self.class_names):
            return list(self.targets)
        return super().label_index(classes)


def _split_for(b: Benchmark, split: str) -> str:
    if split not in b.splits and split == "train" and "trainval" in b.splits:
        return "trainval"  # Pets has no separate train split; its training images are trainval
    if split not in b.splits:
        raise DiffdiscError(f"{b.name} has no split {split!r}; it has {', '.join(b.splits)}")
    return split


def _check_layout(b: Benchmark, root: Path, split: str) -> None:
    where = f"{b.name}: nothing is downloaded, so ROOT must hold {b.layout}"
    if not root.is_dir():
        raise DiffdiscError(f"{where}; {root} does not exist")
    missing = [p for p in b.needs(split) if not (root / p).exists()]
    if missing:
        raise DiffdiscError(f"{where}; {root / missing[0]} is missing")


def _cb_defaults(dataset_name: str) -> tuple[list[str] | None, tuple[str, ...]]:
    """clip_benchmark's English class names and templates for `dataset_name`, from the files its builder reads
    (templates fall back to ImageNet's, as the builder's do)."""
    import clip_benchmark.datasets.builder as builder

    folder = Path(builder.__file__).parent
    names = json.loads((folder / "en_classnames.json").read_text(encoding="utf-8"))  # not the locale's
    templates = json.loads((folder / "en_zeroshot_classification_templates.json").read_text(encoding="utf-8"))
    return names.get(dataset_name), tuple(templates.get(dataset_name, templates["imagenet1k"]))


def _build(b: Benchmark, root: Path, split: str):
    """clip_benchmark's torch dataset (transform=None: PIL images), checked first so nothing is downloaded."""
    from clip_benchmark.datasets.builder import build_dataset

    name = b.name
    if name == "imagenetv2":
        return _ImageNetV2(root)
    _check_layout(b, root, split)
    if name == "imagenet1k":
        folder = root / ("train" if split == "train" else "val")
        archives = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar" if split == "train" else "ILSVRC2012_img_val.tar")
        if folder.is_dir():
            name = "imagenet1k-unverified"  # clip_benchmark's ImageFolder over ROOT/val: no devkit needed
        elif not all((root / a).is_file() for a in archives):
            raise DiffdiscError(f"{b.name}: nothing is downloaded, so ROOT must hold {b.layout}; {folder} is missing")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="split argument ignored")
            ds = build_dataset(dataset_name=name, root=str(root), transform=None, split=split, download=False)
    # user JSON torchvision reads (Food-101's meta, ObjectNet's mappings): not UTF-8 is a ValueError, nested too
    # deeply a RecursionError (a RuntimeError)
    except (RuntimeError, FileNotFoundError, AssertionError, OSError, KeyError, ValueError, ImportError) as e:
        raise DiffdiscError(f"{b.name}: {root} is not in the layout torchvision reads ({b.layout}): "
                            f"{type(e).__name__}: {e}") from None  # fmt: skip
    return ds


class _ImageNetV2:
    """ImageNetV2 (matched frequency) listed the way clip_benchmark's loader lists it (`**/*.jpeg`, the label
    its folder's number), without that loader: it downloads the archive unless all 10,000 images are there."""

    def __init__(self, root: Path):
        b = BENCHMARKS["imagenetv2"]
        folder = next((root / f for f in ("ImageNetV2-matched-frequency", "imagenetv2-matched-frequency-format-val")
                       if (root / f).is_dir()), None)  # fmt: skip
        if folder is None:
            _check_layout(b, root, "test")
            raise DiffdiscError(f"imagenetv2: nothing is downloaded, so ROOT must hold {b.layout}; "
                                f"{root / 'ImageNetV2-matched-frequency'} is missing")  # fmt: skip
        self.fnames = sorted(folder.glob("**/*.jpeg"))
        if any(not f.parent.name.isdigit() for f in self.fnames):
            bad = next(f for f in self.fnames if not f.parent.name.isdigit())
            raise DiffdiscError(f"imagenetv2: {bad.parent} is not a class folder 0..999 ({b.layout})")
        self.classes, self.templates = _cb_defaults("imagenet1k")


def _files_and_targets(ds, b: Benchmark) -> tuple[list[Path] | None, list[int]]:
    """Image paths (None for in-memory datasets) and integer targets, without decoding any image."""
    if isinstance(ds, _ImageNetV2):
        return list(ds.fnames), [int(f.parent.name) for f in ds.fnames]
    pairs = None
    if hasattr(ds, "samples"):  # ImageFolder, torchvision's ImageNet, ObjectNet, EuroSAT, Country211
        pairs = list(ds.samples)
        if not b.wnid_folders and not hasattr(ds, "label_map") and len(ds.class_to_idx) != len(ds.classes):
            raise DiffdiscError(f"{b.name}: found {len(ds.class_to_idx)} class folders, clip_benchmark's "
                                f"{b.name} has {len(ds.classes)} classes: put all of them ({b.layout})")  # fmt: skip
    elif hasattr(ds, "_samples"):  # StanfordCars, GTSRB, RenderedSST2
        pairs = list(ds._samples)
    else:
        files = getattr(ds, "_image_files", None) or getattr(ds, "_images", None)
        if files is not None and hasattr(ds, "_labels"):  # Pets, Food-101, Flowers-102, FGVC-Aircraft, DTD, SUN397
            pairs = list(zip(files, ds._labels, strict=True))
    if pairs is None:  # held in arrays: CIFAR, STL-10, MNIST
        targets = getattr(ds, "targets", None)
        targets = getattr(ds, "labels", None) if targets is None else targets
        if targets is None:
            raise DiffdiscError(f"{b.name}: clip_benchmark's dataset exposes neither files nor targets")
        return None, [int(t) for t in np.asarray(targets).reshape(-1)]
    paths = [Path(p) for p, _ in pairs]
    if hasattr(ds, "label_map"):  # ObjectNet: the label is its folder's, not ImageFolder's index
        targets = [ds.label_map[p.parent.name] for p in paths]
    elif b.wnid_folders:
        targets = _wnid_targets(ds, [t for _, t in pairs], b)
    else:
        targets = [int(t) for _, t in pairs]
    tt = getattr(ds, "target_transform", None)
    return paths, [int(tt(t)) for t in targets] if tt else targets


def _wnid_targets(ds, folder_targets: list[int], b: Benchmark) -> list[int]:
    """ImageFolder indices (over the folders present) -> indices into the 1,000 ImageNet classes: a val/ with
    some classes only still labels each image with its own class."""
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids

    index = {w: i for i, w in enumerate(all_imagenet_wordnet_ids)}
    by_folder = getattr(ds, "wnid_to_idx", None) or ds.class_to_idx
    wnid = {i: w for w, i in by_folder.items()}
    bad = sorted(w for w in by_folder if w not in index)
    if bad:
        raise DiffdiscError(f"{b.name}: folder {bad[0]!r} is not an ImageNet WordNet id ({b.layout})")
    return [index[wnid[t]] for t in folder_targets]


def benchmark_templates(b: Benchmark | str, template_set: str | None = None) -> tuple[str, ...]:
    """The prompts' templates for `b`: "clip_benchmark" (None; clip_benchmark's English zero-shot templates),
    "li" (Li et al.'s single prompt), or any of `resolve_templates`' specs (our sets, a literal with '{}')."""
    b = resolve_benchmark(b) if isinstance(b, str) else b
    if template_set in (None, CLIP_BENCHMARK):
        return tuple(t.replace("{c}", "{}") for t in _cb_defaults(b.name)[1])
    if template_set == "li":
        if b.name not in LI_TEMPLATES:
            raise DiffdiscError(f"Li et al. have no prompt for {b.name}; they have one for {', '.join(LI_TEMPLATES)}")
        return LI_TEMPLATES[b.name]
    return resolve_templates(template_set)


def open_benchmark(name: str, root: str | Path | None, split: str = "test", templates: str | None = None,
                   image_column: str | None = None, label_column: str | None = None
                   ) -> tuple[BenchmarkDataset, list[str], tuple[str, ...]]:  # fmt: skip
    """`name` at `root` -> (dataset, class names, templates), as clip_benchmark evaluates it.

    `hf:NAME[/CONFIG]` or `hf:DIR` is a Hugging Face dataset read offline (`data.hf.open_hf`: `root` is then its
    optional cache_dir; `image_column` / `label_column` override the detected columns).

    `split` is the dataset's own ("test" is ImageNet's val, as in clip_benchmark); `templates` a template set
    (see `benchmark_templates`). Image ids are paths relative to `root` for datasets of files, "<split>/<index>"
    for in-memory ones: stable keys for noise seeds and resuming.
    """
    if str(name).startswith("hf:"):
        from .hf import open_hf

        return open_hf(name, root, split, templates, image_column, label_column)
    b = resolve_benchmark(name)
    split = _split_for(b, split)
    tpl = benchmark_templates(b, templates)  # an unknown template set fails before any file is read
    root = Path(root).expanduser()
    ds = _build(b, root, split)
    classes = [str(c) for c in ds.classes]
    paths, targets = _files_and_targets(ds, b)
    if targets and not 0 <= min(targets) <= max(targets) < len(classes):
        raise DiffdiscError(f"{b.name}: a label lies outside its {len(classes)} classes ({b.layout})")
    if not targets:
        raise DiffdiscError(f"{b.name}: no images in {root} for split {split!r} ({b.layout})")
    if paths is None:
        width = len(str(len(targets) - 1))
        ids = [f"{split}/{i:0{width}d}" for i in range(len(targets))]
        items = [Item(k, root / k, classes[y]) for k, y in zip(ids, targets, strict=True)]
        out = BenchmarkDataset(root, items, classes, name=b.name, split=split, targets=targets, templates=tpl,
                               source=ds, _index={k: i for i, k in enumerate(ids)})  # fmt: skip
    else:
        items = [Item(_rel(p, root), p, classes[y]) for p, y in zip(paths, targets, strict=True)]
        out = BenchmarkDataset(root, items, classes, name=b.name, split=split, targets=targets, templates=tpl)
    return out, list(classes), tpl


def _rel(p: Path, root: Path) -> str:
    """The image id: the path below ROOT (torch datasets join ROOT as given, so no resolving per image)."""
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()
