"""Word-level tokenizer for the embedded text model, saved as a normal tokenizer directory.

transformers 5's `CLIPTokenizer(vocab_file=...)` is silently broken for a custom vocabulary, so the small
world uses a `tokenizers` WordLevel model wrapped in `PreTrainedTokenizerFast`: it saves with
`save_pretrained` and loads back through `AutoTokenizer.from_pretrained(dir)`, the path real SD takes.
"""

from __future__ import annotations

import re

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def words_of(texts) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())})


def build_word_tokenizer(words, max_length: int = 16):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(list(SPECIALS) + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
