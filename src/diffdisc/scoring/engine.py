"""Batched, shared-noise scoring: the one place where the U-Net is called for scoring.

Work is a flat list of (image, candidate, t) triples. The engine packs any mix of images, candidates and
timesteps into U-Net batches of a fixed size, so the cost per call does not depend on how many candidates
an adaptive strategy still keeps. ε for (image, t) comes from a generator seeded by (seed, image key, t):
every candidate sees the same noise (the variance reduction of Li et al. and Clark & Jaini) and the
numbers agree across batch size, chunking, order of evaluation and number of processes to float rounding
(≈ 1e-8 relative, not bit for bit: other batch shapes may take other kernels). What one item's score is
belongs to the scorer (`scorers.py`); the engine only calls it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..backbones.base import Backbone
from .config import ScoreConfig
from .scorers import Scorer, autocast, make_scorer

MAX_TUNE = 4096  # largest batch the auto-tuner tries


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (run seed, image key, t, purpose): stable across runs and machines."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Work:
    """Flat (image, candidate, t) triples; indices into the x0 / condition tensors given to `run`."""

    image: torch.Tensor
    candidate: torch.Tensor
    t: torch.Tensor

    @classmethod
    def from_lists(cls, image, candidate, t) -> Work:
        return cls(*(torch.as_tensor(v, dtype=torch.long).reshape(-1) for v in (image, candidate, t)))

    def __len__(self) -> int:
        return int(self.t.numel())


class ScoringEngine:
    """Turns work into scores through one scorer (`make_scorer`); counts U-Net calls (`scorer.calls_per_item`
    per work item).

    Make one per run (the auto-tuned batch size and the compiled denoiser are made once) and use it as a
    context manager: `channels_last` converts the backbone's weights in place, and `close()` converts them
    back, so the caller gets its model back as it gave it.
    """

    def __init__(self, backbone: Backbone, config: ScoreConfig | None = None, noise=None):
        self.backbone = backbone
        self.config = config or ScoreConfig()
        # `scoring.learned_noise.LearnedNoise` (`diffdisc noise fit`): ε_t from its file for every image, refusing a
        # t it does not cover; None: the seeded draws below
        self.learned_noise = noise
        self.calls = 0
        # None until tuned (batch_size 0 = auto); may shrink after an out-of-memory error.
        self.batch_size: int | None = self.config.batch_size or None
        self.autocast = autocast(backbone.device.type, self.config.dtype)
        self._memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        # Every scorer calls the denoiser through _predict_eps (the attention capture sets its processors
        # outside the compiled call). Fixed batch shapes: the last, smaller batch compiles once more.
        self.scorer: Scorer = make_scorer(backbone, self.config, predict=self._predict)  # may refuse
        self._denoiser = None
        if self.scorer.needs_noise:  # ε̂, or v̂ for the flow weightings
            self._denoiser = getattr(backbone, f"predict_{self.scorer.target}")
            if self.config.compile:
                self._denoiser = torch.compile(self._denoiser, dynamic=False)
        self._restore_format = None  # after every check that can refuse: a refused engine changes nothing
        if self.scorer.needs_noise and self.config.channels_last and not all(
            p.is_contiguous(memory_format=torch.channels_last) for p in backbone.parameters() if p.ndim == 4
        ):
            backbone.to(memory_format=torch.channels_last)
            self._restore_format = torch.contiguous_format

    def close(self) -> None:
        """Convert the backbone's weights back to contiguous if `channels_last` converted them."""
        if self._restore_format is not None:
            self.backbone.to(memory_format=self._restore_format)
            self._restore_format = None

    def __enter__(self) -> ScoringEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def calls_per_item(self) -> int:
        return self.scorer.calls_per_item

    @property
    def needs_timesteps(self) -> bool:
        """False for scorers without noise: one score per (image, candidate), at 'timestep' 0."""
        return self.scorer.needs_noise

    def candidates(self, conds: torch.Tensor, groups: list[list[int]]) -> tuple[torch.Tensor, list[list[int]]]:
        """The conditions to score and each candidate's group of them, as the scorer combines prompts."""
        return self.scorer.candidates(conds, groups)

    # ------------------------------------------------------------------ noise
    def noise(self, keys: list[str], ts: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        """ε for each (key, t) pair, drawn on the CPU so every device and process sees the same numbers."""
        if self.learned_noise is not None:
            return self.learned_noise.draw(ts, shape)
        g = torch.Generator()
        out = torch.empty((len(ts), *shape))
        for i, (k, t) in enumerate(zip(keys, ts, strict=True)):
            g.manual_seed(derive_seed(self.config.seed, k if self.config.noise == "image" else "", int(t)))
            out[i] = torch.randn(shape, generator=g)
        return out

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def run(self, x0: torch.Tensor, keys: list[str], conds: torch.Tensor, work: Work) -> torch.Tensor:
        """Scores (float32, CPU) for each work item, in work order."""
        n = len(work)
        if n == 0:
            return torch.empty(0)
        dev = self.backbone.device
        x0 = x0.to(dev)
        conds = conds.to(dev)
        if not self.scorer.needs_noise:  # one table for the chunk (t is ignored), no U-Net
            return self.scorer.table(x0, conds).float().cpu()[work.image, work.candidate]
        # Noise for the unique (image, t) pairs only: candidates reuse it.
        pair = work.image * (self.backbone.num_train_timesteps + 1) + work.t
        uniq, inverse = torch.unique(pair, return_inverse=True)
        u_img, u_t = uniq // (self.backbone.num_train_timesteps + 1), uniq % (self.backbone.num_train_timesteps + 1)
        eps_bank = self.noise([keys[i] for i in u_img.tolist()], u_t.tolist(), tuple(x0.shape[1:])).to(dev)
        out = torch.empty(n)

        def batch(sl: slice) -> torch.Tensor:
            img, t = work.image[sl].to(dev), work.t[sl].to(dev)
            return self.errors(x0[img], eps_bank[inverse[sl].to(dev)], t, conds[work.candidate[sl].to(dev)])

        if self.batch_size is None:  # --batch-size 0: tune once, on this run's real shapes
            from .autotune import auto_batch_size

            first = torch.zeros(MAX_TUNE, dtype=torch.long)
            self.batch_size = auto_batch_size(lambda b: self._tune_step(x0, eps_bank, conds, work, inverse, first[:b]), dev)
        s = 0
        while s < n:
            sl = slice(s, min(s + self.batch_size, n))
            try:
                out[sl] = batch(sl).cpu()
            except Exception as e:  # out of memory mid-run (other jobs on the GPU): halve and retry the batch
                from .autotune import is_oom

                if not is_oom(e) or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            s = sl.stop
        self.calls += n * self.calls_per_item
        return out

    def _tune_step(self, x0, eps_bank, conds, work, inverse, idx) -> None:
        """One batch made of copies of the first work item: the shapes and kernels of the real run."""
        dev = self.backbone.device
        i = idx.to(dev)
        self.errors(x0[work.image[i].to(dev)], eps_bank[inverse[i].to(dev)], work.t[i].to(dev), conds[work.candidate[i].to(dev)])

    def errors(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample score (B,) of one batch - the number a diffusion classifier scores."""
        return self.scorer(x0, eps, t, cond)

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The backbone's ε̂ (v̂) with this run's speed options: channels_last input, autocast, torch.compile."""
        if x_t.ndim == 4:
            x_t = x_t.contiguous(memory_format=self._memory_format)
        with self.autocast():
            return self._denoiser(x_t, t, cond)

    def exhaustive(self, x0: torch.Tensor, keys: list[str], conds: torch.Tensor, ts: list[int]) -> torch.Tensor:
        """E[image, candidate, t] for every triple."""
        N, M, T = x0.shape[0], conds.shape[0], len(ts)
        grid = torch.cartesian_prod(torch.arange(N), torch.arange(M), torch.as_tensor(ts))
        return self.run(x0, keys, conds, Work(grid[:, 0], grid[:, 1], grid[:, 2])).view(N, M, T)
