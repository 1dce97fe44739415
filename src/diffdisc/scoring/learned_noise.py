"""Learned noise (NoOp, Wang & Chen 2025): one ε per timestep, fitted on labelled training images, in place of
random draws.

A diffusion classifier's answer depends on the noise it happens to draw, which is why it averages many. NoOp's
"frequency matching" learns, per dataset and timestep, one noise that makes the right class's denoising error
smallest relative to the others. Here: ε_t is fitted by gradient descent through the frozen denoiser with the
cross-entropy of softmax(-(errors - their mean)/τ_t) over the candidates (τ_t learned alongside), on labelled
training images, and the engine then uses ε_t for every image at t (`ScoringEngine(noise=...)`).

Keeping ε_t a plausible N(0, I) draw (the denoiser was trained on nothing else): the parameter θ_t is free, and
ε_t = `white(θ_t)` keeps only the phases of its 2-D Fourier transform, with every frequency's magnitude set
to 1 (per channel, orthonormal FFT). So ε_t has exactly the flat power spectrum white noise has in
expectation, hence exactly unit variance per channel (Parseval) and a mean of ±1/√(H·W), the size a real
draw's mean has; optimising cannot make it smooth, loud or quiet. (Re-standardising per sample would keep the
variance but let the spectrum drift to low frequencies: noise the denoiser reads as image.) θ_t starts from the
seeded draw the engine's global noise would use at t (whitened: a random-phase white noise).

A file belongs to one model (fingerprint), one kind of score (scorer, loss, weighting), one σ placement and its
timesteps; it records the training images' folder and identity, and `LearnedNoise.check` refuses another
model, score, or classifying the folder it was fitted on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones.capabilities import Capability, require
from ..errors import DiffdiscError
from .calibrate import temperature_key

KIND = "diffdisc learned noise"
VERSION = 1


def white(theta: torch.Tensor) -> torch.Tensor:
    """θ [..., H, W] -> the real signal with θ's Fourier phases and unit magnitude at every frequency (per
    channel): the flat spectrum of white noise, so variance exactly 1 over each H×W plane."""
    if theta.ndim < 2:
        raise DiffdiscError(
            f"learned noise needs at least 2 spatial dimensions, got shape {list(theta.shape)}"
        )
    f = torch.fft.rfft2(theta.float(), norm="ortho")
    return torch.fft.irfft2(f / f.abs().clamp_min(1e-12), s=theta.shape[-2:], norm="ortho")


def noise_stats(eps: torch.Tensor) -> dict:
    """Per-timestep statistics a reader can compare with N(0, I)'s (mean 0, rms and std 1, kurtosis 3)."""
    e = eps.flatten(1).double()
    m, s = e.mean(1), e.std(1)
    kurt = (((e - m[:, None]) / s[:, None]) ** 4).mean(1)
    return {
        "mean": m.tolist(),
        "rms": e.pow(2).mean(1).sqrt().tolist(),
        "std": s.tolist(),
        "kurtosis": kurt.tolist(),
        "max_abs": e.abs().amax(1).tolist(),
    }


@dataclass
class LearnedNoise:
    """ε for each of `timesteps` (`noise` [K, *shape], row k for timesteps[k]), with what it belongs to: `model`
    (name, label, fingerprint), `score` (the temperature key: scorer, loss, weighting), `sigmas`, and `fit`
    (the training data's folder and identity, the settings, the loss before and after, the held-out check)."""

    model: dict
    score: str
    sigmas: str
    timesteps: list[int]
    noise: torch.Tensor
    fit: dict
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        self.timesteps = [int(t) for t in self.timesteps]
        self.noise = self.noise.detach().float().cpu().contiguous()
        where = self.path or "learned noise"
        if len(set(self.timesteps)) != len(self.timesteps) or not self.timesteps:
            raise DiffdiscError(f"{where}: timesteps must be distinct and at least one, got {self.timesteps}")
        if self.noise.shape[0] != len(self.timesteps):
            raise DiffdiscError(f"{where}: {self.noise.shape[0]} noises for {len(self.timesteps)} timesteps")
        if not torch.isfinite(self.noise).all():
            raise DiffdiscError(f"{where}: the noise holds NaN/inf")
        self._row = {t: k for k, t in enumerate(self.timesteps)}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.noise.shape[1:])

    def missing(self, ts) -> list[int]:
        """The timesteps of `ts` this file has no noise for (sorted, once each)."""
        return sorted({int(t) for t in ts} - set(self._row))

    def draw(self, ts, shape: tuple[int, ...]) -> torch.Tensor:
        """ε for each t of `ts` ([len(ts), *shape]), the same for every image; refuses a t it does not cover."""
        if tuple(shape) != self.shape:
            raise DiffdiscError(f"{self.path or 'learned noise'} holds noise of shape {list(self.shape)}; this model's "
                                f"images are {list(shape)}")  # fmt: skip
        if miss := self.missing(ts):
            raise DiffdiscError(self.uncovered(miss))
        return self.noise[[self._row[int(t)] for t in ts]]

    def uncovered(self, miss: list[int]) -> str:
        shown = ", ".join(map(str, miss[:8])) + (" ..." if len(miss) > 8 else "")
        return (f"{self.path or 'learned noise'} has noise for timesteps {self.timesteps} only; this run also scores "
                f"t = {shown}: fit it with those (`diffdisc noise fit --timesteps ...`) or choose timesteps it covers")  # fmt: skip

    def check(self, backbone, score=None, sigmas: str | None = None, data: str | Path | None = None) -> None:
        """Refuse noise fitted for another model, kind of score or σ placement, for another image shape, or on
        the images to classify."""
        where, info = self.path or "learned noise", backbone.info
        require(backbone, Capability.DENOISE, where)
        fp = self.model.get("fingerprint")
        if fp != info.fingerprint:
            raise DiffdiscError(f"{where} was fitted for model {self.model.get('name', '?')} (fingerprint {fp}), not "
                                f"{info.name} ({info.fingerprint}): fit noise for this model with `diffdisc noise fit`")  # fmt: skip
        if score is not None and (key := temperature_key(score)) != self.score:
            raise DiffdiscError(f"{where} was fitted on {self.score!r} scores, not {key!r}: fit it with the same "
                                "--scorer / --loss / --weighting")  # fmt: skip
        if sigmas is not None and sigmas != self.sigmas:
            raise DiffdiscError(f"{where} was fitted with --sigmas {self.sigmas}, not {sigmas}")
        if max(self.timesteps) >= backbone.num_train_timesteps or min(self.timesteps) < 0:
            raise DiffdiscError(
                f"{where} has timesteps {self.timesteps}; {info.name} has 0..{backbone.num_train_timesteps - 1}"
            )
        fitted_on = self.fit.get("data")
        if data is not None and fitted_on and Path(data).expanduser().resolve() == Path(fitted_on):
            raise DiffdiscError(f"{where} was fitted on {fitted_on}, the images to classify: fit it on training images, "
                                "never on the images it is measured on")  # fmt: skip

    # ------------------------------------------------------------------ file
    def metadata(self) -> dict[str, str]:
        return {"kind": KIND, "version": str(VERSION), "model": json.dumps(self.model), "score": self.score,
                "sigmas": self.sigmas, "timesteps": json.dumps(self.timesteps), "fit": json.dumps(self.fit)}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensor `noise`, the rest in its metadata), whole or not at all."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise DiffdiscError(f"{path}: a learned noise file is written as .safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"noise": self.noise}, str(tmp), metadata=self.metadata())
        tmp.replace(path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> LearnedNoise:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("kind") != KIND:
                    raise DiffdiscError(
                        f"{path} is not a learned noise file (written by `diffdisc noise fit`)"
                    )
                if meta.get("version") != str(VERSION):
                    raise DiffdiscError(
                        f"{path} has learned noise version {meta.get('version')}; this diffdisc reads {VERSION}"
                    )
                noise = f.get_tensor("noise")
        except (OSError, SafetensorError) as e:
            raise DiffdiscError(
                f"cannot read learned noise {path}: {getattr(e, 'strerror', None) or e}"
            ) from None
        try:
            return cls(model=json.loads(meta["model"]), score=meta["score"], sigmas=meta["sigmas"],
                       timesteps=json.loads(meta["timesteps"]), noise=noise, fit=json.loads(meta["fit"]), path=path)  # fmt: skip
        except (KeyError, json.JSONDecodeError) as e:
            raise DiffdiscError(f"{path}: learned noise metadata without a readable {e}") from None


def data_identity(items: list[tuple[str, int]]) -> str:
    """A short hash of the (image id, label) pairs a noise was fitted on: the same folder edited is other data."""
    text = "\n".join(f"{k}\t{y}" for k, y in sorted(items))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- fitting
def candidate_errors(scorer, x0: torch.Tensor, eps: torch.Tensor, t: int, conds: torch.Tensor,
                     groups: list[list[int]]) -> torch.Tensor:  # fmt: skip
    """[B, M] errors of B images (all under `eps`, one noise) against every candidate (its group's mean), as the
    engine computes them, but differentiable in `eps`."""
    b, p = x0.shape[0], conds.shape[0]
    xs = x0.repeat_interleave(p, dim=0)
    cs = conds.repeat(b, *([1] * (conds.ndim - 1)))
    ts = torch.full((b * p,), int(t), dtype=torch.long, device=x0.device)
    e = scorer(xs, eps.expand(b * p, *eps.shape), ts, cs).view(b, p)
    return torch.stack([e[:, g].mean(1) for g in groups], dim=1)


def ce_loss(errors: torch.Tensor, labels: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(-(errors - mean over candidates) / τ): the right class's error smallest relative
    to the others' (centring changes no probability; it keeps the logits small)."""
    z = -(errors - errors.mean(1, keepdim=True)) / log_tau.exp()
    return torch.nn.functional.cross_entropy(z, labels)


def fit_noise(scorer, x0: torch.Tensor, labels: torch.Tensor, conds: torch.Tensor, groups: list[list[int]],
              timesteps: list[int], init: torch.Tensor, *, steps: int = 50, lr: float = 0.05, batch_images: int = 16,
              micro_batch: int = 64, seed: int = 0, report_images: int | None = None,
              progress: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Fit one ε per timestep (rows of `init`, the starting θ) on images `x0` with true candidates `labels`.

    Each timestep is fitted on its own (its loss does not involve the others): Adam on θ_t and log τ_t, `steps`
    steps of `batch_images` images drawn without replacement per epoch (seeded), gradients accumulated over
    micro-batches of at most `micro_batch` denoiser inputs. τ_t starts at the spread of the centred errors under
    the starting noise. Returns the learned ε [K, *shape] and a history: per t, the loss on the fitting images
    (the first `report_images` of a seeded order; None: all) before and after (under the starting and the learned noise, each at its τ), its accuracy there (one t
    alone) and the fitted τ."""
    dev = x0.device
    x0, conds, labels = x0.detach().clone(), conds.detach().clone(), labels.detach().clone().to(dev)
    n, p = x0.shape[0], conds.shape[0]
    per = max(1, micro_batch // p)  # images per micro-batch
    rep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: report_images or n].to(dev)
    out = torch.empty_like(init)
    hist = {
        "t": [],
        "loss_before": [],
        "loss_after": [],
        "accuracy_before": [],
        "accuracy_after": [],
        "tau": [],
    }
    for k, t in enumerate(timesteps):
        theta = init[k].detach().clone().to(dev).requires_grad_(True)
        with torch.no_grad():
            before = _all_errors(scorer, x0[rep], white(theta), t, conds, groups, per)
            c = before - before.mean(1, keepdim=True)
            log_tau = torch.tensor(math.log(max(float(c.std()), 1e-8)), device=dev, requires_grad=True)
            loss_before = float(ce_loss(before, labels[rep], log_tau))
        opt = torch.optim.Adam([{"params": [theta], "lr": lr}, {"params": [log_tau], "lr": 0.05}])
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(t))
        order = torch.empty(0, dtype=torch.long)
        for step in range(steps):
            if len(order) < min(batch_images, n):
                order = torch.cat([order, torch.randperm(n, generator=g)])
            idx, order = order[: min(batch_images, n)], order[min(batch_images, n) :]
            opt.zero_grad()
            total = 0.0
            for s in range(0, len(idx), per):
                j = idx[s : s + per].to(dev)
                e = candidate_errors(scorer, x0[j], white(theta), t, conds, groups)
                loss = ce_loss(e, labels[j], log_tau) * (len(j) / len(idx))
                loss.backward()
                total += float(loss.detach())
            opt.step()
            if progress:
                progress(
                    {
                        "t": int(t),
                        "k": k,
                        "of": len(timesteps),
                        "step": step + 1,
                        "steps": steps,
                        "loss": total,
                    }
                )
        with torch.no_grad():
            out[k] = white(theta).cpu()
            after = _all_errors(scorer, x0[rep], out[k].to(dev), t, conds, groups, per)
            hist["t"].append(int(t))
            hist["loss_before"].append(loss_before)
            hist["loss_after"].append(float(ce_loss(after, labels[rep], log_tau)))
            hist["accuracy_before"].append(float((before.argmin(1) == labels[rep]).float().mean()))
            hist["accuracy_after"].append(float((after.argmin(1) == labels[rep]).float().mean()))
            hist["tau"].append(float(log_tau.exp()))
    return out, hist


def _all_errors(scorer, x0, eps, t, conds, groups, per) -> torch.Tensor:
    return torch.cat(
        [candidate_errors(scorer, x0[s : s + per], eps, t, conds, groups) for s in range(0, len(x0), per)]
    )
