"""Cascades of scorers: a cheap stage shortlists each image's candidates, an expensive stage decides among them.

For large label spaces the expensive scorer (a diffusion model, tens of U-Net calls per candidate) need not
see every candidate: a cheap one (a contrastive model, no U-Net calls; the same diffusion model at a few
timesteps; a features head, one U-Net forward per image) ranks all of them and only its top `keep` go on,
under the expensive stage's own strategy. Each stage is a scorer (an engine on its own backbone) with its own
encoding of the images and conditions of the same candidates, so any two scorers compose.

A true class the cheap stage ranks below `keep` is lost: the decider never sees it, the image counts as wrong.
Both stages' costs are charged to the image (`Shortlisted`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DiffdiscError
from .adaptive import ImageScores, evaluate
from .config import AdaptiveConfig
from .engine import ScoringEngine
from .timestep_weights import TimestepWeights


@dataclass
class Stage:
    """One scorer of a cascade: its engine, the chunk's images and the candidates' conditions in its backbone's
    space (`backbone.encode`, `backbone.conditions`; `groups[c]` = conditions of candidate c, the same candidates
    in the same order in every stage), and the strategy it scores with."""

    engine: ScoringEngine
    x0: torch.Tensor
    conds: torch.Tensor
    groups: list[list[int]] | None = None
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    weights: TimestepWeights | None = None  # learned timestep weights (`scoring.timestep_weights`)

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[ImageScores]:
        return evaluate(self.engine, self.x0, keys, self.conds, self.adaptive, self.groups, candidates, self.weights)

    def unet_calls(self, r: ImageScores) -> int:
        """U-Net calls this stage spent on one image (all in `r.n_calls`)."""
        return r.calls

    def forwards(self, r: ImageScores) -> int:
        """Forwards that are no U-Net calls: a contrastive model's image encoder, once per image (its text
        embeddings are computed once per run, as every scorer's conditions)."""
        return 0 if self.engine.needs_timesteps else 1


@dataclass
class Shortlisted:
    """One image through a cascade. `scores` is on the deciding stage's scale (its `n_calls` hold both stages'
    per-candidate calls); `shortlist` the cheap stage's top `keep`, best first; `cheap_calls` the U-Net calls
    of the cheap stage, `cheap_forwards` its other forwards; `calls` every U-Net call the image cost."""

    scores: ImageScores
    shortlist: list[int]
    cheap_calls: int
    cheap_forwards: int
    unattributed_calls: int = 0  # cheap U-Net calls spent on no one candidate (a features head's forward)

    @property
    def calls(self) -> int:
        return self.scores.calls + self.unattributed_calls


@dataclass
class Cascade:
    """`shortlist` ranks every candidate; its best `keep` per image go to `decide`.

    The result is one `ImageScores` per image on the deciding stage's scale: its ranking is the decider's
    ranking of the shortlist, then the rest in the shortlisting stage's order (they were never scored by the
    decider: score inf). `n_calls` adds both stages' U-Net calls. With `keep` 1 there is nothing left to
    decide: the decider is not called and the result is the shortlisting stage's own.
    """

    shortlist: Stage | HeadStage
    decide: Stage
    keep: int

    def __call__(self, keys: list[str]) -> list[ImageScores]:
        return [s.scores for s in self.run(keys)]

    def run(self, keys: list[str]) -> list[Shortlisted]:
        """As `__call__`, with each image's shortlist and what the cheap stage cost."""
        first = self.shortlist.evaluate(keys)
        lists = [r.ranking()[: self.keep] for r in first]
        if self.keep == 1:
            return [Shortlisted(r, kept, n := self.shortlist.unet_calls(r), self.shortlist.forwards(r), n - r.calls)
                    for r, kept in zip(first, lists, strict=True)]  # fmt: skip
        final = self.decide.evaluate(keys, candidates=lists)
        out = []
        for cheap, r, kept in zip(first, final, lists, strict=True):
            for place, c in enumerate(cheap.ranking()):
                r.n_calls[c] += cheap.n_calls[c]
                if c not in kept:  # below every shortlisted candidate (levels >= 0), in the cheap stage's order
                    r.level[c] = -1 - place
            calls = self.shortlist.unet_calls(cheap)
            out.append(Shortlisted(r, kept, calls, self.shortlist.forwards(cheap), calls - cheap.calls))
        return out


# ---------------------------------------------------------------------- a fitted features head as the cheap stage
@dataclass
class FeatureHead:
    """The head a `diffdisc features sweep` fitted at its chosen (block, t) cell, with how its features are read.

    Applying it to new images needs what the sweep recorded beside the head: the cell and pooling
    (features_sweep.json), the condition, noise seed and dtype of the features and the fingerprint of the model
    they came from (features_sweep_details.json). A head saved alone (`features probe --save`) records none
    of these, so it cannot be applied here."""

    head: object  # features.heads.FittedHead
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
        from ..features.heads import FittedHead
        from ..results.sweep import SWEEP_DETAILS, SWEEP_JSON

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
        return (p / "features_sweep.json").is_file() or ((p / "head.json").is_file() and (p / "head.safetensors").is_file())


@dataclass
class HeadStage:
    """A `FeatureHead` as a cascade stage: one U-Net forward per image at its cell, its logits negated as scores
    (lower = better, as errors), recorded at 'timestep' 0. `columns[c]` = the head's class of candidate c."""

    feature_head: FeatureHead
    backbone: object
    pixels: torch.Tensor  # the chunk's images in [-1, 1] at the backbone's size
    columns: list[int]
    batch_size: int = 64

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[ImageScores]:
        from ..features.cache import cached_features
        from ..features.taps import ExtractStats

        fh = self.feature_head
        got = cached_features(self.backbone, self.pixels, keys, [fh.block], [fh.t], (fh.pooling,), condition=fh.condition,
                              seed=fh.seed, batch_size=self.batch_size, dtype=fh.dtype, stats=ExtractStats())  # fmt: skip
        with torch.no_grad():
            fh.head.model.eval()
            logits = fh.head.model([got[(fh.block, fh.t, fh.pooling)]]).float().cpu()
        out = []
        for i, k in enumerate(keys):
            r = ImageScores(k, len(self.columns))
            for c in candidates[i] if candidates is not None else range(len(self.columns)):
                r.add(c, 0, -float(logits[i, self.columns[c]]), calls=0)
            out.append(r)
        return out

    def unet_calls(self, r: ImageScores) -> int:
        return 1  # one forward per image at the cell's t, for every candidate at once

    def forwards(self, r: ImageScores) -> int:
        return 0
