"""Helpers shared by tests, benchmarks and scripts (not part of the package).

Tests import this module as `helpers` (pytest puts tests/ on sys.path: there is no tests/__init__.py, the
default `prepend` import mode); benchmarks and scripts put tests/ on sys.path first, as for conftest.
"""

from __future__ import annotations


def save_seeded_pm(policy_dir, out, seed: int = 0):
    """A PM directory without training: a causal LM loaded as a 1-label sequence classifier whose new
    score head is drawn after `torch.manual_seed(seed)`, saved with its tokenizer (deterministic scores
    for tests and benchmarks that need a real PM but not a good one)."""
    import torch

    from pmopt.pm.model import load_seq_cls, load_tokenizer

    torch.manual_seed(seed)
    model = load_seq_cls(str(policy_dir), torch.float32, new_head=True)
    tokenizer = load_tokenizer(str(policy_dir))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
