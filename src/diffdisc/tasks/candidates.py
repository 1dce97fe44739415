"""A run's candidates: the classes, the condition keys the backbone is given (prompts from templates, or class
ids) and which keys belong to which class."""

from __future__ import annotations

from dataclasses import dataclass

from ..backbones.base import Backbone
from ..errors import DiffdiscError
from ..templates import fill, resolve_templates


@dataclass(frozen=True)
class Candidates:
    """Classes, the condition keys given to the backbone, and which keys belong to which class."""

    classes: list[str]
    keys: list  # prompts (text backbones) or class ids (class-conditional)
    groups: list[list[int]]
    templates: tuple[str, ...] = ()


def build_candidates(backbone: Backbone, classes: list[str] | None, templates=None,
                     allow_duplicates: bool = False) -> Candidates:  # fmt: skip
    """`allow_duplicates`: a benchmark's own class list may name two classes alike (ImageNet's "missile" and
    "sunglasses"); its labels are the dataset's ids, so identical prompts just tie, as in clip_benchmark."""
    info = backbone.info
    classes = list(classes) if classes else list(info.class_names)
    if not classes:
        raise DiffdiscError("no classes given (pass --classes or use a model that records its class names)")
    classes = [c.strip() for c in classes]
    if any(not c for c in classes):
        raise DiffdiscError("empty class name in the class list")
    low = [c.lower() for c in classes]
    dup = sorted({c for c in low if low.count(c) > 1})
    if dup and not allow_duplicates:
        raise DiffdiscError(f"duplicate class names: {', '.join(dup)}")
    if info.conditioning == "class":
        return Candidates(classes, [backbone.class_id(c) for c in classes], [[i] for i in range(len(classes))])
    tpl = resolve_templates(templates, tuple(info.metadata.get("templates", ())) or None)
    keys = [fill(t, c) for c in classes for t in tpl]
    n = len(tpl)
    return Candidates(classes, keys, [list(range(i * n, (i + 1) * n)) for i in range(len(classes))], tpl)
