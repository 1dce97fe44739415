"""Compositional probes on the embedded world: seeded, versioned 2x2 groups (Winoground-style).

Each group is a pair scene of real Fashion-MNIST *test* items and one edited copy, with both captions:
  binding  - the two items' colours exchanged (same objects, same places): attribute binding;
  spatial  - the items' sides exchanged (the caption's "left"/"right" flips): spatial relation;
  object   - one item replaced by an item of a third class, same colour: object-swap control;
  colour   - one item's colour replaced by a third colour: colour-swap control.
The controls change *what* is present, binding and spatial only *how* it is composed; a model that only
checks the bag of words passes the controls and fails binding/spatial. Bump VERSION whenever generation
changes so stored numbers stay comparable.
"""

from __future__ import annotations

import numpy as np

from ..data.groups import Group
from ..errors import DiffdiscError
from .scenes import COLOURS, Scene, generate_scenes, make_scene, swap_colours, swap_sides

VERSION = "v1"
PROBES = ("binding", "spatial", "object", "colour")


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


def make_probe(name: str, n: int = 200, seed: int = 0) -> list[Group]:
    """`n` groups of probe `name`; image 0 matches caption 0, image 1 (edited) caption 1."""
    from .fashion_mnist import load_shipped_subset

    if name not in PROBES:
        raise DiffdiscError(f"unknown probe {name!r} (known: {', '.join(PROBES)})")
    if n < 1:
        raise DiffdiscError(f"probe size must be >= 1, got {n}")
    images, labels, _ = load_shipped_subset()  # real test items: never seen in training
    base = generate_scenes(images, labels, n, "pair", seed=seed)
    rng = np.random.default_rng([seed, PROBES.index(name)])
    groups = []
    for i, s in enumerate(base):
        if name == "binding":
            e = swap_colours(s)
        elif name == "spatial":
            e = swap_sides(s)
        elif name == "object":
            e = _replace_object(s, rng, images, labels)
        else:
            e = _replace_colour(s, rng)
        groups.append(Group(f"{name}-{VERSION}-s{seed}-{i:05d}", (s.image, e.image), (s.caption, e.caption), (name,)))
    return groups
