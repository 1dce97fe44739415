"""Captioned training data shared by the `text` and `clip` objectives: scenes or a captions.jsonl, tokenised."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ...errors import DiffdiscError
from ..config import TrainConfig
from .base import data_hash, fmnist_train, init_dir, open_images, resize_note, to_u8


class Captioned:
    """Images with captions: embedded scenes (full and class-only captions) or a user's captions.jsonl.

    `ids[i, v]` are the token ids of variant v of caption i (v=1: class-only, "a sneaker"; equal to v=0 for
    user captions). The word-level tokenizer's vocabulary is built from the captions themselves (when
    fine-tuning, the base model's tokenizer is kept instead).
    """

    def __init__(self, cfg: TrainConfig):
        from ..tokenizer import build_word_tokenizer, words_of

        self.cfg = cfg
        images, variants, names, self.resize_note = self._load(cfg)
        self.images, self.names = images, names
        texts = [v for vs in variants for v in vs]
        src = init_dir(cfg)
        if src is None:
            self.tokenizer = build_word_tokenizer(words_of(texts), max_length=cfg.model.max_length)
        else:  # fine-tuning: the base model's token ids must keep their meaning
            self.tokenizer = self._base_tokenizer(src, words_of(texts))
        lengths = [len(self.tokenizer(t)["input_ids"]) for t in set(texts)]
        if max(lengths) > cfg.model.max_length:
            raise DiffdiscError(f"captions have up to {max(lengths)} tokens; raise max_length ({cfg.model.max_length})")
        enc = self._tokenize(texts)
        self.ids = enc.view(len(images), 2, cfg.model.max_length)
        self.null_ids = self._tokenize([""])[0]
        self.data_hash = data_hash(self.images, self.ids)

    def _base_tokenizer(self, src: Path, words: list[str]):
        from transformers import AutoTokenizer

        tdir = src / "tokenizer" if (src / "tokenizer").is_dir() else src
        if not (tdir / "tokenizer.json").is_file():
            raise DiffdiscError(f"init_from {src} has no tokenizer (expected {tdir / 'tokenizer.json'})")
        tok = AutoTokenizer.from_pretrained(tdir)
        missing = [w for w in words if w not in tok.get_vocab()]
        if missing:
            raise DiffdiscError(f"init_from {src}: its tokenizer lacks caption word {missing[0]!r}")
        tok.model_max_length = self.cfg.model.max_length
        return tok

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=self.cfg.model.max_length, truncation=True,
                              return_tensors="pt")["input_ids"]  # fmt: skip

    @staticmethod
    def _load(cfg: TrainConfig):
        from ...data.images import array_to_tensor

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
            x, note = open_images([cap.parent / r["image"] for r in rows], cfg)
            return x, [(r["caption"], r["caption"]) for r in rows], [], note
        from ...datasets.fashion_mnist import CLASS_NAMES
        from ...datasets.scenes import describe, generate_scenes

        imgs, labels = fmnist_train(cfg)
        n_pair = int(round(cfg.scenes * cfg.pair_fraction))
        cc = cfg.colour_correlation
        sets = [generate_scenes(imgs, labels, cfg.scenes - n_pair, "single", seed=cfg.seed, colour_correlation=cc),
                generate_scenes(imgs, labels, n_pair, "pair", seed=cfg.seed + 1, colour_correlation=cc)]  # fmt: skip
        arrays = np.concatenate([s.images for s in sets if len(s)])
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
        if cfg.image_size != x.shape[-1] or cfg.channels != 3:
            x = to_u8([array_to_tensor(a, cfg.image_size, cfg.channels) for a in arrays])
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

