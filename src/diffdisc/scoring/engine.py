"""Batched, shared-noise denoising errors: the one place where the U-Net is called for scoring.

Work is a flat list of (image, candidate, t) triples. The engine packs any mix of images, candidates and
timesteps into U-Net batches of a fixed size, so the cost per call does not depend on how many candidates
an adaptive strategy still keeps. ε for (image, t) comes from a generator seeded by (seed, image key, t):
every candidate sees the same noise (the variance reduction of Li et al. and Clark & Jaini) and the
numbers agree across batch size, chunking, order of evaluation and number of processes to float rounding
(≈ 1e-8 relative, not bit for bit: other batch shapes may take other kernels).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import DiffdiscError
from .config import ScoreConfig

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
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
    """Turns work into errors; counts U-Net calls (one per work item).

    Make one per run (the auto-tuned batch size and the compiled denoiser are made once) and use it as a
    context manager: `channels_last` converts the backbone's weights in place, and `close()` converts them
    back, so the caller gets its model back as it gave it.
    """

    def __init__(self, backbone: Backbone, config: ScoreConfig | None = None):
        self.backbone = backbone
        self.config = config or ScoreConfig()
        self.calls = 0
        # None until tuned (batch_size 0 = auto); may shrink after an out-of-memory error.
        self.batch_size: int | None = self.config.batch_size or None
        dev = backbone.device.type
        if self.config.dtype != "fp32":
            self.autocast = lambda: torch.autocast(dev, dtype=_AUTOCAST[self.config.dtype])
        else:
            self.autocast = contextlib.nullcontext
        self._memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        self._capture = None
        if self.config.scorer == "attention":
            from .attention import CrossAttentionCapture

            if getattr(backbone, "unet", None) is None or backbone.info.conditioning != "text":
                raise DiffdiscError(f"the attention scorer needs a text-conditional U-Net; {backbone.info.name} is not one")
            self._capture = CrossAttentionCapture(backbone.unet)
        self._restore_format = None  # after every check that can refuse: a refused engine changes nothing
        if self.config.channels_last and not all(
            p.is_contiguous(memory_format=torch.channels_last) for p in backbone.parameters() if p.ndim == 4
        ):
            backbone.to(memory_format=torch.channels_last)
            self._restore_format = torch.contiguous_format
        # Both scorers call the denoiser through _predict (the attention capture sets its processors outside
        # the compiled call). Fixed batch shapes: the last, smaller batch compiles once more.
        self._predict = backbone.predict_eps
        if self.config.compile:
            self._predict = torch.compile(backbone.predict_eps, dynamic=False)

    def close(self) -> None:
        """Convert the backbone's weights back to contiguous if `channels_last` converted them."""
        if self._restore_format is not None:
            self.backbone.to(memory_format=self._restore_format)
            self._restore_format = None

    def __enter__(self) -> ScoringEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ noise
    def noise(self, keys: list[str], ts: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        """ε for each (key, t) pair, drawn on the CPU so every device and process sees the same numbers."""
        g = torch.Generator()
        out = torch.empty((len(ts), *shape))
        for i, (k, t) in enumerate(zip(keys, ts, strict=True)):
            g.manual_seed(derive_seed(self.config.seed, k if self.config.noise == "image" else "", int(t)))
            out[i] = torch.randn(shape, generator=g)
        return out

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def run(self, x0: torch.Tensor, keys: list[str], conds: torch.Tensor, work: Work) -> torch.Tensor:
        """Errors (float32, CPU) for each work item, in work order."""
        n = len(work)
        if n == 0:
            return torch.empty(0)
        dev = self.backbone.device
        # Noise for the unique (image, t) pairs only: candidates reuse it.
        pair = work.image * (self.backbone.num_train_timesteps + 1) + work.t
        uniq, inverse = torch.unique(pair, return_inverse=True)
        u_img, u_t = uniq // (self.backbone.num_train_timesteps + 1), uniq % (self.backbone.num_train_timesteps + 1)
        eps_bank = self.noise([keys[i] for i in u_img.tolist()], u_t.tolist(), tuple(x0.shape[1:])).to(dev)
        x0 = x0.to(dev)
        conds = conds.to(dev)
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

    @property
    def calls_per_item(self) -> int:
        return self.config.calls_per_item

    def errors(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted error (B,) - the number a diffusion classifier scores."""
        bb, cfg = self.backbone, self.config
        x_t = bb.add_noise(x0, eps, t)
        if x_t.ndim == 4:
            x_t = x_t.contiguous(memory_format=self._memory_format)
        with self.autocast():
            if self._capture is not None:
                from .attention import attention_score

                score = attention_score(bb, self._capture, x_t, eps, t, cond, cfg.attention_bias, predict=self._predict)
                return -_finite(score)  # higher attention score = better match; errors are lower = better
            eps_hat = _finite(self._predict(x_t, t, cond))
        if cfg.weighting == "clark":
            # Imagen-style clipped x̂0: unclipped x0-space error = ε-error/SNR explodes near t = T.
            x0_hat = bb.predict_x0(x_t, t, eps_hat)
            if bb.clip_range is not None:
                x0_hat = x0_hat.clamp(*bb.clip_range)
            else:  # latents have no fixed range: clip to this sample's own magnitude
                bound = x0.float().abs().flatten(1).amax(1).view(-1, *([1] * (x0.ndim - 1)))
                x0_hat = torch.maximum(torch.minimum(x0_hat, bound), -bound)
            err = _loss(x0_hat, x0.float(), cfg.loss)
            return err * torch.exp(-cfg.clark_rate * t.double() / bb.num_train_timesteps).float()
        err = _loss(eps_hat, eps.float(), cfg.loss)
        if cfg.weighting == "min_snr":
            snr = bb.snr(t)
            err = err * (snr.clamp(max=cfg.min_snr_gamma) / snr).float().to(err.device)
        return err

    def exhaustive(self, x0: torch.Tensor, keys: list[str], conds: torch.Tensor, ts: list[int]) -> torch.Tensor:
        """E[image, candidate, t] for every triple."""
        N, M, T = x0.shape[0], conds.shape[0], len(ts)
        grid = torch.cartesian_prod(torch.arange(N), torch.arange(M), torch.as_tensor(ts))
        return self.run(x0, keys, conds, Work(grid[:, 0], grid[:, 1], grid[:, 2])).view(N, M, T)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """The one NaN/inf check of both scorers: a NaN must never become a score."""
    if not torch.isfinite(x).all():
        raise DiffdiscError("the model produced NaN/inf predictions (try --dtype fp32, or check the weights)")
    return x


def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l2":
        e = F.mse_loss(pred, target, reduction="none")
    elif kind == "l1":
        e = F.l1_loss(pred, target, reduction="none")
    else:
        e = F.huber_loss(pred, target, reduction="none", delta=1.0)
    return e.flatten(1).mean(1)

