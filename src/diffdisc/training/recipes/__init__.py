"""Training recipes: one JSON file each in this folder, found by name, like open_clip's `model_configs/`.

A recipe file holds the flat options (the keys of train_config.json) that differ from `TrainConfig()`, plus
an `about` line; its name is the file's stem. A new recipe is a new file. `get_recipe` also takes the path
of a JSON file of the same form, e.g. a run's train_config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import DiffdiscError
from ..config import MODEL_CONFIGS, SAVED_KEYS, TrainConfig

RECIPES_DIR = Path(__file__).parent


def load_recipe_file(path: str | Path) -> TrainConfig:
    """The config a recipe file describes; its `recipe` key, if any, wins over the file's stem."""
    path = Path(path)
    try:
        options = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffdiscError(f"cannot read recipe {path}: {e}") from None
    if not isinstance(options, dict) or not isinstance(options.pop("about", ""), str):
        raise DiffdiscError(f"recipe {path}: expected a JSON object of training options (and an 'about' text)")
    return TrainConfig().with_options(**{"recipe": path.stem, **options})


def _listing_order(cfg: TrainConfig) -> tuple:
    """Shipped recipes before the test ones (`tiny*`), each plain recipe before its colour-correlated
    variant, kinds as in MODEL_CONFIGS: the order `diffdisc train --help` lists them in."""
    return cfg.recipe.startswith("tiny"), cfg.colour_correlation > 0, list(MODEL_CONFIGS).index(cfg.kind), cfg.recipe


RECIPES: dict[str, TrainConfig] = {
    c.recipe: c for c in sorted(map(load_recipe_file, RECIPES_DIR.glob("*.json")), key=_listing_order)
}


@dataclass(frozen=True)
class CpuSetting:
    """A documented setting for the 2-core CPU and the seconds per step measured there (low, high: the range
    other jobs on the cores produced), so `diffdisc train --help` can say what to expect before a run."""

    steps: int
    batch_size: int
    s_per_step: tuple[float, float]
    note: str = ""

    def line(self, recipe: str) -> str:
        lo, hi = self.s_per_step
        rate = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        mins = [self.steps * s / 60 for s in self.s_per_step]
        took = f"{mins[0]:.0f}" if round(mins[0]) == round(mins[1]) else f"{mins[0]:.0f}-{mins[1]:.0f}"
        took = f"{took} min" if mins[1] >= 1 else "seconds"
        return f"{recipe:<22}{self.steps:>6}{self.batch_size:>6}  {rate:>9} s/step  {took}{self.note}"


# The shipped weights were trained on an H100 (assets/README.md); these are what a 2-core CPU manages.
CPU_SETTINGS = {
    # 1,139 steps in 40 min idle; the shipped run 3.1-3.5 s/step beside light load, 5.6-9.7 s/step when test
    # runs took one to two cores (set OMP_WAIT_POLICY=PASSIVE there; spinning threads doubled it).
    "fmnist-classcond": CpuSetting(2000, 128, (2.1, 3.5)),
    # Measured with two other jobs on the cores; ~4-5 s/step expected idle from the forward cost.
    "fmnist-scenes-text": CpuSetting(1000, 128, (9, 14), "  (idle ~4-5)"),
    "fmnist-scenes-clip": CpuSetting(2500, 256, (2.0, 2.0)),
    # Fine-tuned with --init-from the shipped parent in 25 min (docs/results.md has the full settings).
    "fmnist-scenes-text-cc": CpuSetting(526, 32, (1.8, 4.0), "  (fine-tune)"),
    "fmnist-scenes-clip-cc": CpuSetting(678, 128, (0.9, 3.8), "  (fine-tune)"),
    "tiny": CpuSetting(20, 8, (0.03, 0.07)),
}


def cpu_settings_text() -> str:
    """The table `diffdisc train --help` shows (one line per recipe; rich keeps the line breaks of an epilog)."""
    head = f"{'recipe':<22}{'steps':>6}{'batch':>6}  measured on 2 CPU cores (range: load)"
    return "\n".join([head, *(s.line(r) for r, s in CPU_SETTINGS.items())])


def default_name(cfg: TrainConfig, out: str | Path | None = None) -> str:
    """The label of a trained model when `diffdisc train --name` is not given. On Fashion-MNIST, the recipe's
    name (it rebuilds that model). On a user's data, the training directory's name (`--out runs/mine` ->
    `mine`): "recipe + data folder" named a model from `mydata/train` `fmnist-classcond-train`, which reads as
    the Fashion-MNIST model, and every export is a folder called `model`. Without `out` (a dry run), the
    recipe and the data folder."""
    if not cfg.data:
        return cfg.recipe
    if out is not None:
        return Path(out).expanduser().resolve().name
    p = Path(cfg.data).expanduser().resolve()
    return f"{cfg.recipe}-{(p.parent if p.is_file() else p).name}"  # a captions.jsonl file names its folder


def get_recipe(recipe: str, /, **overrides) -> TrainConfig:
    """A named recipe (or a recipe .json path) with flat overrides applied; None values mean 'keep the recipe's
    value' (CLI defaults). Positional-only, so `name=` is the option (the model's label), not the recipe."""
    if recipe in RECIPES:
        cfg = RECIPES[recipe]
    elif recipe.endswith(".json") and Path(recipe).expanduser().is_file():
        cfg = load_recipe_file(Path(recipe).expanduser())
    else:
        raise DiffdiscError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)}; or a recipe .json file)")
    bad = sorted(set(overrides) - set(SAVED_KEYS))
    if bad:
        raise DiffdiscError(f"unknown training option {bad[0]!r}")
    return cfg.with_options(**{k: v for k, v in overrides.items() if v is not None})
