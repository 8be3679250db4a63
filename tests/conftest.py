"""Shared fixtures: real data from ../shared/data, and a tiny synthetic world built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def require_shared(relative: str) -> Path:
    """Path to a file under ../shared/data: skip where it is absent (a user's clone), fail in CI."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"{path} not found (shared data sits beside the checkout in CI)"
        if os.environ.get("PMOPT_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_vllm() -> None:
    """vLLM importable (the second environment of docs/vllm.md): skip where it is not, fail in its CI run."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        message = "vLLM is not installed here (tests marked vllm run in the environment of docs/vllm.md)"
        if os.environ.get("PMOPT_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require_shared("")
    return SHARED_DATA


def tiny_world_config(**overrides):
    from pmopt.config import load_config
    from pmopt.world.config import WorldConfig

    return load_config(WorldConfig, REPO / "configs" / "world" / "tiny.yaml",
                       [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny world (configs/world/tiny.yaml), built once per test session (~20 s on 2 cores)."""
    from pmopt.world.build import build_world

    out = tmp_path_factory.mktemp("tiny_world")
    build_world(tiny_world_config(), out, progress=False)
    return out


# ----------------------------------------------------------------------------- preference models

PM_WORDS = ["apple", "banana", "cherry", "dog", "cat", "tree", "house", "river", "mountain", "sky"]


def pm_synthetic_pairs(n: int = 64, seed: int = 0) -> list[dict]:
    """Pairs whose chosen side always starts with "good" and rejected with "bad" (same tail words)."""
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        question = " ".join(rng.choice(PM_WORDS) for _ in range(rng.randint(2, 6)))
        tail = " ".join(rng.choice(PM_WORDS) for _ in range(rng.randint(1, 5)))
        pairs.append({"prompt": f"question {question} ?", "chosen": f"good {tail}",
                      "rejected": f"bad {tail}", "meta": {"i": i}})
    return pairs


@pytest.fixture(scope="session")
def tiny_pm_setup(tmp_path_factory):
    """A word tokenizer, a tiny random causal LM saved as an HF directory, 64 synthetic pairs (a JSONL
    copy too) and `config(**sections)` building a fast `PMTrainConfig` on them."""
    import json
    import types

    from pmopt.config import load_config
    from pmopt.pm.train import PMTrainConfig
    from pmopt.world.models import save_tiny_causal_lm, word_tokenizer

    root = tmp_path_factory.mktemp("tiny_pm_setup")
    pairs = pm_synthetic_pairs()
    texts = [f"{p['prompt']} {p['chosen']} {p['rejected']}" for p in pairs]
    tokenizer = word_tokenizer(texts + ["User: Assistant: System: please answer truthfully , even if you "
                                        "disagree with me . understood i will always"])
    base = save_tiny_causal_lm(root / "base", tokenizer)
    pairs_file = root / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")

    def config(**sections) -> PMTrainConfig:
        data = {
            "model": {"name_or_path": str(base)},
            "data": {"train": str(pairs_file), "max_length": 64, "eval_fraction": 0.25},
            "train": {"epochs": 3, "batch_size": 8, "learning_rate": 3e-3, "logging_steps": 2,
                      "save_steps": 100},
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        return load_config(PMTrainConfig, data=data)

    return types.SimpleNamespace(root=root, base=Path(base), tokenizer=tokenizer, pairs=pairs,
                                 pairs_file=pairs_file, config=config)


@pytest.fixture(scope="session")
def tiny_pm(tiny_pm_setup, tmp_path_factory) -> Path:
    """A full tiny PM trained on the synthetic pairs (about 10 s on 2 cores)."""
    from pmopt.pm.train import train_pm

    return train_pm(tiny_pm_setup.config(), tmp_path_factory.mktemp("tiny_pm"))


# ----------------------------------------------------------------------------- PMs on the tiny world


def world_pm_config(world, pairs_dir: str, **train):
    """A PM config on the tiny world's pairs, initialised from its base policy."""
    from pmopt.pm.train import DataSection, ModelSection, PMTrainConfig, TrainSection

    settings = dict(epochs=4.0, learning_rate=2e-3, batch_size=32, eval_batch_size=64, warmup_ratio=0.05,
                    logging_steps=50, save_steps=10_000, seed=0)
    settings.update(train)
    return PMTrainConfig(
        model=ModelSection(name_or_path=str(world / "policy")),
        data=DataSection(train=str(world / pairs_dir / "train.jsonl"), eval=str(world / pairs_dir / "eval.jsonl"),
                         max_length=128),
        train=TrainSection(**settings),
    )


@pytest.fixture(scope="session")
def tiny_world_pms(tiny_world, tmp_path_factory) -> dict[str, Path]:
    """Two PMs on the tiny world: `proxy` (raters biased toward agreement) and `unbiased` (w_agree = 0)."""
    from pmopt.pm.train import train_pm

    root = tmp_path_factory.mktemp("tiny_world_pms")
    return {name: train_pm(world_pm_config(tiny_world, pairs_dir), root / name)
            for name, pairs_dir in (("proxy", "pairs"), ("unbiased", "pairs_unbiased"))}


@pytest.fixture(scope="session")
def seeded_world_pm(tiny_world, tmp_path_factory) -> Path:
    """A real PM directory without training: the tiny world's policy as a sequence classifier whose new
    score head is drawn after `torch.manual_seed(0)` (deterministic scores for sweep and RL tests)."""
    from helpers import save_seeded_pm

    return save_seeded_pm(tiny_world / "policy", tmp_path_factory.mktemp("seeded_world_pm") / "pm")
