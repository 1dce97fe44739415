"""What each recipe trains: its data, its module, the loss of one step and the layout its weights are saved in.

The loop in `train.py` is shared (accelerate, EMA, checkpoints, resume); an objective answers only what
differs between a class-conditional U-Net, a text-conditional U-Net with its text encoder, and a contrastive
open_clip model. Every random draw of a step comes from the generator the loop passes in, so resumed runs
match uninterrupted ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffdiscError
from .recipes import TrainConfig

DATA_ORDER = "per step s: Generator(seed*1000003+s) draws batch indices, caption variant/dropout, t, noise"


def _hash(*arrays: torch.Tensor) -> str:
    """sha256 of the preprocessed training arrays: ties shipped weights to the exact data they saw."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def _to_u8(x: list[torch.Tensor]) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (4x less memory); `u8 / 127.5 - 1` is bit-identical to `to_tensor`."""
    return ((torch.stack(x) + 1) * 127.5).round().to(torch.uint8)


def resize_note(sizes: Counter, modes: Counter, cfg: TrainConfig) -> str | None:
    """The one log line saying how source images ((w, h) and PIL modes counted) become the model's input, or
    None when they already match: a 28x28 folder trained at 32x32 should not be resized silently. Same wording
    as `classify`'s note (both from `images.resize_note`), plus any colour-to-grey conversion."""
    from ..data.images import resize_note as sizes_note

    grey = cfg.channels == 1 and any(m != "L" for m in modes)
    note = sizes_note(sizes, cfg.image_size, "training images")
    parts = [note] if note else []
    if grey:
        parts.append(("" if note else "training images: ") + "colour converted to grey (1-channel model)")
    return "; ".join(parts) or None


def _open_images(paths, cfg: TrainConfig) -> tuple[torch.Tensor, str | None]:
    """Decode and preprocess image files (the inference transform), counting their sizes for `resize_note`."""
    from ..data.images import open_image, to_tensor

    sizes, modes, x = Counter(), Counter(), []
    for path in paths:
        im = open_image(path)
        sizes[im.size] += 1
        modes[im.mode] += 1
        x.append(to_tensor(im, cfg.image_size, cfg.channels))
    return _to_u8(x), resize_note(sizes, modes, cfg)


def _fmnist_train(cfg: TrainConfig):
    """Fashion-MNIST train split, or for the tiny test recipes 64 shipped test images (no system dataset)."""
    from .fashion_mnist import load_fashion_mnist, load_shipped_subset

    if cfg.recipe.startswith("tiny"):
        imgs, labels, _ = load_shipped_subset()
        return imgs[:64], labels[:64]
    return load_fashion_mnist("train")


def init_dir(cfg: TrainConfig) -> Path | None:
    """The model directory `cfg.init_from` names (a shipped model name or a path), checked to be of cfg.kind."""
    if not cfg.init_from:
        return None
    from importlib import resources

    shipped = Path(str(resources.files("diffdisc") / "world" / "assets" / "models")) / cfg.init_from
    src = shipped if "/" not in cfg.init_from and shipped.is_dir() else Path(cfg.init_from).expanduser()
    if not src.is_dir():
        raise DiffdiscError(f"init_from {cfg.init_from!r} is not a model directory or shipped model name")
    meta = src / "diffdisc.json"
    kind = json.loads(meta.read_text()).get("kind") if meta.is_file() else None
    if kind not in (None, cfg.kind):
        raise DiffdiscError(f"init_from {src} is a {kind!r} model; recipe {cfg.recipe!r} trains {cfg.kind!r}")
    return src


def load_init(model: nn.Module, state: dict, src: Path) -> None:
    """Load `state` into `model` strictly: fine-tuning from a model of another architecture is a user error."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise DiffdiscError(f"init_from {src} does not fit this recipe's architecture ({first})") from None


def make_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type="epsilon")


class _Diffusion:
    """Shared by the two diffusion objectives: noising a batch at uniform t, epsilon-prediction MSE."""

    @functools.cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        return make_scheduler(self.cfg).alphas_cumprod

    def _noised(self, x0: torch.Tensor, g: torch.Generator):
        ac = self.alphas_cumprod
        t = torch.randint(0, len(ac), (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise


class ClassCondObjective(_Diffusion):
    """Pixel UNet2DModel with n_classes + 1 class embeddings (the last is the CFG null class)."""

    def __init__(self, cfg: TrainConfig):
        from ..data.images import array_to_tensor

        self.cfg = cfg
        if cfg.data:
            from ..data.folders import open_image_dataset

            ds = open_image_dataset(cfg.data)
            if not ds.class_names or not len(ds):
                raise DiffdiscError(f"{cfg.data}: training needs an ImageFolder (one subfolder of images per class)")
            names = list(ds.class_names)
            images, self.resize_note = _open_images([it.path for it in ds.items], cfg)
            y = torch.tensor(ds.label_index(names))
        else:
            from .fashion_mnist import CLASS_NAMES

            imgs, labels = _fmnist_train(cfg)
            names = list(CLASS_NAMES)
            images = _to_u8([array_to_tensor(a, cfg.image_size, cfg.channels) for a in imgs])
            self.resize_note = resize_note(Counter({imgs.shape[1:3][::-1]: len(imgs)}), Counter({"L": 1}), cfg)
            y = torch.from_numpy(labels)
        self.images, self.labels, self.names = images, y.long(), names
        self.data_hash = _hash(self.images, self.labels)

    def build(self) -> nn.Module:
        from diffusers import UNet2DModel

        cfg = self.cfg
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        return UNet2DModel(
            sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            down_block_types=down, up_block_types=up, num_class_embeds=len(self.names) + 1,
            norm_num_groups=min(32, cfg.block_out_channels[0]),
        )  # fmt: skip

    def init_weights(self, model, src: Path) -> None:
        from diffusers import UNet2DModel

        if not (src / "unet").is_dir():
            raise DiffdiscError(f"init_from {src} has no unet/ directory")
        load_init(model, UNet2DModel.from_pretrained(src / "unet").state_dict(), src)

    def loss(self, model, g: torch.Generator, dev) -> torch.Tensor:
        cfg = self.cfg
        idx = torch.randint(0, len(self.images), (cfg.batch_size,), generator=g)
        x0 = self.images[idx].float() / 127.5 - 1
        labels = self.labels[idx].clone()
        labels[torch.rand(cfg.batch_size, generator=g) < cfg.cond_dropout] = len(self.names)
        x_t, t, noise = self._noised(x0, g)
        pred = model(x_t.to(dev), t.to(dev), class_labels=labels.to(dev)).sample
        return F.mse_loss(pred.float(), noise.to(dev))

    def save(self, model, dest: Path) -> dict:
        model.save_pretrained(dest / "unet", safe_serialization=True)
        make_scheduler(self.cfg).save_pretrained(dest / "scheduler")
        return {"class_names": self.names, "null_class": len(self.names)}


class Captioned:
    """Images with captions: embedded scenes (full and class-only captions) or a user's captions.jsonl.

    `ids[i, v]` are the token ids of variant v of caption i (v=1: class-only, "a sneaker"; equal to v=0 for
    user captions). The word-level tokenizer's vocabulary is built from the captions themselves (when
    fine-tuning, the base model's tokenizer is kept instead).
    """

    def __init__(self, cfg: TrainConfig):
        from .tokenizer import build_word_tokenizer, words_of

        self.cfg = cfg
        images, variants, names, self.resize_note = self._load(cfg)
        self.images, self.names = images, names
        texts = [v for vs in variants for v in vs]
        src = init_dir(cfg)
        if src is None:
            self.tokenizer = build_word_tokenizer(words_of(texts), max_length=cfg.max_length)
        else:  # fine-tuning: the base model's token ids must keep their meaning
            self.tokenizer = self._base_tokenizer(src, words_of(texts))
        lengths = [len(self.tokenizer(t)["input_ids"]) for t in set(texts)]
        if max(lengths) > cfg.max_length:
            raise DiffdiscError(f"captions have up to {max(lengths)} tokens; raise max_length ({cfg.max_length})")
        enc = self._tokenize(texts)
        self.ids = enc.view(len(images), 2, cfg.max_length)
        self.null_ids = self._tokenize([""])[0]
        self.data_hash = _hash(self.images, self.ids)

    def _base_tokenizer(self, src: Path, words: list[str]):
        from transformers import AutoTokenizer

        tdir = src / "tokenizer" if (src / "tokenizer").is_dir() else src
        if not (tdir / "tokenizer.json").is_file():
            raise DiffdiscError(f"init_from {src} has no tokenizer (expected {tdir / 'tokenizer.json'})")
        tok = AutoTokenizer.from_pretrained(tdir)
        missing = [w for w in words if w not in tok.get_vocab()]
        if missing:
            raise DiffdiscError(f"init_from {src}: its tokenizer lacks caption word {missing[0]!r}")
        tok.model_max_length = self.cfg.max_length
        return tok

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=self.cfg.max_length, truncation=True,
                              return_tensors="pt")["input_ids"]  # fmt: skip

    @staticmethod
    def _load(cfg: TrainConfig):
        from ..data.images import array_to_tensor

        if cfg.data:
            path = Path(cfg.data)
            cap = path / "captions.jsonl" if path.is_dir() else path
            if not cap.is_file():
                raise DiffdiscError(f"{cfg.data}: text recipes need a captions.jsonl (rows with 'image' and 'caption')")
            rows = []
            for n, line in enumerate(cap.read_text().splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not {"image", "caption"} <= set(row):
                        raise DiffdiscError(f"{cap}:{n}: need 'image' and 'caption'")
                    rows.append(row)
            if not rows:
                raise DiffdiscError(f"{cap} has no captions")
            x, note = _open_images([cap.parent / r["image"] for r in rows], cfg)
            return x, [(r["caption"], r["caption"]) for r in rows], [], note
        from .fashion_mnist import CLASS_NAMES
        from .scenes import describe, generate_scenes

        imgs, labels = _fmnist_train(cfg)
        n_pair = int(round(cfg.scenes * cfg.pair_fraction))
        cc = cfg.colour_correlation
        sets = [generate_scenes(imgs, labels, cfg.scenes - n_pair, "single", seed=cfg.seed, colour_correlation=cc),
                generate_scenes(imgs, labels, n_pair, "pair", seed=cfg.seed + 1, colour_correlation=cc)]  # fmt: skip
        arrays = np.concatenate([s.images for s in sets if len(s)])
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
        if cfg.image_size != x.shape[-1] or cfg.channels != 3:
            x = _to_u8([array_to_tensor(a, cfg.image_size, cfg.channels) for a in arrays])
        variants = [(s.caption, describe(s.items, s.relation, colours=False)) for ss in sets for s in ss]
        note = resize_note(Counter({arrays.shape[1:3][::-1]: len(arrays)}), Counter({"RGB": 1}), cfg)
        return x, variants, list(CLASS_NAMES), note

    def _batch(self, g: torch.Generator, unique: bool = False):
        """Indices (distinct when `unique`) and the chosen caption variant's token ids."""
        cfg, n = self.cfg, len(self.images)
        idx = torch.randperm(n, generator=g)[: cfg.batch_size] if unique else torch.randint(0, n, (cfg.batch_size,), generator=g)
        variant = (torch.rand(len(idx), generator=g) < cfg.class_only_p).long()
        ids = self.ids[idx, variant].clone()
        ids[torch.rand(len(idx), generator=g) < cfg.cond_dropout] = self.null_ids
        return idx, ids

    def _save_tokenizer(self, dest: Path) -> None:
        self.tokenizer.save_pretrained(dest)


class TextToImage(nn.Module):
    """U-Net + text encoder as one module, so accelerate, the optimiser and EMA see one state dict."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, x_t, t, ids):
        return self.unet(x_t, t, encoder_hidden_states=self.text_encoder(ids)[0]).sample


class TextObjective(Captioned, _Diffusion):
    """UNet2DConditionModel (cross-attention) + small CLIPTextModel, trained jointly from scratch; saved in the
    Stable Diffusion layout without a VAE (pixel space: 32x32 needs no autoencoder), so it loads through the
    same `SDBackbone` as real SD checkpoints."""

    def build(self) -> nn.Module:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg, tok = self.cfg, self.tokenizer
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ))  # fmt: skip
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        unet = UNet2DConditionModel(
            sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=cfg.text_width, attention_head_dim=8,
            norm_num_groups=min(32, cfg.block_out_channels[0]),
        )  # fmt: skip
        return TextToImage(unet, text)

    def init_weights(self, model, src: Path) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        if not ((src / "unet").is_dir() and (src / "text_encoder").is_dir()):
            raise DiffdiscError(f"init_from {src} needs unet/ and text_encoder/ (a text-conditional model)")
        base = TextToImage(UNet2DConditionModel.from_pretrained(src / "unet"),
                           CLIPTextModel.from_pretrained(src / "text_encoder"))  # fmt: skip
        load_init(model, base.state_dict(), src)

    def loss(self, model, g: torch.Generator, dev) -> torch.Tensor:
        idx, ids = self._batch(g)
        x0 = self.images[idx].float() / 127.5 - 1
        x_t, t, noise = self._noised(x0, g)
        pred = model(x_t.to(dev), t.to(dev), ids.to(dev))
        return F.mse_loss(pred.float(), noise.to(dev))

    def save(self, model, dest: Path) -> dict:
        model.unet.save_pretrained(dest / "unet", safe_serialization=True)
        model.text_encoder.save_pretrained(dest / "text_encoder", safe_serialization=True)
        self._save_tokenizer(dest / "tokenizer")
        make_scheduler(self.cfg).save_pretrained(dest / "scheduler")
        # Class names let `classify` run without --classes; "{a} {}" matches the class-only training captions.
        return {"class_names": self.names, "templates": ["{a} {}"]}


class ContrastiveObjective(Captioned):
    """open_clip CLIP (ViT on 32x32 + text transformer) trained with the symmetric InfoNCE loss on the same
    scenes; saved as an open_clip `local-dir:` model (open_clip_config.json + open_clip_model.safetensors +
    tokenizer files), which `open_clip.create_model_and_transforms('local-dir:DIR')` loads."""

    def model_cfg(self) -> dict:
        cfg, tok = self.cfg, self.tokenizer
        return {
            "embed_dim": cfg.embed_dim,
            "vision_cfg": {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.vision_width,
                           "layers": cfg.vision_layers, "head_width": 32 if cfg.vision_width >= 64 else 8},
            "text_cfg": {"context_length": cfg.max_length, "vocab_size": len(tok), "width": cfg.text_width,
                         "heads": cfg.text_heads, "layers": cfg.text_layers, "pad_id": tok.pad_token_id,
                         "eos_id": tok.eos_token_id, "pool_type": "eos", "hf_tokenizer_name": "local",
                         "tokenizer_kwargs": {"clean": "lower"}},
        }  # fmt: skip

    def build(self) -> nn.Module:
        from open_clip.model import CLIP

        c = self.model_cfg()
        text_cfg = {k: v for k, v in c["text_cfg"].items() if k != "tokenizer_kwargs"}
        return CLIP(c["embed_dim"], c["vision_cfg"], text_cfg, output_dict=True)

    def init_weights(self, model, src: Path) -> None:
        from safetensors.torch import load_file

        weights = src / "open_clip_model.safetensors"
        if not weights.is_file():
            raise DiffdiscError(f"init_from {src} has no {weights.name} (a contrastive model)")
        load_init(model, load_file(str(weights)), src)

    def loss(self, model, g: torch.Generator, dev) -> torch.Tensor:
        idx, ids = self._batch(g, unique=True)
        x = (self.images[idx].float() / 127.5 - 1).to(dev)
        ids = ids.to(dev)
        out = model(x, ids)
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        logits = scale * img.float() @ txt.float().T
        # Identical captions in a batch ("a red sneaker" twice) are not negatives: spread the target over them.
        same = (ids[:, None] == ids[None]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def save(self, model, dest: Path) -> dict:
        from safetensors.torch import save_file

        dest.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest / "open_clip_model.safetensors"))
        pre = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
        (dest / "open_clip_config.json").write_text(json.dumps({"model_cfg": self.model_cfg(), "preprocess_cfg": pre}, indent=2))
        self._save_tokenizer(dest)
        return {"class_names": self.names, "templates": ["{a} {}"]}


OBJECTIVES = {"classcond": ClassCondObjective, "text": TextObjective, "clip": ContrastiveObjective}


def make_objective(cfg: TrainConfig):
    if cfg.kind not in OBJECTIVES:
        raise DiffdiscError(f"unknown model kind {cfg.kind!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[cfg.kind](cfg)
