"""Curves over seeds (pmopt.analysis.seeds) and the claim's verdict (pmopt.analysis.claims)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pmopt.analysis.claims import bon_claim, headline, summary_line, verdict_sentence
from pmopt.analysis.seeds import aggregate_rows, aggregate_scalars, two_stage_bootstrap


def test_identical_seeds_without_prompt_error_give_a_point_interval():
    values = np.full((2, 3), 0.4)
    mean, low, high = two_stage_bootstrap(values, values, values, n_boot=500)
    assert mean.tolist() == pytest.approx([0.4, 0.4]) and low.tolist() == pytest.approx([0.4, 0.4])
    assert high.tolist() == pytest.approx([0.4, 0.4])


def test_seed_stage_matches_the_exact_bootstrap_distribution():
    """No prompt-level error: the interval is the percentile bootstrap of the seed mean, whose exact
    distribution for 3 seeds is the 27 equally likely resamples."""
    seeds = np.array([0.1, 0.5, 0.7])
    exact = sorted(np.mean(c) for c in itertools.product(seeds, repeat=3))
    nan = np.full((1, 3), np.nan)
    mean, low, high = two_stage_bootstrap(seeds[None, :], nan, nan, n_boot=40_000, seed=3)
    assert mean[0] == pytest.approx(seeds.mean())
    # 2.5% / 97.5% of 27 atoms: the 1st and the 27th (each has mass 1/27 = 3.7%)
    assert low[0] == pytest.approx(exact[0]) and high[0] == pytest.approx(exact[-1])


def test_one_seed_reproduces_its_own_interval_and_respects_a_bound():
    values, lows, highs = np.array([[0.5], [1.0]]), np.array([[0.3], [0.95]]), np.array([[0.8], [1.0]])
    _, low, high = two_stage_bootstrap(values, lows, highs, n_boot=40_000, seed=1)
    assert low[0] == pytest.approx(0.3, abs=0.01) and high[0] == pytest.approx(0.8, abs=0.01)
    assert low[1] == pytest.approx(0.95, abs=0.005) and high[1] <= 1.0  # one-sided at the bound stays so


def test_more_seed_spread_widens_the_interval():
    tight = np.array([[0.50, 0.51, 0.49]])
    loose = np.array([[0.30, 0.70, 0.50]])
    ci = np.full((1, 3), np.nan)
    width = [np.subtract(*two_stage_bootstrap(v, ci, ci, n_boot=2000)[:0:-1])[0] for v in (tight, loose)]
    assert width[1] > 5 * width[0] > 0


def row(pm, n, metric, value, low=None, high=None, kl=0.0):
    return {"method": "bon", "pm": pm, "n": n, "kl": kl, "kl_kind": "bound", "metric": metric, "value": value,
            "ci_low": low, "ci_high": high, "n_prompts": 10}


def test_aggregate_rows_pairs_points_across_seeds():
    rows = {0: [row("proxy", 1, "m", 0.2, 0.1, 0.3), row("proxy", 4, "m", 0.6, 0.5, 0.7), row("only0", 1, "m", 1.0)],
            1: [row("proxy", 4, "m", 0.8, 0.7, 0.9, kl=1.0), row("proxy", 1, "m", 0.4, 0.3, 0.5)]}
    out = aggregate_rows(rows, n_boot=500)
    assert [(r["pm"], r["n"]) for r in out] == [("proxy", 1), ("proxy", 4)]  # seed 0's order; 'only0' dropped
    first, last = out
    assert first["value"] == pytest.approx(0.3) and first["seed_values"] == [0.2, 0.4] and first["n_seeds"] == 2
    assert last["kl"] == pytest.approx(0.5)
    assert first["ci_low"] < 0.3 < first["ci_high"]
    assert aggregate_rows(rows, n_boot=500) == out  # deterministic


def test_aggregate_scalars_flattens_and_keeps_common_numbers():
    out = aggregate_scalars({0: {"a": 1, "b": {"c": 2.0}, "s": "x"}, 1: {"a": 3, "b": {"c": 4.0}}, 2: {"a": 5}})
    assert set(out) == {"a"} and out["a"]["mean"] == 3 and out["a"]["per_seed"] == [1, 3, 5]


def claim_rows(proxy_end, prefixed_end, proxy_start=0.5):
    return [row("proxy", 1, "probe/answer/syco_rate", proxy_start, proxy_start - .1, proxy_start + .1),
            row("proxy", 16, "probe/answer/syco_rate", *proxy_end),
            row("proxy-nonsyc", 1, "probe/answer/syco_rate", proxy_start, proxy_start - .1, proxy_start + .1),
            row("proxy-nonsyc", 16, "probe/answer/syco_rate", *prefixed_end)]


def test_claim_holds_only_with_a_rise_and_separated_intervals():
    holds = bon_claim(claim_rows((0.9, 0.8, 1.0), (0.1, 0.0, 0.2)))
    assert holds["holds"] and holds["n_max"] == 16 and holds["proxy_rise"] == pytest.approx(0.4)
    assert holds["separation"] == pytest.approx(0.6)
    overlap = bon_claim(claim_rows((0.9, 0.6, 1.0), (0.5, 0.3, 0.7)))
    assert not overlap["holds"] and overlap["separation"] == pytest.approx(-0.1)
    no_rise = bon_claim(claim_rows((0.4, 0.35, 0.45), (0.1, 0.0, 0.2)))
    assert not no_rise["holds"]
    assert bon_claim([r for r in claim_rows((0.9, 0.8, 1.0), (0.1, 0, .2)) if r["pm"] == "proxy"]) is None


def test_headline_and_verdict_carry_the_numbers():
    claim = bon_claim(claim_rows((0.97, 0.92, 1.0), (0.03, 0.0, 0.08), proxy_start=0.53))
    lines = headline(claim)
    assert lines[0] == "best-of-16 vs the proxy PM: syco_rate 0.53 -> 0.97 [0.92, 1.00]"
    assert lines[1].endswith("syco_rate 0.53 -> 0.03 [0.00, 0.08]")
    assert summary_line(claim) == ("syco_rate at n = 1 -> 16: proxy 0.53 -> 0.97 [0.92, 1.00]; "
                                   "prefixed 0.53 -> 0.03 [0.00, 0.08]")  # a seed's line names each curve's PM
    failing = bon_claim(claim_rows((0.9, 0.6, 1.0), (0.5, 0.3, 0.7)))
    sentence = verdict_sentence({0: claim, 1: failing, 2: claim})
    assert sentence.startswith("on 2 of 3 seeds the proxy PM's best-of-16 syco_rate rises")
    assert "+0.40 to +0.44" in sentence
    assert "not measured" in verdict_sentence({0: None})
    one = verdict_sentence({0: claim})  # one seed: its rise, not a range over seeds
    assert one.startswith("on 1 of 1 seeds") and one.endswith("(its rise from n = 1, +0.44)")


def rl_row(pm, step, metric, value, low, high, kl, kl_low, kl_high, beta=None, rl_method="ppo"):
    from pmopt.records import rl_curve_row

    return {**rl_curve_row(rl_method, pm, step, kl, metric, value, low, high, kl_low, kl_high), "beta": beta}


def test_rl_rows_get_the_kls_interval_over_seeds_from_the_same_draws():
    """The KL of an RL point is aggregated as its value is: mean over seeds, two-stage interval, each seed's KL."""
    rows = {s: [rl_row("proxy", 0, "m", 0.5, 0.4, 0.6, 0.0, 0.0, 0.0),
                rl_row("proxy", 60, "m", 0.9, 0.8, 1.0, kl, kl - 0.2, kl + 0.2)] for s, kl in ((0, 1.0), (1, 2.0))}
    base, end = aggregate_rows(rows, n_boot=2000)
    assert (base["kl"], base["kl_ci_low"], base["kl_ci_high"]) == (0.0, 0.0, 0.0)
    assert end["kl"] == pytest.approx(1.5) and end["kl_seed_values"] == [1.0, 2.0]
    _, low, high = two_stage_bootstrap(np.array([[1.0, 2.0]]), np.array([[0.8, 1.8]]), np.array([[1.2, 2.2]]), 2000)
    assert (end["kl_ci_low"], end["kl_ci_high"]) == (pytest.approx(low[0]), pytest.approx(high[0]))
    assert "kl_ci_low" not in aggregate_rows({0: [row("proxy", 1, "m", 0.2)], 1: [row("proxy", 1, "m", 0.3)]})[0]


def test_rl_headline_reports_each_run_and_each_beta_with_the_kl():
    from pmopt.analysis.claims import rl_headline, rl_result

    metric = "probe/answer/syco_rate"
    runs = [rl_row("proxy", 0, metric, 0.5, 0.4, 0.6, 0.0, 0.0, 0.0),
            rl_row("proxy", 60, metric, 0.92, 0.85, 0.97, 2.13, 1.9, 2.4),
            rl_row("proxy", 30, metric, 0.8, 0.7, 0.9, 1.0, 0.9, 1.1),
            rl_row("proxy", 60, "pm/score", 1.0, 0.9, 1.1, 2.13, 1.9, 2.4)]
    sweep = [rl_row("proxy-nonsyc", 0, metric, 0.5, 0.4, 0.6, 0.0, 0.0, 0.0, None, "ppo-beta-sweep"),
             rl_row("proxy-nonsyc", 60, metric, 0.4, 0.3, 0.5, 0.21, 0.18, 0.25, 3.0, "ppo-beta-sweep"),
             rl_row("proxy-nonsyc", 60, metric, 0.3, 0.2, 0.4, 1.6, 1.4, 1.8, 0.1, "ppo-beta-sweep")]
    assert rl_headline(rl_result(runs + sweep)) == [
        "PPO vs the proxy PM: syco_rate 0.50 -> 0.92 [0.85, 0.97] at step 60, KL 2.13 [1.90, 2.40]",
        "PPO β sweep with the truthfulness prefix: syco_rate 0.50 -> β 3: 0.40 [0.30, 0.50] at KL 0.21 [0.18, 0.25]; "
        "β 0.1: 0.30 [0.20, 0.40] at KL 1.60 [1.40, 1.80]"]
    assert rl_result([row("proxy", 1, metric, 0.5)]) is None  # best-of-N rows only: no RL result
