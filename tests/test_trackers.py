"""`report_to: trackio` for PM training, PPO, RLOO and intervene's SFT, offline.

trackio keeps its runs in a local SQLite store (TRACKIO_DIR) unless told of a Space or server; each test trains
for a few steps with trackio on and reads the run back through trackio's own storage, then compares what it
logged with what pmopt wrote to metrics.jsonl from the same steps. trackio is an optional extra
(`pip install -e ".[trackio]"`): these tests skip without it, and fail instead with PMOPT_REQUIRE_TRACKIO=1
(CI sets it).
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
from test_ppo import ppo_config
from test_rloo import rloo_config

from pmopt.io import read_metrics
from pmopt.rl.command import run_rl


@pytest.fixture(scope="module")
def trackio_storage(tmp_path_factory):
    """trackio's storage, pointed at a fresh directory and kept off the network."""
    if importlib.util.find_spec("trackio") is None:
        message = "trackio is not installed (pip install -e '.[trackio]')"
        if os.environ.get("PMOPT_REQUIRE_TRACKIO") == "1":
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("trackio")
    patch = pytest.MonkeyPatch()
    patch.setenv("TRACKIO_DIR", str(directory))  # read once, when trackio is first imported
    patch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_PROJECT"):
        patch.delenv(name, raising=False)
    import trackio.utils
    from trackio.sqlite_storage import SQLiteStorage

    if directory != trackio.utils.TRACKIO_DIR:
        pytest.fail(f"trackio was imported before this module set TRACKIO_DIR (it logs to {trackio.utils.TRACKIO_DIR})")
    yield SQLiteStorage
    patch.undo()


def logged(storage, project: str) -> list[dict]:
    """Every row of the project's one run."""
    runs = storage.get_runs(project)
    assert len(runs) == 1, runs
    return storage.get_logs(project, runs[0])


def series(rows: list[dict], key: str) -> list[float]:
    return [row[key] for row in rows if key in row and isinstance(row[key], (int, float)) and math.isfinite(row[key])]


def test_pm_training_logs_its_losses(trackio_storage, tiny_pm_setup, tmp_path):
    from pmopt.pm.train import train_pm

    cfg = tiny_pm_setup.config(train={"report_to": "trackio", "logging_steps": 2, "max_steps": 6})
    out = train_pm(cfg, tmp_path / "pm")
    rows = logged(trackio_storage, "pmopt-train-pm")
    ours = series(list(read_metrics(out / "metrics.jsonl")), "pm/loss")
    assert ours and series(rows, "train/loss") == pytest.approx(ours)
    assert trackio_storage.get_runs("pmopt-train-pm") == [str(out)]


def test_ppo_logs_every_step(trackio_storage, tiny_world, tmp_path):
    out = run_rl(ppo_config(tiny_world, "report_to=[trackio]", "train.steps=2"), tmp_path / "ppo")
    rows = logged(trackio_storage, "pmopt-ppo")
    ours = [r for r in read_metrics(out / "metrics.jsonl") if "ppo/kl" in r]
    assert len(ours) == 2
    assert series(rows, "ppo/kl") == pytest.approx([r["ppo/kl"] for r in ours])
    assert series(rows, "ppo/reward") == pytest.approx([r["ppo/reward"] for r in ours])
    assert trackio_storage.get_runs("pmopt-ppo") == [str(out)]


def test_rloo_logs_its_rewards(trackio_storage, tiny_world, seeded_world_pm, tmp_path):
    out = run_rl(rloo_config(tiny_world, seeded_world_pm, "report_to=[trackio]"), tmp_path / "rloo")
    rows = logged(trackio_storage, "pmopt-rloo")
    ours = [r for r in read_metrics(out / "metrics.jsonl") if "rloo/reward" in r]
    assert ours and len(series(rows, "train/reward")) == len(ours)
    assert series(rows, "train/reward") == pytest.approx([r["rloo/reward"] for r in ours])


def test_intervene_sft_logs_its_losses(trackio_storage, tiny_world, tmp_path):
    from test_intervene import WORLD_CONFIG

    from pmopt import sources
    from pmopt.config import load_config
    from pmopt.intervene.config import InterventionConfig
    from pmopt.intervene.sft import train_policy
    from pmopt.io import atomic_write_jsonl

    cfg = load_config(InterventionConfig, WORLD_CONFIG, [f"base.world={tiny_world}", "train.max_steps=4",
                                                          "train.logging_steps=1", "train.report_to=trackio"])
    data = tmp_path / "sft.jsonl"
    atomic_write_jsonl(data, sources.open_path(tiny_world).opinion_examples(64, seed=0))
    train_policy(cfg, tiny_world / "policy", data, tmp_path)
    rows = logged(trackio_storage, "pmopt-intervene")
    ours = series(list(read_metrics(tmp_path / "metrics.jsonl")), "sft/loss")
    assert len(ours) == 4 and series(rows, "train/loss") == pytest.approx(ours)


def test_report_to_trackio_is_a_config_value_of_each_command():
    from pmopt.config_docs import config_class, config_keys

    for command, key in (("train-pm", "train.report_to"), ("ppo", "report_to"), ("intervene", "train.report_to")):
        doc = next(d for d in config_keys(config_class(command)) if d.key == key)
        assert "trackio" in doc.type, (command, doc)
