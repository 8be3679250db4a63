"""Tiny tokenizers and models built in-process: the synthetic world's policy (no downloads).

The world's word-level tokenizer and tiny Llama are also what tests and benchmarks build their small
models from.

`word_tokenizer(texts)` builds a real `tokenizers` word-level tokenizer wrapped as a
`PreTrainedTokenizerFast` (saves with `save_pretrained`, loads with `AutoTokenizer.from_pretrained`).
`tiny_llama_config(...)` is a real HF `LlamaConfig`; models are built from it with the Auto classes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
SPECIAL_TOKENS = [PAD, EOS, UNK, BOS]


def word_tokenizer(texts: Iterable[str], split_punctuation: bool = False, min_count: int = 1,
                   max_vocab: int | None = None, model_max_length: int = 512):
    """A word-level tokenizer over `texts`.

    split_punctuation=False splits on whitespace only (the world's texts are pre-spaced);
    True also splits punctuation off words (for free English text such as HH-RLHF).
    Unknown words map to <unk>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(_strip_specials(text)))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        words = words[: max(0, max_vocab - len(SPECIAL_TOKENS))]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
        model_max_length=model_max_length, padding_side="right",
    )
    return tokenizer


def _strip_specials(text: str) -> str:
    return re.sub("|".join(re.escape(t) for t in SPECIAL_TOKENS), " ", text)


def tiny_llama_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      intermediate_size: int = 128, max_position_embeddings: int = 256, **extra):
    """A real 2-layer `LlamaConfig` sized for CPU tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True, **extra,
    )


def save_tiny_causal_lm(directory, tokenizer, seed: int = 0, **config_kwargs):
    """Build a random-init tiny causal LM and save it (with the tokenizer) as an HF directory."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(tokenizer, **config_kwargs))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


__all__ = ["PAD", "EOS", "UNK", "BOS", "SPECIAL_TOKENS", "word_tokenizer", "tiny_llama_config", "save_tiny_causal_lm"]
