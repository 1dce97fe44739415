"""A fitted features head as a cascade's cheap stage: `FeatureHead` reads what a `diffdisc features sweep`
chose and fitted, `HeadStage` scores a chunk's candidates with it (one U-Net forward per image)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffdiscError
from ..scoring.search.base import ImageScores
from . import SWEEP_DETAILS, SWEEP_JSON
from .cache import cached_features
from .heads import FittedHead
from .taps import ExtractStats


@dataclass
class FeatureHead:
    """The head a `diffdisc features sweep` fitted at its chosen (block, t) cell, with how its features are read.

    Applying it to new images needs what the sweep recorded beside the head: the cell and pooling
    (features_sweep.json), the condition, noise seed and dtype of the features and the fingerprint of the model
    they came from (features_sweep_details.json). A head saved alone (`features probe --save`) records none
    of these, so it cannot be applied here."""

    head: FittedHead
    block: str
    t: int
    pooling: str
    condition: str
    seed: int
    dtype: str
    model_fingerprint: str
    model_label: str
    path: Path
    fingerprint: str  # of the head's own files

    @property
    def class_names(self) -> list[str]:
        return list(self.head.class_names)

    @classmethod
    def from_dir(cls, path: str | Path) -> FeatureHead:
        path = Path(path)
        root = path.parent if (path / "head.json").is_file() and not (path / SWEEP_JSON).is_file() else path
        head_dir = root / "head"
        if not (root / SWEEP_JSON).is_file() or not (head_dir / "head.json").is_file():
            raise DiffdiscError(f"{path} is not a features sweep with its head ({SWEEP_JSON} and head/head.json; a head "
                                f"saved alone by `features probe --save` does not record the cell it reads)")  # fmt: skip
        try:
            sweep = json.loads((root / SWEEP_JSON).read_text())
            details = json.loads((root / SWEEP_DETAILS).read_text())
            feats = details["features"]
            block, t, pooling = str(sweep["best"]["block"]), int(sweep["best"]["t"]), str(sweep["pooling"])
            fp = str(details["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DiffdiscError(f"{root}: cannot read the sweep's chosen cell and feature settings ({e})") from None
        head = FittedHead.from_pretrained(head_dir)
        if not head.class_names:
            raise DiffdiscError(f"{head_dir}/head.json records no class names: cannot match them with the candidates")
        h = hashlib.sha256()
        for name in ("head.json", "head.safetensors"):
            h.update((head_dir / name).read_bytes())
        return cls(head, block, t, pooling, str(feats.get("condition", "null")), int(feats.get("seed", 0)),
                   str(feats.get("dtype", "fp32")), fp, str(sweep.get("model", "?")), root, h.hexdigest()[:16])  # fmt: skip

    @classmethod
    def is_dir(cls, path: str | Path) -> bool:
        """Whether `path` looks like a features sweep (or its head/ folder) rather than a model."""
        p = Path(path)
        return (p / SWEEP_JSON).is_file() or ((p / "head.json").is_file() and (p / "head.safetensors").is_file())


@dataclass
class HeadStage:
    """A `FeatureHead` as a cascade's cheap stage: one U-Net forward per image at its cell (charged to no one
    candidate), its logits negated as scores (lower = better, as errors), recorded at 'timestep' 0.
    `columns[c]` = the head's class of candidate c."""

    feature_head: FeatureHead
    backbone: object
    pixels: torch.Tensor  # the chunk's images in [-1, 1] at the backbone's size
    columns: list[int]
    batch_size: int = 64

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[ImageScores]:
        fh = self.feature_head
        got = cached_features(self.backbone, self.pixels, keys, [fh.block], [fh.t], (fh.pooling,), condition=fh.condition,
                              seed=fh.seed, batch_size=self.batch_size, dtype=fh.dtype, stats=ExtractStats())  # fmt: skip
        with torch.no_grad():
            fh.head.model.eval()
            logits = fh.head.model([got[(fh.block, fh.t, fh.pooling)]]).float().cpu()
        out = []
        for i, k in enumerate(keys):
            r = ImageScores(k, len(self.columns), unattributed_calls=1)  # one forward, for every candidate at once
            for c in candidates[i] if candidates is not None else range(len(self.columns)):
                r.add(c, 0, -float(logits[i, self.columns[c]]), calls=0)
            out.append(r)
        return out
