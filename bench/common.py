"""Shared bench helpers: random models of the shipped sizes (no weights needed) and timing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from diffdisc.scoring.engine import ScoringEngine, Work  # noqa: E402


def make_fmnist_sized_classcond(root: Path, channels: int = 1) -> Path:
    """A random UNet2DModel with the shipped fmnist-classcond architecture (2.8M params, 32x32)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(
        sample_size=32, in_channels=channels, out_channels=channels, block_out_channels=(32, 64, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), num_class_embeds=11,
    ).save_pretrained(root / "unet")  # fmt: skip
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(root / "scheduler")
    names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    (root / "diffdisc.json").write_text(json.dumps({"class_names": names, "null_class": 10}))
    return root


def best_of(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` runs (after one warm-up): robust on a noisy shared machine."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_sd_sized(root: Path, classes: list[str]) -> Path:
    """A random SD-layout model (VAE included) with the shipped text model's U-Net shape on 4 latent channels.

    The shipped text encoder, tokenizer and scheduler are copied, so prompts tokenize as they do for users.
    """
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffdisc.backbones.registry import shipped_models_dir

    src = shipped_models_dir() / "fmnist-scenes-text"
    cfg = json.loads((src / "unet" / "config.json").read_text())
    cfg.update(in_channels=4, out_channels=4, sample_size=16)
    torch.manual_seed(0)
    UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")}).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=32, sample_size=32).save_pretrained(root / "vae")  # fmt: skip
    for part in ("text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(src / part, root / part)
    (root / "diffdisc.json").write_text(json.dumps({"class_names": classes}))
    return root


class MemoEngine(ScoringEngine):
    """Computes each (image, candidate, t) once across strategies; results equal an unmemoised engine's."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.memo: dict[tuple[str, int, int], float] = {}
        self.forwards = 0  # U-Net calls actually made

    def _cond_keys(self, conds: torch.Tensor, rows: list[int]) -> dict[int, int]:
        """The memo's key of each condition row: the row itself."""
        return {c: c for c in rows}

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


class SharedMemoEngine(MemoEngine):
    """As `MemoEngine`, keyed by each condition's content rather than its row: runs that pass other condition
    tensors (a subset of the candidates, a label tree's node conditions appended after the leaves') share
    the forwards of the conditions they have in common. `save` / `load` keep the memo between runs of a bench
    (an npz, no pickle)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.cond_ids: dict[str, int] = {}  # condition digest -> small id used in the memo's keys

    def _cond_keys(self, conds: torch.Tensor, rows: list[int]) -> dict[int, int]:
        import hashlib

        out = {}
        for c in rows:
            d = hashlib.blake2b(conds[c].detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
            out[c] = self.cond_ids.setdefault(d, len(self.cond_ids))
        return out

    def save(self, path: Path, meta: dict) -> None:
        """The memo and `meta` (what its numbers depend on: model, score, device) to `path` (.npz)."""
        import numpy as np

        from diffdisc.runs.io import atomic_write

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

    def load(self, path: Path, meta: dict) -> bool:
        """Merge a memo `save` wrote with the same `meta`; False (and nothing loaded) when absent or for other settings."""
        import numpy as np

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
