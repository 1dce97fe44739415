"""Light heads on frozen features: a linear probe and the paper's attention head, with model selection on a
validation split carved from the training data (never the test set).

Inputs are lists of per-source tensors [N, ...] so several (block, t) features fuse by concatenation: the
linear head concatenates flattened features, the attention head concatenates the sources' tokens (each
source has its own input projection and position embedding, so channel counts may differ).

- linear: features standardised with training statistics, multinomial logistic regression with L2 weight
  decay, full-batch L-BFGS (default; the classic linear-probe protocol) or mini-batch AdamW. The decay is
  picked from a grid by validation accuracy; every fit stops early when validation stops improving.
- attention: a learned CLS token + 1-2 pre-norm transformer blocks over the spatial tokens of a pooled map
  (avgK or flat pooling), read out from the CLS token; AdamW with early stopping on validation.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigMixin
from ..errors import DiffdiscError
from ..runs.io import atomic_write

KINDS = ("linear", "attention")
OPTIMIZERS = ("lbfgs", "adamw")
DEFAULT_DECAYS = {"linear": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2), "attention": (0.05,)}


@dataclass(frozen=True)
class HeadConfig(ConfigMixin):
    """kind: linear | attention; optimizer (linear only): lbfgs (full batch) | adamw.
    weight_decays: grid searched on validation (None: the kind's default). patience: validation checks
    (every `eval_every` L-BFGS iterations, or every epoch) without improvement before stopping."""

    config_label = "head config"

    kind: str = "linear"
    optimizer: str = "lbfgs"
    weight_decays: tuple[float, ...] | None = None
    max_iter: int = 300
    eval_every: int = 10
    epochs: int = 60
    batch_size: int = 256
    lr: float | None = None
    patience: int = 5
    dim: int = 128  # attention head: token width after the input projection
    depth: int = 1  # transformer blocks (1-4)
    heads: int = 4
    dropout: float = 0.1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DiffdiscError(f"unknown head {self.kind!r} ({', '.join(KINDS)})")
        if self.optimizer not in OPTIMIZERS:
            raise DiffdiscError(f"unknown optimizer {self.optimizer!r} ({', '.join(OPTIMIZERS)})")
        if self.depth not in (1, 2, 3, 4) or self.dim % self.heads:
            raise DiffdiscError(f"attention head: depth 1-4 and dim divisible by heads (got {self.depth}, {self.dim}/{self.heads})")
        if self.weight_decays is not None and (not self.weight_decays or min(self.weight_decays) < 0):
            raise DiffdiscError("weight_decays must be a non-empty list of non-negative numbers")

    @property
    def decays(self) -> tuple[float, ...]:
        return tuple(self.weight_decays) if self.weight_decays is not None else DEFAULT_DECAYS[self.kind]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.kind == "attention" else 1e-2)


# ---------------------------------------------------------------------- validation split
def stratified_split(labels, fraction: float = 0.1, seed: int = 0, class_names: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: `fraction` of every class (at least one image) held out, seeded."""
    y = np.asarray(labels).reshape(-1)
    if not 0 < fraction < 1:
        raise DiffdiscError(f"validation fraction must be in (0, 1), got {fraction}")
    if (y < 0).any():
        raise DiffdiscError("every training image needs a label to carve a validation split")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            name = class_names[c] if c < len(class_names) else str(c)
            raise DiffdiscError(
                f"too few labelled examples for a validation split: class {name!r} has {len(idx)} "
                "(need at least 2 per class: one to train on, one to validate)"
            )
        k = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        val.append(rng.choice(idx, k, replace=False))
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val), val


# ---------------------------------------------------------------------- models
class LinearHead(nn.Module):
    """Standardise (training mean/std) then one linear layer over the concatenated flattened sources."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.fc = nn.Linear(in_dim, n_classes)

    @staticmethod
    def flatten(xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([x.reshape(x.shape[0], -1).float() for x in xs], 1)

    def standardise(self, xs) -> torch.Tensor:
        return (self.flatten(xs).to(self.mean.device) - self.mean) / self.std

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc(self.standardise(xs))


class AttentionHead(nn.Module):
    """CLS token + pre-norm transformer block(s) over the tokens of every source; logits from the CLS."""

    def __init__(self, channels: Sequence[int], tokens: Sequence[int], n_classes: int, dim: int = 128, depth: int = 1,
                 heads: int = 4, dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(c), nn.Linear(c, dim)) for c in channels)
        self.pos = nn.ParameterList(nn.Parameter(torch.randn(1, n, dim) * 0.02) for n in tokens)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        dev = self.cls.device
        toks = [p(x.to(dev).float().flatten(2).transpose(1, 2)) + pe for x, p, pe in zip(xs, self.proj, self.pos, strict=True)]
        h = torch.cat([self.cls.expand(toks[0].shape[0], -1, -1), *toks], 1)
        return self.fc(self.norm(self.blocks(h)[:, 0]))


def _shapes(xs: Sequence[torch.Tensor]) -> list[list[int]]:
    return [list(x.shape[1:]) for x in xs]


def _build(kind: str, shapes: list[list[int]], n_classes: int, cfg: HeadConfig) -> nn.Module:
    if kind == "linear":
        return LinearHead(sum(math.prod(s) for s in shapes), n_classes)
    if any(len(s) != 3 for s in shapes):
        raise DiffdiscError("the attention head needs spatial tokens: use a pooling that keeps KxK maps (avg2, avg4, flat), not gap")
    return AttentionHead([s[0] for s in shapes], [s[1] * s[2] for s in shapes], n_classes, cfg.dim, cfg.depth, cfg.heads, cfg.dropout)


# ---------------------------------------------------------------------- fitted head
@dataclass
class FittedHead:
    """A trained head with how it was chosen: the decay grid's validation accuracies."""

    model: nn.Module
    config: HeadConfig
    shapes: list[list[int]]
    n_classes: int
    weight_decay: float
    val_acc: float
    grid: dict[float, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, xs: Sequence[torch.Tensor], batch: int = 2048) -> torch.Tensor:
        self.model.eval()
        n = xs[0].shape[0]
        out = [self.model([x[s : s + batch] for x in xs]).argmax(-1).cpu() for s in range(0, n, batch)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def accuracy(self, xs: Sequence[torch.Tensor], y) -> float:
        y = torch.as_tensor(np.asarray(y)).long()
        return float((self.predict(xs) == y).float().mean()) if len(y) else float("nan")

    def save_pretrained(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(out / "head.safetensors", partial(save_file, sd))
        meta = {"config": self.config.to_dict(), "shapes": self.shapes, "n_classes": self.n_classes, "weight_decay": self.weight_decay,
                "val_acc": self.val_acc, "grid": {str(k): v for k, v in self.grid.items()}, "class_names": self.class_names}  # fmt: skip
        (out / "head.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FittedHead:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "head.json").is_file() or not (path / "head.safetensors").is_file():
            raise DiffdiscError(f"{path} is not a saved head (head.json + head.safetensors)")
        meta = json.loads((path / "head.json").read_text())
        cfg = HeadConfig.from_dict(meta["config"])
        model = _build(cfg.kind, meta["shapes"], meta["n_classes"], cfg)
        model.load_state_dict(load_file(str(path / "head.safetensors")))
        return cls(model.eval(), cfg, meta["shapes"], meta["n_classes"], meta["weight_decay"], meta["val_acc"],
                   {float(k): v for k, v in meta["grid"].items()}, meta.get("class_names", []))  # fmt: skip


# ---------------------------------------------------------------------- training
def fit_head(
    train_xs: Sequence[torch.Tensor],
    y_train,
    val_xs: Sequence[torch.Tensor],
    y_val,
    n_classes: int,
    config: HeadConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> FittedHead:
    """Fit one head per weight decay of the grid on the training part; keep the best on validation."""
    cfg = config or HeadConfig()
    if not len(y_val):
        raise DiffdiscError("an empty validation split: nothing to select the head on")
    yt = torch.as_tensor(np.asarray(y_train)).long()
    yv = torch.as_tensor(np.asarray(y_val)).long()
    shapes = _shapes(train_xs)
    best: FittedHead | None = None
    grid: dict[float, float] = {}
    warm = None
    # Largest decay first: it converges fastest, and its weights warm-start the next (L-BFGS path).
    for i, wd in enumerate(sorted(cfg.decays, reverse=True)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _build(cfg.kind, shapes, n_classes, cfg).to(cfg.device)
        if cfg.kind == "linear" and cfg.optimizer == "lbfgs":
            acc = _fit_lbfgs(model, train_xs, yt, val_xs, yv, wd, cfg, warm)
            warm = model.fc.state_dict()
        else:
            with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, leave it as it was
                torch.manual_seed(cfg.seed + 1)
                acc = _fit_adamw(model, train_xs, yt, val_xs, yv, wd, cfg)
        grid[wd] = acc
        if best is None or acc > best.val_acc:
            best = FittedHead(model.eval(), cfg, shapes, n_classes, wd, acc)
        if progress:
            progress(i + 1, len(cfg.decays), f"wd {wd:g}: val {acc:.1%}")
    best.grid = grid
    return best


def _accuracy(model: nn.Module, xs, y: torch.Tensor, batch: int = 4096) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model([x[s : s + batch] for x in xs]).argmax(-1).cpu() for s in range(0, len(y), batch)])
    return float((pred == y).float().mean())


def _fit_lbfgs(model: LinearHead, xs, y, val_xs, yv, wd: float, cfg: HeadConfig, warm=None) -> float:
    """Full-batch L-BFGS on standardised features; validation every `eval_every` iterations, best kept."""
    flat = LinearHead.flatten(xs)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    model.mean.copy_(mean.to(model.mean.device))
    model.std.copy_(std.to(model.std.device))
    if warm is not None:
        model.fc.load_state_dict(warm)
    z = ((flat - mean) / std).to(model.mean.device)
    zv = model.standardise(val_xs)
    y, yv_dev = y.to(z.device), yv.to(z.device)
    opt = torch.optim.LBFGS(model.fc.parameters(), lr=1, max_iter=cfg.eval_every, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model.fc(z), y) + wd * model.fc.weight.pow(2).sum()
        loss.backward()
        return loss

    best_acc, best_state, bad, prev = -1.0, None, 0, None
    for _ in range(max(1, cfg.max_iter // cfg.eval_every)):
        loss = float(opt.step(closure).detach())
        with torch.no_grad():
            acc = float((model.fc(zv).argmax(-1) == yv_dev).float().mean())
        if acc > best_acc:
            best_acc, best_state, bad = acc, copy.deepcopy(model.fc.state_dict()), 0
        else:
            bad += 1
        if bad >= cfg.patience or (prev is not None and abs(prev - loss) < 1e-7 * max(1.0, abs(loss))):
            break
        prev = loss
    model.fc.load_state_dict(best_state)
    return best_acc


def _fit_adamw(model: nn.Module, xs, y, val_xs, yv, wd: float, cfg: HeadConfig) -> float:
    """Mini-batch AdamW; validation every epoch, best weights kept, stop after `patience` epochs without gain."""
    if isinstance(model, LinearHead):
        flat = LinearHead.flatten(xs)
        model.mean.copy_(flat.mean(0).to(model.mean.device))
        model.std.copy_(flat.std(0).clamp_min(1e-6).to(model.std.device))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=wd)
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(y)
    best_acc, best_state, bad = -1.0, None, 0
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            loss = F.cross_entropy(model([x[idx] for x in xs]), y[idx].to(cfg.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = _accuracy(model, val_xs, yv)
        if acc > best_acc:
            best_acc, best_state, bad = acc, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return best_acc

