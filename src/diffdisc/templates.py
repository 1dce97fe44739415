"""Prompt templates as data (open_clip style): class name -> prompts for text-conditional backbones.

`{}` is the class name; `{a}` is its indefinite article ("a sneaker", "an ankle boot"): models trained on
grammatical captions see "a ankle boot" as a different, unseen prompt. A root module (below scoring): label
trees prompt their coarse nodes with them, tasks their candidates.
"""

from .errors import DiffdiscError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.",),
    "plain": ("{a} {}",),
    "cifar10": ("a blurry photo of a {}.",),  # the official Diffusion Classifier CIFAR-10 prompt
    "pets": ("a photo of a {}, a type of pet.",),
    "ensemble": ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.", "a {}."),
}
DEFAULT = "photo"


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def fill(template: str, name: str) -> str:
    """The prompt for `name`: `{}` -> name, `{a}` -> its article."""
    return template.replace("{a}", article(name)).format(name)


def resolve_templates(spec: str | list[str] | tuple[str, ...] | None, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A template set name, a literal template containing '{}', or a list of either."""
    if spec is None:
        return tuple(default) if default else TEMPLATES[DEFAULT]
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in items:
        if s in TEMPLATES:
            out += TEMPLATES[s]
        elif "{}" in s:
            out.append(s)
        else:
            raise DiffdiscError(f"template {s!r} is neither a known set ({', '.join(TEMPLATES)}) nor contains '{{}}'")
    return tuple(out)
