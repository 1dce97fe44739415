"""Compositional probes on the embedded world: seeded, versioned 2x2 groups (Winoground-style).

Each group is a pair scene of real Fashion-MNIST *test* items and one edited copy, with both captions:
  binding  - the two items' colours exchanged (same objects, same places): attribute binding;
  spatial  - the items' sides exchanged (the caption's "left"/"right" flips): spatial relation;
  object   - one item replaced by an item of a third class, same colour: object-swap control;
  colour   - one item's colour replaced by a third colour: colour-swap control.
The controls change *what* is present, binding and spatial only *how* it is composed; a model that only
checks the bag of words passes the controls and fails binding/spatial.

  cue-conflict - (Clark & Jaini's shape-bias probe, colour in the role of texture) one image, two captions:
  a single test item of class A tinted with the class colour (`scenes.class_colour`) of another class B, and
  the class-name prompts "a <A>" (caption 0, the shape) and "a <B>" (caption 1, the colour). Shape bias =
  the share of items where the shape caption wins (the text score of a 1x2 group; chance 50%). It measures
  something only on a model trained with class-correlated colours (`colour_correlation` > 0); on one trained
  without, colour says nothing about the class and the probe is a control. The palette has 8 colours for 10
  classes, so t-shirt/bag share red and trouser/ankle boot share green: B is drawn from the classes whose
  class colour is theirs alone (COLOUR_CUE_CLASSES), A from all ten (A != B), cycling A over the classes.

Each probe has its own version (PROBE_VERSIONS, in group ids and run directories): bump a probe's version
whenever its generation changes, so stored numbers stay comparable. VERSION names the set of probes.

Probes are evaluated on the shipped Fashion-MNIST *test* items (`split="test"`, the default). Few-shot tuning
draws the same kinds of groups from the shipped *train* items (`split="train"`, ids tagged "train"), so a
tuned model is never evaluated on an item it was tuned on; every group lists its items as (split, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.groups import Group
from ..errors import DiffdiscError
from .scenes import (
    COLOURS,
    Item,
    Scene,
    class_colour,
    describe,
    generate_scenes,
    make_scene,
    swap_colours,
    swap_sides,
)

# v2 added cue-conflict; the four v1 probes' items (and their group ids) are unchanged.
VERSION = "v2"
PROBE_VERSIONS = {"binding": "v1", "spatial": "v1", "object": "v1", "colour": "v1", "cue-conflict": "v1"}
PROBES = tuple(PROBE_VERSIONS)


@dataclass(frozen=True, eq=False)
class ProbeGroup(Group):
    """A probe group and the Fashion-MNIST items its images show: (split, index into that split), sorted."""

    items: tuple[tuple[str, int], ...] = ()


def _tag(name: str, split: str, seed: int) -> str:
    """Group-id prefix; evaluation ids are those of earlier versions, tuning ids say "train"."""
    return f"{name}-{PROBE_VERSIONS[name]}{'-train' if split == 'train' else ''}-s{seed}"


def colour_cue_classes(n_classes: int) -> list[int]:
    """Classes whose class colour no other class shares: the only colours that point at one class."""
    colours = [class_colour(c) for c in range(n_classes)]
    return [c for c in range(n_classes) if colours.count(colours[c]) == 1]


def _replace_object(scene: Scene, rng: np.random.Generator, images: np.ndarray, labels: np.ndarray) -> Scene:
    side = int(rng.integers(2))
    present = {it.class_id for it in scene.items}
    options = np.flatnonzero(~np.isin(labels, list(present)))
    src = int(options[rng.integers(len(options))])
    items, sources = list(scene.items), list(scene.sources)
    old = items[side]
    items[side] = old._replace(class_id=int(labels[src]), class_name=_name(int(labels[src])), source=src)
    sources[side] = images[src]
    return make_scene(items, sources, scene.relation)


def _replace_colour(scene: Scene, rng: np.random.Generator) -> Scene:
    side = int(rng.integers(2))
    used = {it.colour for it in scene.items}
    options = [c for c in COLOURS if c not in used]
    items = list(scene.items)
    items[side] = items[side]._replace(colour=options[int(rng.integers(len(options)))])
    return make_scene(items, scene.sources, scene.relation)


def _name(class_id: int) -> str:
    from .fashion_mnist import CLASS_NAMES

    return CLASS_NAMES[class_id]


def _cue_conflict(n: int, seed: int, images: np.ndarray, labels: np.ndarray, split: str,
                  indices: np.ndarray) -> list[ProbeGroup]:  # fmt: skip
    """Shape A (cycling over the classes), colour of B != A drawn from the unique-colour classes."""
    from .fashion_mnist import CLASS_NAMES

    cue = colour_cue_classes(len(CLASS_NAMES))
    rng = np.random.default_rng([seed, PROBES.index("cue-conflict")])
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    tag, groups = _tag("cue-conflict", split, seed), []
    for i in range(n):
        a = i % len(CLASS_NAMES)
        src = int(by_class[a][rng.integers(len(by_class[a]))])
        options = [c for c in cue if c != a]
        b = options[int(rng.integers(len(options)))]
        item = Item(a, CLASS_NAMES[a], class_colour(b), "centre", src)
        scene = make_scene([item], [images[src]])
        shape, colour = describe([item], colours=False), describe([item._replace(class_name=CLASS_NAMES[b])], colours=False)
        groups.append(ProbeGroup(f"{tag}-{i:05d}", (scene.image,), (shape, colour),
                                 ("cue-conflict", CLASS_NAMES[a], CLASS_NAMES[b]), ((split, int(indices[src])),)))
    return groups


def make_probe(name: str, n: int = 200, seed: int = 0, split: str = "test") -> list[ProbeGroup]:
    """`n` groups of probe `name`; image i matches caption i (image 1 is the edited copy).

    cue-conflict groups hold one image and two captions: the shape's class (0, correct) and the colour's (1).
    `split="train"` draws from the shipped train items instead of the test ones: groups to tune on.
    """
    from .fashion_mnist import load_shipped_subset

    if name not in PROBES:
        raise DiffdiscError(f"unknown probe {name!r} (known: {', '.join(PROBES)})")
    if n < 1:
        raise DiffdiscError(f"probe size must be >= 1, got {n}")
    images, labels, indices = load_shipped_subset(split)  # test: evaluation pool, train: tuning pool
    if name == "cue-conflict":
        return _cue_conflict(n, seed, images, labels, split, indices)
    base = generate_scenes(images, labels, n, "pair", seed=seed)
    rng = np.random.default_rng([seed, PROBES.index(name)])
    tag, groups = _tag(name, split, seed), []
    for i, s in enumerate(base):
        if name == "binding":
            e = swap_colours(s)
        elif name == "spatial":
            e = swap_sides(s)
        elif name == "object":
            e = _replace_object(s, rng, images, labels)
        else:
            e = _replace_colour(s, rng)
        items = sorted({(split, int(indices[it.source])) for it in s.items + e.items})
        groups.append(ProbeGroup(f"{tag}-{i:05d}", (s.image, e.image), (s.caption, e.caption), (name,), tuple(items)))
    return groups
