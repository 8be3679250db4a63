"""`report_to: trackio` for PM training, PPO, RLOO and intervene's SFT, offline.

trackio keeps its runs in a local SQLite store (TRACKIO_DIR) unless told of a Space or server. Each test trains
for a few steps with trackio on, reads the run back through trackio's own storage and compares what it logged
with what pmopt wrote to metrics.jsonl from the same steps. Training and reading run in a fresh Python: trackio
reads TRACKIO_DIR once, when it is imported, and TRL imports it as soon as it is installed, so a test process
that has imported TRL cannot point it anywhere else. trackio is an optional extra (`pip install -e ".[trackio]"`):
these tests skip without it, and fail instead with PMOPT_REQUIRE_TRACKIO=1 (CI sets it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from test_ppo import ppo_config
from test_rloo import rloo_config

from pmopt.config_docs import show_yaml
from pmopt.io import read_metrics


@pytest.fixture
def store(tmp_path):
    if importlib.util.find_spec("trackio") is None:
        message = "trackio is not installed (pip install -e '.[trackio]')"
        if os.environ.get("PMOPT_REQUIRE_TRACKIO") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return tmp_path / "trackio"


def in_fresh_python(store, code: str, **values) -> str:
    """Run `code` (with `values`, `Path` and `json` in scope) in a new interpreter whose trackio logs to `store`."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_PROJECT")}
    env.update(TRACKIO_DIR=str(store), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    prelude = "import json, sys\nfrom pathlib import Path\nvalues = json.loads(sys.argv[1])\n"
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), json.dumps(values)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def trackio_runs(store, project: str) -> dict[str, list[dict]]:
    """{run name: its logged rows} of one trackio project, read by trackio itself."""
    out = in_fresh_python(store, """
        from trackio.sqlite_storage import SQLiteStorage
        runs = {run: SQLiteStorage.get_logs(values["project"], run) for run in SQLiteStorage.get_runs(values["project"])}
        print(json.dumps(runs))
    """, project=project)
    return json.loads(out.splitlines()[-1])


def series(rows: list[dict], key: str) -> list[float]:
    return [row[key] for row in rows if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]


def test_pm_training_logs_its_losses(store, tiny_pm_setup, tmp_path):
    config, out = tmp_path / "pm.yaml", tmp_path / "pm"
    config.write_text(show_yaml(tiny_pm_setup.config(train={"report_to": "trackio", "logging_steps": 2,
                                                              "max_steps": 6})))
    in_fresh_python(store, """
        from pmopt.config import load_config
        from pmopt.pm.train import PMTrainConfig, train_pm
        train_pm(load_config(PMTrainConfig, values["config"]), Path(values["out"]))
    """, config=str(config), out=str(out))
    runs = trackio_runs(store, "pmopt-train-pm")
    assert list(runs) == [str(out)]  # one run, named by the PM's directory
    ours = series(list(read_metrics(out / "metrics.jsonl")), "pm/loss")
    assert len(ours) == 3 and series(runs[str(out)], "train/loss") == pytest.approx(ours)


def run_rl_in_fresh_python(store, cfg, out) -> None:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(show_yaml(cfg))
    in_fresh_python(store, """
        from pmopt.config import load_config
        from pmopt.rl.command import run_rl
        from pmopt.rl.config import PPOConfig
        run_rl(load_config(PPOConfig, values["config"]), Path(values["out"]))
    """, config=str(config), out=str(out))


def test_ppo_logs_every_step(store, tiny_world, tmp_path):
    out = tmp_path / "ppo"
    run_rl_in_fresh_python(store, ppo_config(tiny_world, "report_to=[trackio]", "train.steps=2"), out)
    runs = trackio_runs(store, "pmopt-ppo")
    assert list(runs) == [str(out)]
    ours = [r for r in read_metrics(out / "metrics.jsonl") if "ppo/kl" in r]
    assert len(ours) == 2
    for key in ("ppo/kl", "ppo/reward", "ppo/value_loss"):
        assert series(runs[str(out)], key) == pytest.approx([r[key] for r in ours])
    assert not any("__step" in row for row in runs[str(out)])  # the step is the x axis, not a metric


def test_rloo_logs_its_rewards(store, tiny_world, seeded_world_pm, tmp_path):
    out = tmp_path / "rloo"
    run_rl_in_fresh_python(store, rloo_config(tiny_world, seeded_world_pm, "report_to=[trackio]"), out)
    runs = trackio_runs(store, "pmopt-rloo")
    assert list(runs) == [str(out)]
    ours = [r["rloo/reward"] for r in read_metrics(out / "metrics.jsonl") if "rloo/reward" in r]
    assert len(ours) == 2 and series(runs[str(out)], "train/reward") == pytest.approx(ours)


def test_intervene_sft_logs_its_losses(store, tiny_world, tmp_path):
    from test_intervene import WORLD_CONFIG

    from pmopt import sources
    from pmopt.config import load_config
    from pmopt.intervene.config import InterventionConfig
    from pmopt.io import atomic_write_jsonl

    cfg = load_config(InterventionConfig, WORLD_CONFIG, [f"base.world={tiny_world}", "train.max_steps=4",
                                                          "train.logging_steps=1", "train.report_to=trackio"])
    config, data = tmp_path / "intervene.yaml", tmp_path / "sft.jsonl"
    config.write_text(show_yaml(cfg))
    atomic_write_jsonl(data, sources.open_path(tiny_world).opinion_examples(64, seed=0))
    in_fresh_python(store, """
        from pmopt.config import load_config
        from pmopt.intervene.config import InterventionConfig
        from pmopt.intervene.sft import train_policy
        train_policy(load_config(InterventionConfig, values["config"]), Path(values["policy"]), Path(values["data"]),
                     Path(values["out"]))
    """, config=str(config), policy=str(tiny_world / "policy"), data=str(data), out=str(tmp_path))
    runs = trackio_runs(store, "pmopt-intervene")
    assert list(runs) == [str(tmp_path)]
    ours = series(list(read_metrics(tmp_path / "metrics.jsonl")), "sft/loss")
    assert len(ours) == 4 and series(runs[str(tmp_path)], "train/loss") == pytest.approx(ours)


def test_report_to_trackio_is_a_config_value_of_each_command():
    from pmopt.config_docs import config_class, config_keys

    for command, key in (("train-pm", "train.report_to"), ("ppo", "report_to"), ("intervene", "train.report_to")):
        doc = next(d for d in config_keys(config_class(command)) if d.key == key)
        assert "trackio" in doc.type, (command, doc)
