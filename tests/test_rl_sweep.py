"""RL as a pressure sweep: dense early probes (`probes.dense_steps`, pmopt/rl/config.py) and the KL-coefficient
sweep of `pmopt run` (`ppo.betas`: pmopt/rl/beta_sweep.py, the PPO stage of pmopt/pipeline.py), its curve in
the fits (pmopt/analysis/fits.py) and the report's KL plots.

The sweep test runs real PPO on the tiny world against its gold reward (about 15 s for two runs of 12 steps on
one thread) and checks the sweep curve against the run files it was read from, value for value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pmopt.analysis.fits import FitConfig, fit_rows
from pmopt.cli import main
from pmopt.config import ConfigError, load_config
from pmopt.io import Manifest, read_jsonl
from pmopt.records import rl_curve_row, validate_curve_row
from pmopt.rl.beta_sweep import check_betas, run_dir_name
from pmopt.rl.config import PPOConfig, ProbesSection

REPO = Path(__file__).resolve().parents[1]
SWEEP_STEPS = 12
SWEEP_PROBES = {"every": 4, "dense_steps": 2, "samples_per_prompt": 1, "max_prompts": 24, "n_boot": 20}
STRONG, WEAK = 1.0, 0.01  # betas: a strong leash and almost none


# ============================================================================ the dense probe schedule


@pytest.mark.parametrize(("every", "dense", "last", "expected"), [
    (5, 3, 12, [0, 1, 2, 3, 5, 10, 12]),  # every step to 3, then multiples of 5, and the last step
    (10, 0, 30, [0, 10, 20, 30]),  # no dense steps: the schedule before dense_steps existed
    (0, 2, 6, [0, 1, 2, 6]),  # every 0: the dense steps and the ends only
    (4, 9, 6, [0, 1, 2, 3, 4, 5, 6]),  # dense beyond the run: every step
])
def test_dense_schedule_gives_the_exact_probe_steps(every, dense, last, expected):
    section = ProbesSection(every=every, dense_steps=dense)
    assert section.steps(last) == expected
    assert [s for s in range(last + 1) if section.due(s, last)] == expected


def rl_config(**sections) -> PPOConfig:
    """A config that passes validation (its paths are checked only when a run starts)."""
    data = {"policy": {"path": "WORLD/policy"}, "prompts": {"world": "WORLD"}, "reward": {"kind": "gold"}}
    return load_config(PPOConfig, data={**data, **sections})


def test_negative_dense_steps_is_an_error():
    with pytest.raises(ConfigError, match="probes.dense_steps"):
        rl_config(probes={"dense_steps": -1})


def test_world_ppo_config_probes_densely_where_the_metrics_move():
    cfg = load_config(PPOConfig, REPO / "configs" / "ppo" / "world.yaml")
    assert cfg.probes.steps(cfg.train.steps) == [*range(11), 20, 30, 40, 50, 60]


# ============================================================================ beta checks


def test_bad_betas_are_errors_naming_the_key():
    fixed, adaptive = rl_config(), rl_config(kl={"adaptive": True})
    check_betas([1.0, 0.1, 0.0], fixed)
    check_betas([], adaptive)  # no sweep: the adaptive controller is allowed as before
    for betas, cfg, message in (([0.1, -1.0], fixed, ">= 0"), ([0.1, 0.1], fixed, "distinct"),
                                ([0.1], adaptive, "kl.adaptive")):
        with pytest.raises(ConfigError, match=f"ppo.betas.*{message}"):
            check_betas(betas, cfg)


def test_run_with_a_bad_beta_exits_2_before_any_stage(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", str(REPO / "configs" / "experiments" / "rl_beta_sweep_tiny.yaml"), "--out", str(out),
            "--set", "ppo.betas=[0.1, 0.1]"]
    assert main(args) == 2
    assert "ppo.betas" in capsys.readouterr().err
    assert not (out / "world").exists()


def test_best_of_n_and_rl_must_sample_alike_to_share_the_kl_axis():
    from pmopt.pipeline import check_one_kl_axis
    from pmopt.sampling import SamplingConfig

    check_one_kl_axis(SamplingConfig(max_new_tokens=24), SamplingConfig(max_new_tokens=16))  # lengths may differ
    for key, value in (("temperature", 0.7), ("top_p", 0.9), ("top_k", 5)):
        with pytest.raises(ConfigError, match=f"sampling.{key}.*different base distributions"):
            check_one_kl_axis(SamplingConfig(), SamplingConfig(**{key: value}))


def test_run_dir_names_keep_distinct_betas_apart():
    assert [run_dir_name(b) for b in (1, 1.0, 0.03, 1e-05)] == ["beta-1.0", "beta-1.0", "beta-0.03", "beta-1e-05"]
    assert run_dir_name(0.1234567) != run_dir_name(0.1234568)


# ============================================================================ the sweep in `pmopt run`


def sweep_stage(tmp_path: Path, world: Path, betas: list[float]):
    """The PPO stage of `pmopt run` on a run directory holding the tiny world, optimising its gold reward (the
    PPO config's `reward.kind` is ignored: the stage sets each run's reward from its `pms` entry)."""
    from pmopt.pipeline import ExperimentConfig, stage_ppo

    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    if not (run / "world").exists():
        (run / "world").symlink_to(world)
    ppo_yaml = tmp_path / "ppo.yaml"
    ppo_yaml.write_text(yaml.safe_dump({
        "reward": {"kind": "raters"},
        "prompts": {"n_prompts": 64},
        "sampling": {"max_new_tokens": 16},
        "train": {"steps": SWEEP_STEPS, "rollout_batch_size": 16, "minibatch_size": 8, "ppo_epochs": 2,
                  "learning_rate": 3e-4},
        "probes": SWEEP_PROBES,
        "checkpoint": {"every": 100, "keep": 1},
        "threads": 1,
    }))
    cfg = load_config(ExperimentConfig, data={"ppo": {"enabled": True, "config": str(ppo_yaml), "pms": ["gold"],
                                                      "betas": betas}})
    stage_ppo(cfg, run, Manifest(run))
    return run


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, tiny_world) -> Path:
    return sweep_stage(tmp_path_factory.mktemp("sweep"), tiny_world, [STRONG, WEAK])


def sweep_curve(run: Path) -> list[dict]:
    return read_jsonl(run / "ppo" / "curves.jsonl", validate_curve_row)


def test_sweep_writes_one_run_per_pm_and_beta_marked_in_the_manifest(sweep_run):
    manifest = json.loads((sweep_run / "manifest.json").read_text())["stages"]
    for beta in (STRONG, WEAK):
        run_dir = sweep_run / "ppo" / "gold" / run_dir_name(beta)
        assert load_config(PPOConfig, run_dir / "config.yaml").kl.beta == beta
        assert json.loads((run_dir / "manifest.json").read_text())["stages"]["ppo"]["status"] == "done"
        assert manifest[f"ppo/gold/{run_dir_name(beta)}"]["status"] == "done"
        steps = sorted({r["step"] for r in read_jsonl(run_dir / "curves.jsonl")})
        assert steps == [0, 1, 2, 4, 8, 12]  # dense to step 2, then every 4: the schedule in a real run


def test_sweep_curve_is_each_runs_mean_of_its_last_three_evaluations(sweep_run):
    curve = sweep_curve(sweep_run)
    assert {r["rl_method"] for r in curve} == {"ppo-beta-sweep"} and {r["pm"] for r in curve} == {"gold"}
    metrics = {r["metric"] for r in curve}
    assert {"gold/reward", "pm/score", "probe/answer/syco_rate"} <= metrics
    base = read_jsonl(sweep_run / "ppo" / "gold" / run_dir_name(STRONG) / "curves.jsonl")
    assert [r for r in curve if r["beta"] is None] == [
        {**r, "rl_method": "ppo-beta-sweep", "beta": None, "steps": [0]} for r in base if r["step"] == 0]
    for beta in (STRONG, WEAK):
        rows = read_jsonl(sweep_run / "ppo" / "gold" / run_dir_name(beta) / "curves.jsonl")
        for point in (r for r in curve if r["beta"] == beta):
            members = [r for r in rows if r["metric"] == point["metric"] and r["step"] in (4, 8, SWEEP_STEPS)]
            assert point["steps"] == [4, 8, SWEEP_STEPS] and point["step"] == SWEEP_STEPS
            for field in ("value", "kl", "kl_ci_low", "kl_ci_high", "ci_low", "ci_high"):
                assert point[field] == pytest.approx(np.mean([r[field] for r in members])), field
    assert [sum(r["beta"] == b for r in curve) for b in (None, STRONG, WEAK)] == [len(metrics)] * 3
    assert (sweep_run / "ppo" / "curves.csv").read_text().startswith("method,rl_method,pm,step,kl,kl_ci_low")


def test_end_point_averages_steps_and_keeps_missing_bounds_missing():
    from pmopt.rl.beta_sweep import end_point

    def at(step, metric, value, low, kl):
        return rl_curve_row("ppo", "proxy", step, kl, metric, value, low, value + 0.1, kl - 0.1, kl + 0.1)

    rows = {40: [at(40, "a", 0.2, 0.1, 1.0), at(40, "b", 0.5, None, 1.0), at(40, "c", 0.1, 0.0, 1.0)],
            50: [at(50, "a", 0.4, 0.3, 2.0), at(50, "b", 0.7, 0.6, 2.0)]}
    a, b = end_point(rows)  # "c" is not probed at step 50: no averaged point
    assert (a["metric"], a["step"], a["steps"]) == ("a", 50, [40, 50])
    assert (a["value"], a["ci_low"], a["ci_high"]) == pytest.approx((0.3, 0.2, 0.4))
    assert (a["kl"], a["kl_ci_low"], a["kl_ci_high"]) == pytest.approx((1.5, 1.4, 1.6))
    assert b["value"] == pytest.approx(0.6) and b["ci_low"] is None
    one = end_point({50: rows[50]})  # one evaluation: exactly the run's rows
    assert one == [{**r, "steps": [50]} for r in rows[50]]


def test_a_stronger_leash_ends_at_a_smaller_kl(sweep_run):
    kl = {r["beta"]: r["kl"] for r in sweep_curve(sweep_run) if r["metric"] == "gold/reward"}
    assert kl[None] == 0.0
    assert kl[WEAK] > 3 * kl[STRONG] and kl[WEAK] - kl[STRONG] > 0.15, kl


def test_resume_skips_finished_runs_and_reruns_the_unfinished(sweep_run, tiny_world, monkeypatch):
    import pmopt.rl.command

    before = (sweep_run / "ppo" / "curves.jsonl").read_bytes()
    real, calls = pmopt.rl.command.run_rl, []

    def recorded(cfg, out, reward_fn=None):
        calls.append(cfg.kl.beta)
        return real(cfg, out, reward_fn)

    monkeypatch.setattr(pmopt.rl.command, "run_rl", recorded)
    sweep_stage(sweep_run.parent, tiny_world, [STRONG, WEAK])
    assert calls == []
    Manifest(sweep_run / "ppo" / "gold" / run_dir_name(WEAK)).mark("ppo", "running")  # as if killed
    sweep_stage(sweep_run.parent, tiny_world, [STRONG, WEAK])
    assert calls == [WEAK]  # resumed from its last checkpoint, so nothing is trained twice
    assert (sweep_run / "ppo" / "curves.jsonl").read_bytes() == before


# ============================================================================ the sweep curve in fits and plots


def synthetic_sweep(alpha: float, beta: float, base: float = 0.5) -> list[dict]:
    """A base point and four final points on gold(d) = base + d(alpha - beta log d), d = sqrt(KL), all at
    the runs' last step, beside a PPO step curve of the same PM that must stay a curve of its own."""
    rows = [{**rl_curve_row("ppo", "proxy", 0, 0.0, "gold/reward", base, None, None),
             "rl_method": "ppo-beta-sweep", "beta": None}]
    for coefficient, kl in ((1.0, 0.2), (0.3, 0.9), (0.1, 2.5), (0.03, 6.0)):
        d = math.sqrt(kl)
        value = base + d * (alpha - beta * math.log(d))
        rows.append({**rl_curve_row("ppo", "proxy", 40, kl, "gold/reward", value, None, None),
                     "rl_method": "ppo-beta-sweep", "beta": coefficient})
    rows += [rl_curve_row("ppo", "proxy", s, 0.5 * s, "gold/reward", 0.1 * s, None, None) for s in range(4)]
    return rows


def test_fits_fit_the_sweep_curve_with_the_rl_form():
    fits, _ = fit_rows(synthetic_sweep(alpha=0.4, beta=0.3), FitConfig(metrics=["gold/reward"], n_boot=0))
    sweep = [f for f in fits if f["rl_method"] == "ppo-beta-sweep"]
    assert len(sweep) == 1 and len(fits) == 2  # the step curve is fitted apart
    fit = sweep[0]
    assert (fit["form"], fit["label"], fit["n_points"], fit["kl_kind"]) == ("rl", "proxy (PPO β sweep)", 4, "rao_blackwell")
    np.testing.assert_allclose([fit["alpha"], fit["beta"], fit["r2"]], [0.4, 0.3, 1.0], rtol=1e-9)
    assert fit["peak"]["kl"] == pytest.approx(math.exp(0.4 / 0.3 - 1) ** 2)  # d* = exp(alpha/beta - 1)


def test_report_draws_the_sweep_as_its_own_line_ordered_by_kl():
    from pmopt.report import plots

    rows = list(reversed(synthetic_sweep(alpha=0.4, beta=0.3)))
    fig, ax = plots._new_figure("gold/reward")
    plots._draw_vs_kl(ax, plots._series(rows, "gold/reward", None, "kl"), plots.pm_styles(rows))
    lines = {line.get_label(): [float(x) for x in line.get_xdata()] for line in ax.get_lines()}
    assert lines == {"proxy (PPO)": [0.0, 0.5, 1.0, 1.5], "proxy (PPO β sweep)": [0.0, 0.2, 0.9, 2.5, 6.0]}


def test_each_ppo_run_optimises_the_reward_its_entry_names(tmp_path):
    from pmopt.config import ConfigError
    from pmopt.pipeline import ExperimentConfig, ppo_run_values

    cfg = load_config(ExperimentConfig, data={})
    run = tmp_path / "run"
    proxy, nonsyc, gold = (ppo_run_values(cfg, run, pm)["reward"] for pm in ("proxy", "proxy-nonsyc", "gold"))
    assert proxy == {"kind": "pm", "path": str(run / "pms" / "proxy"), "prefix": "none", "name": "proxy"}
    assert nonsyc == {**proxy, "prefix": "non_sycophantic", "name": "proxy-nonsyc"}
    assert gold == {"kind": "gold", "path": str(run / "world"), "prefix": "none", "name": "gold"}
    with pytest.raises(ConfigError, match="ppo.pms: unknown PM 'raters'"):
        ppo_run_values(cfg, run, "raters")


# ============================================================================ the KL axis over seeds (slow)

AXIS_BETAS = (3.0, 1.0, 0.3)  # decreasing: the end KL must rise along them
AXIS_SEEDS = (0, 1, 2)


def axis_sweep(out: Path, world: Path, seed: int, learning_rate: float = 1e-4) -> tuple[list[dict], dict]:
    """A β sweep of short PPO runs on the tiny world against its raters' (agreement-biased) reward: the sweep
    curve and, per β, the run's (step, probe KL) pairs."""
    from pmopt.rl.beta_sweep import run_beta_sweep

    cfg = rl_config(policy={"path": str(world / "policy")}, prompts={"world": str(world), "n_prompts": 64,
                                                                     "templates": {"suggest_wrong": 1.0}},
                    reward={"kind": "raters"}, seed=seed, sampling={"max_new_tokens": 16},
                    train={"steps": 12, "rollout_batch_size": 16, "minibatch_size": 8, "ppo_epochs": 2,
                           "target_kl": 0.05, "learning_rate": learning_rate},
                    probes={**SWEEP_PROBES, "every": 2, "samples_per_prompt": 2, "max_prompts": 48},
                    checkpoint={"every": 100, "keep": 1}, threads=1)
    curve = run_beta_sweep(cfg, out, AXIS_BETAS, end_evaluations=2)
    kls = {beta: [(r["step"], r["kl"]) for r in read_jsonl(out / run_dir_name(beta) / "curves.jsonl")
                  if r["metric"] == "pm/score"] for beta in AXIS_BETAS}
    return curve, kls


def kl_axis_margins(curve: list[dict], kls: dict) -> dict[str, float]:
    """What the slow test asserts, as margins (> 0: holds): per run, the largest jump between consecutive probe
    KLs after step 0 (either way) is under 10x, and the KL at the last step is at least 1.5x the KL at step 1;
    the sweep's end KLs rise by at least 1.2x at each step down in β."""
    margins = {}
    for beta, points in kls.items():
        values = [k for step, k in points if step > 0]
        jumps = [max(b / a, a / b) for a, b in zip(values, values[1:], strict=False)]
        margins[f"beta={beta}: no 10x jump"] = 10.0 - max(jumps)
        margins[f"beta={beta}: rises"] = values[-1] / values[0] - 1.5
    ends = [next(r["kl"] for r in curve if r["beta"] == beta and r["metric"] == "pm/score") for beta in AXIS_BETAS]
    for i in range(1, len(AXIS_BETAS)):
        margins[f"end KL at beta={AXIS_BETAS[i]} over beta={AXIS_BETAS[i - 1]}"] = ends[i] / ends[i - 1] - 1.2
    return margins


@pytest.mark.slow
def test_kl_rises_with_steps_and_end_kls_are_ordered_by_beta_over_seeds(tmp_path, tiny_world):
    """On 3 seeds of short PPO runs at the default learning rate of the world configs: each run's probe KL
    (Rao-Blackwellised) rises from step to step without order-of-magnitude jumps, and the β sweep's end KLs
    (each the mean of the last two evaluations) are ordered by β. About 2 min on 2 idle cores."""
    for seed in AXIS_SEEDS:
        margins = kl_axis_margins(*axis_sweep(tmp_path / f"seed-{seed}", tiny_world, seed))
        failing = {k: round(v, 3) for k, v in margins.items() if v <= 0}
        assert not failing, (seed, failing, margins)
