"""One rule for hub ids (models and data sets) and one table of model dtypes, shared by every loader."""

from __future__ import annotations

import pytest

from pmopt import policy
from pmopt.data import preferences
from pmopt.hub import looks_like_hub_id
from pmopt.io import PmoptError
from pmopt.pm import loading


@pytest.mark.parametrize("name", ["Anthropic/hh-rlhf", "imdb", "gpt2", "EleutherAI/pythia-70m", "Qwen/Qwen2.5-0.5B",
                                  "org/name_with.dots-and-dashes"])
def test_hub_ids(name):
    assert looks_like_hub_id(name)


@pytest.mark.parametrize("name", ["data/pairs.jsonl", "/abs/dir", "a/b/c", "pairs.jsonl.gz", "./model", "../model",
                                  "~/model", "org/", "/org", "org/name/", "config.yaml", "weights.safetensors", "",
                                  "-org/name", "org name/x"])
def test_not_hub_ids(name):
    assert not looks_like_hub_id(name)


def test_an_existing_local_path_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_hub_id("org/model") and looks_like_hub_id("model")
    (tmp_path / "org" / "model").mkdir(parents=True)
    (tmp_path / "model").write_text("x")
    assert not looks_like_hub_id("org/model") and not looks_like_hub_id("model")


def test_one_definition_everywhere():
    assert preferences.looks_like_hub_id is policy.looks_like_hub_id is looks_like_hub_id
    assert loading.DTYPES is policy.DTYPES == ("float32", "bfloat16", "float16")


def test_dtypes_resolve_with_each_loaders_default():
    import torch

    assert policy.resolve_dtype(None) == "auto" and loading.resolve_dtype(None) is torch.float32
    for name in policy.DTYPES:
        assert policy.resolve_dtype(name) is loading.resolve_dtype(name) is getattr(torch, name)
    assert policy.resolve_dtype("auto") == loading.resolve_dtype("auto") == "auto"
    assert loading.resolve_dtype(torch.bfloat16) is torch.bfloat16
    for resolve in (policy.resolve_dtype, loading.resolve_dtype):
        with pytest.raises(PmoptError, match=r"unknown dtype 'fp8' \(expected auto, float32, bfloat16, float16\)"):
            resolve("fp8")
