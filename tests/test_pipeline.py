"""`pmopt run`: the main job end to end on a tiny experiment, its resume, and the world's claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pmopt.cli import main
from pmopt.io import read_jsonl

TINY = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "tiny.yaml"


def syco_at(rows: list[dict], pm: str, n: int) -> dict:
    [row] = [r for r in rows if r["pm"] == pm and r["n"] == n and r["metric"] == "probe/answer/syco_rate"]
    return row


@pytest.fixture(scope="module")
def biased_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "biased"
    assert main(["run", str(TINY), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_run_writes_every_stage_and_resumes(biased_run, capsys):
    manifest = json.loads((biased_run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("world", "pms", "bon", "probes", "report"))
    for path in ("world/policy/config.json", "pms/proxy/pmopt_pm.json", "pms/unbiased/pmopt_pm.json",
                 "bon/curves.jsonl", "probes/metrics.json", "report/report.html"):
        assert (biased_run / path).exists(), path
    before = (biased_run / "bon" / "curves.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["run", str(TINY), "--out", str(biased_run)]) == 0
    printed = capsys.readouterr().out
    assert "stage world: done earlier, skipped" in printed and "stage bon: done earlier, skipped" in printed
    assert (biased_run / "bon" / "curves.jsonl").read_bytes() == before


@pytest.mark.slow
def test_run_refuses_a_different_config_on_the_same_dir(biased_run):
    assert main(["run", str(TINY), "--set", "bon.n_max=8", "--out", str(biased_run)]) == 2


@pytest.mark.slow
def test_claim_biased_raters(biased_run):
    """Proxy PM: sycophancy rises with n by at least 0.3 (docs/results.md); the PM trained on unbiased
    raters (w_agree = 0) ends wholly below it (non-overlapping 95% intervals): the raters' bias drives it.

    The prefixed PM's best-of-32 is not asserted here: on the tiny world whether the prefix turns the PM's
    preference to the truthful answer hangs on its small mean margin (-0.75 to +0.47 across seeds and CPU
    kernels), so best-of-32 with the prefix ends at 0.00-0.04 on most seeds and at 0.70-0.90 on others.
    The prefix's effect on the margin is asserted in test_pm_world; scripts/claims_over_seeds.py measures
    every margin here on other seeds."""
    rows = read_jsonl(biased_run / "bon" / "curves.jsonl")
    n_max = max(r["n"] for r in rows)
    proxy_1, proxy_n = syco_at(rows, "proxy", 1), syco_at(rows, "proxy", n_max)
    unbiased_n = syco_at(rows, "unbiased", n_max)
    assert proxy_n["value"] - proxy_1["value"] >= 0.3, (proxy_1, proxy_n)
    assert unbiased_n["ci_high"] < proxy_n["ci_low"], (unbiased_n, proxy_n)


@pytest.mark.slow
def test_drift_predicts_the_proxy_rise(biased_run):
    """Before any optimisation, the proxy PM's within-prompt covariance with answer sycophancy (and its exact
    best-of-2 drift) is resolved above 0: the rise the claim measures was predictable from the base samples."""
    drift = json.loads((biased_run / "bon" / "drift.json").read_text())
    syco = drift["rewards"]["proxy"]["metrics"]["probe/answer/syco_rate"]
    assert syco["slope"]["ci_low"] > 0 and syco["bon2"]["ci_low"] > 0 and syco["change"]["ci_low"] > 0, syco
    assert drift["rewards"]["proxy"]["preference"]["answer"]["ci_low"] > 0.5


@pytest.mark.slow
def test_claim_unbiased_raters(tmp_path):
    """With w_agree = 0 both PMs lower sycophancy as n grows."""
    out = tmp_path / "unbiased"
    assert main(["run", str(TINY), "--set", "world.raters.w_agree=0", "--set", "probes.enabled=false",
                 "--out", str(out)]) == 0
    rows = read_jsonl(out / "bon" / "curves.jsonl")
    n_max = max(r["n"] for r in rows)
    for pm in ("proxy", "proxy-nonsyc"):
        assert syco_at(rows, pm, n_max)["value"] < syco_at(rows, pm, 1)["value"], pm


def test_agreement_penalty_joins_the_sweep_and_ppo_with_the_fitted_mu(tmp_path):
    """pm.agreement_penalty: a proxy-penalty entry after the proxy (whose scores it reuses), and a PPO reward
    whose lam is the mu the best-of-N stage fitted (None before that stage has run)."""
    from pmopt.config import ConfigError, load_config
    from pmopt.io import atomic_write_json
    from pmopt.pipeline import ExperimentConfig, bon_config, ppo_run_values

    cfg = load_config(ExperimentConfig, TINY, ["pm.agreement_penalty=true"])
    names = [(e.name, e.kind) for e in bon_config(cfg, tmp_path).pms]
    assert names.index(("proxy-penalty", "agreement_penalty")) > names.index(("proxy", "pm"))
    assert ppo_run_values(cfg, tmp_path, "proxy-penalty")["reward"]["lam"] is None
    atomic_write_json(tmp_path / "bon" / "scores" / "proxy-penalty.penalty.json", {"mu": 0.4})
    reward = ppo_run_values(cfg, tmp_path, "proxy-penalty")["reward"]
    assert reward == {"kind": "agreement_penalty", "path": str(tmp_path / "pms" / "proxy"), "prefix": "none",
                      "name": "proxy-penalty", "lam": 0.4}
    with pytest.raises(ConfigError, match="pm.agreement_penalty"):
        ppo_run_values(load_config(ExperimentConfig, TINY), tmp_path, "proxy-penalty")


def test_run_bad_config_fails_before_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("bon:\n  n_maxx: 4\n")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- seeds as an axis

MICRO = ["world.policy.steps=120", "world.pairs.n_pairs=300", "world.corpus.n_dialogues=1500",
         "world.probes.n_questions=8", "world.stats.samples_per_prompt=2", "pm.train.epochs=1.0",
         "pm.unbiased=false", "bon.n_max=4", "bon.n_boot=50", "bon.probes=[answer]", "probes.enabled=false",
         "pm.agreement_penalty=true"]


def micro_run(out: Path, seeds: str, *extra: str) -> Path:
    args = ["run", str(TINY), "--seeds", seeds, "--out", str(out)]
    for override in (*MICRO, *extra):
        args += ["--set", override]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_seeds_run_per_seed_aggregate_and_resume(tmp_path, capsys):
    """`--seeds 0,1`: one experiment per seed in seed-<k>/, curves over seeds at the run's top level, each
    seed's verdict in claims.json; a seed's results do not depend on how many seeds ran at once."""
    run = micro_run(tmp_path / "two", "0,1", "parallel_seeds=2")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["environment"]["cpu"]
    per_seed = {k: read_jsonl(run / f"seed-{k}" / "bon" / "curves.jsonl") for k in (0, 1)}
    assert per_seed[0] != per_seed[1]  # different worlds, PMs and samples
    aggregate = read_jsonl(run / "bon" / "curves.jsonl")
    for row in aggregate[:20]:
        [v0] = [r["value"] for r in per_seed[0] if (r["pm"], r["n"], r["metric"]) == (row["pm"], row["n"], row["metric"])]
        [v1] = [r["value"] for r in per_seed[1] if (r["pm"], r["n"], r["metric"]) == (row["pm"], row["n"], row["metric"])]
        assert row["seed_values"] == [v0, v1] and row["value"] == pytest.approx((v0 + v1) / 2)
    claims = json.loads((run / "claims.json").read_text())
    assert set(claims["per_seed"]) == {"0", "1"} and claims["verdict"].startswith("on ")
    page = (run / "report" / "report.html").read_text()
    assert page.count('id="key-result"') == 1 and 'id="drift"' in page and 'id="remedies"' in page
    assert not (run / "seed-0" / "report").exists()  # per-seed reports are skipped
    for k in (0, 1):  # the penalty's mu fitted per seed on its own base samples, reusing the proxy's scores
        penalty = json.loads((run / f"seed-{k}" / "bon" / "drift.json").read_text())["rewards"]["proxy-penalty"]["penalty"]
        assert penalty["mu"] >= 0 and penalty["cov_after"] <= 1e-12 and penalty["base_scores_from"] == "proxy"

    alone = micro_run(tmp_path / "one", "1", "parallel_seeds=1")  # in-process, one seed
    assert (alone / "seed-1" / "bon" / "curves.jsonl").read_bytes() == (run / "seed-1" / "bon" / "curves.jsonl").read_bytes()

    capsys.readouterr()
    before = (run / "bon" / "curves.jsonl").read_bytes()
    micro_run(run, "0,1", "parallel_seeds=1")  # resume: nothing left to run, same aggregate
    printed = capsys.readouterr().out
    assert "seed 0: done earlier, skipped" in printed and "seed 1: done earlier, skipped" in printed
    assert (run / "bon" / "curves.jsonl").read_bytes() == before
