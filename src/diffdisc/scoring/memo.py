"""A memoising engine: each (image, condition, t) is scored once, however many strategies ask for it.

Noise is seeded per (image, t), so a strategy that revisits a (candidate, t) another one scored gets exactly
the number it would compute; each strategy is still charged its own calls (`Chunk.run` charges what it asks
for), while `forwards` counts the U-Net calls actually made. This is how `classify --strategy auto` scores a
whole list of settings on the validation images in one pass, and how benches compare strategies.
Conditions are keyed by content, so searches that pass other condition tensors (a shortlist's subset, a
tree's node conditions) share what they have in common. `save` / `load` keep the memo between runs (an npz).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..runs.io import atomic_write
from .engine import ScoringEngine, Work


class MemoEngine(ScoringEngine):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.memo: dict[tuple[str, int, int], float] = {}
        self.cond_ids: dict[str, int] = {}  # condition digest -> small id used in the memo's keys
        self.forwards = 0  # U-Net calls actually made

    def _cond_keys(self, conds: torch.Tensor, rows: list[int]) -> dict[int, int]:
        out = {}
        for c in rows:
            d = hashlib.blake2b(conds[c].detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
            out[c] = self.cond_ids.setdefault(d, len(self.cond_ids))
        return out

    def run(self, x0, keys, conds, work):
        ids = self._cond_keys(conds, sorted(set(work.candidate.tolist())))
        key = [(keys[i], ids[c], t) for i, c, t in zip(work.image.tolist(), work.candidate.tolist(), work.t.tolist(), strict=True)]
        first: dict = {}
        for j, k in enumerate(key):
            if k not in self.memo:
                first.setdefault(k, j)
        if first:
            sel = torch.tensor(list(first.values()))
            errs = super().run(x0, keys, conds, Work(work.image[sel], work.candidate[sel], work.t[sel]))
            self.memo.update(zip(first, errs.tolist(), strict=True))
            self.forwards += len(first) * self.calls_per_item
        return torch.tensor([self.memo[k] for k in key])

    def save(self, path: str | Path, meta: dict) -> None:
        """The memo and `meta` (what its numbers depend on: model, score) to `path` (.npz, written atomically)."""
        items = list(self.memo.items())
        digests = sorted(self.cond_ids, key=self.cond_ids.get)
        arrays = dict(
            meta=np.array(json.dumps(meta, sort_keys=True)), digests=np.array(digests, dtype="U32"),
            image=np.array([k[0] for k, _ in items], dtype=str), cond=np.array([k[1] for k, _ in items], dtype=np.int64),
            t=np.array([k[2] for k, _ in items], dtype=np.int64), error=np.array([v for _, v in items], dtype=np.float64),
        )  # fmt: skip

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), write)

    def load(self, path: str | Path, meta: dict) -> bool:
        """Merge a memo `save` wrote with the same `meta`; False (nothing loaded) when absent or made otherwise."""
        path = Path(path)
        if not path.is_file():
            return False
        with np.load(path, allow_pickle=False) as z:
            if str(z["meta"]) != json.dumps(meta, sort_keys=True):
                return False
            remap = {i: self.cond_ids.setdefault(str(d), len(self.cond_ids)) for i, d in enumerate(z["digests"].tolist())}
            for k, c, t, e in zip(z["image"].tolist(), z["cond"].tolist(), z["t"].tolist(), z["error"].tolist(), strict=True):
                self.memo[(k, remap[c], t)] = e
        return True
