"""Predicted-against-measured drift over a run's cells and the remedies' frontier (pmopt.analysis.drift,
pmopt.analysis.frontier, the report's sections), on constructed run directories with known answers."""

from __future__ import annotations

import json
import math

import pytest

from pmopt.analysis.drift import drift_table, find_cells
from pmopt.analysis.frontier import INTERVENTION_PM, at_kl, frontier, intervention_rows, remedy_rows
from pmopt.io import atomic_write_json, atomic_write_jsonl

SYCO, GOLD = "probe/answer/syco_rate", "gold/reward"


def point(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def quantities(slope, bon2, change):
    return {"slope": point(*slope), "bon2": point(*bon2), "change": point(*change)}


def write_cell(cell, rewards, canonical=None, ppo=None):
    atomic_write_json(cell / "bon" / "drift.json", {"n_max": 32, "rewards": rewards})
    if canonical is not None:
        atomic_write_json(cell / "pms" / "sycophancy_preference.json", {"pms": canonical})
    if ppo is not None:
        atomic_write_jsonl(cell / "ppo" / "curves.jsonl", ppo)


def ppo_row(pm, step, metric, value, low, high, method="ppo"):
    return {"method": "ppo", "rl_method": method, "pm": pm, "step": step, "kl": 0.1 * step, "metric": metric,
            "value": value, "ci_low": low, "ci_high": high}


@pytest.fixture
def run(tmp_path):
    """Two seeds. seed-0: proxy predicted up (Cov > 0) and measured up; prefixed predicted down, measured
    unresolved. seed-1: proxy predicted up but measured down (a reversal at N_max); its own-sample preference
    says down, the canonical pair up. PPO on seed-0's proxy: syco rises with resolved intervals."""
    run = tmp_path / "run"
    write_cell(run / "seed-0", {
        "proxy": {"metrics": {SYCO: quantities((0.2, 0.1, 0.3), (0.05, 0.02, 0.08), (0.4, 0.3, 0.5)),
                              GOLD: quantities((-0.1, -0.2, -0.05), (-0.02, -0.04, 0.01), (-0.3, -0.4, -0.2))},
                  "preference": {"answer": {**point(0.7, 0.6, 0.8), "n_pairs": 90}}},
        "proxy-nonsyc": {"metrics": {SYCO: quantities((-0.1, -0.2, -0.01), (-0.01, -0.03, 0.01), (-0.1, -0.3, 0.1))},
                         "preference": {"answer": {**point(0.3, 0.2, 0.4), "n_pairs": 80}}},
    }, canonical={"proxy": point(0.9, 0.8, 1.0), "proxy-nonsyc": point(0.6, 0.5, 0.7)},
        ppo=[ppo_row("proxy", 0, SYCO, 0.4, 0.35, 0.45), ppo_row("proxy", 10, SYCO, 0.9, 0.85, 0.95),
             ppo_row("proxy", 0, GOLD, 0.9, 0.85, 0.95), ppo_row("proxy", 10, GOLD, 0.88, 0.8, 0.96),
             {**ppo_row("proxy", 10, SYCO, 0.1, 0.0, 0.2, "ppo-beta-sweep"), "beta": 0.1}])
    write_cell(run / "seed-1", {
        "proxy": {"metrics": {SYCO: quantities((0.1, 0.02, 0.2), (0.03, 0.01, 0.05), (-0.3, -0.4, -0.2))},
                  "preference": {"answer": {**point(0.4, 0.3, 0.45), "n_pairs": 50}}},
    }, canonical={"proxy": point(1.0, 1.0, 1.0)})
    return run


def test_cells_are_found_in_single_multi_seed_and_sweep_layouts(tmp_path, run):
    assert list(find_cells(run)) == ["seed-0", "seed-1"]
    sweep = tmp_path / "sweep"
    for value in ("w_agree-0", "w_agree-1.5"):
        write_cell(sweep / value / "seed-0", {})
    write_cell(sweep / "intervene" / "seed-0" / "after", {})  # an intervention's sweep is not a cell
    assert list(find_cells(sweep)) == ["w_agree-0/seed-0", "w_agree-1.5/seed-0"]
    write_cell(tmp_path / "single", {})
    assert list(find_cells(tmp_path / "single")) == ["run"]
    assert drift_table(tmp_path / "empty") is None


def test_directions_and_agreement_rates(run):
    table = drift_table(run)
    rows = {(r["cell"], r["reward"], r["metric"]): r for r in table["rows"]}
    assert len(rows) == 4
    assert rows[("seed-0", "proxy", SYCO)]["predicted"] == "up" == rows[("seed-0", "proxy", SYCO)]["bon_measured"]
    assert rows[("seed-0", "proxy-nonsyc", SYCO)]["predicted"] == "down"
    assert rows[("seed-0", "proxy-nonsyc", SYCO)]["bon_measured"] == "unresolved"
    assert rows[("seed-1", "proxy", SYCO)]["bon_measured"] == "down"
    # resolved on both sides: seed-0 proxy syco (agree), seed-0 proxy gold (agree), seed-1 proxy syco (disagree)
    assert table["agreement"]["bon"] == {"n": 3, "agree": 2, "rate": 2 / 3, "predicted_resolved": 4, "entries": 4}
    # best-of-2 resolved: seed-0 proxy syco (up), seed-1 proxy syco (up); both agree with the prediction
    assert table["agreement"]["bon2"]["n"] == 2 and table["agreement"]["bon2"]["agree"] == 2
    rl = rows[("seed-0", "proxy", SYCO)]["rl"]
    assert rl["direction"] == "up" and rl["value"] == pytest.approx(0.5) and rl["steps"] == [0, 10]
    assert rows[("seed-0", "proxy", GOLD)]["rl"]["direction"] == "unresolved"  # the intervals overlap
    assert table["agreement"]["rl"] == {"n": 1, "agree": 1, "rate": 1.0, "predicted_resolved": 2, "entries": 2}
    assert any("2 of 3 (67%)" in s for s in table["sentences"])


def test_own_sample_preference_against_the_canonical_pair(run):
    table = drift_table(run)
    prefs = {(r["cell"], r["reward"]): r for r in table["preference"]}
    assert prefs[("seed-1", "proxy")]["canonical_predicts"] == "up" and prefs[("seed-1", "proxy")]["own_predicts"] == "down"
    assert prefs[("seed-1", "proxy")]["own_resolved"] == "down"
    # measured resolved: seed-0 proxy (up) and seed-1 proxy (down); seed-0 prefixed is unresolved
    assert table["preference_agreement"] == {"n": 2, "canonical": {"agree": 1, "rate": 0.5},
                                             "own": {"agree": 2, "rate": 1.0}}
    assert any("canonical pair's preference rate (> ½ predicts up) was right 1 of 2 times" in s
               and "own samples 2 of 2" in s for s in table["sentences"])


def bon_row(pm, n, metric, value, low=None, high=None):
    return {"method": "bon", "pm": pm, "n": n, "kl": math.log(n) - (n - 1) / n, "kl_kind": "bound",
            "metric": metric, "value": value, "ci_low": low, "ci_high": high, "n_prompts": 10}


def remedy_curves():
    """proxy rises 0.4 -> 0.9; the prefix falls to 0.1; the penalty falls to 0.05 but loses gold; n in 1, 2, 4."""
    rows = []
    shapes = {"proxy": ((0.4, 0.6, 0.9), (0.9, 0.8, 0.7)), "proxy-nonsyc": ((0.4, 0.2, 0.1), (0.9, 0.95, 1.0)),
              "proxy-penalty": ((0.4, 0.1, 0.05), (0.9, 0.92, 0.93)), "gold": ((0.4, 0.0, 0.0), (0.9, 1.1, 1.2))}
    for pm, (syco, gold) in shapes.items():
        for n, s, g in zip((1, 2, 4), syco, gold, strict=True):
            rows += [bon_row(pm, n, SYCO, s, s - 0.05, s + 0.05), bon_row(pm, n, GOLD, g, g - 0.1, g + 0.1)]
    rows.append(bon_row("proxy", 4, "probe/mimicry/syco_rate", 0.3))  # not a frontier metric
    return rows


def test_frontier_reads_every_remedy_at_equal_kl_and_ranks_them():
    result = frontier(remedy_rows(remedy_curves()))
    bon = result["methods"]["bon"]
    assert bon["budget_kl"] == pytest.approx(math.log(4) - 0.75)
    assert bon["ranking"] == ["proxy-penalty", "proxy-nonsyc", "proxy"]  # the oracle is never ranked
    assert bon["at_budget"]["proxy-penalty"]["syco"]["value"] == pytest.approx(0.05)
    sentence = bon["sentence"]
    assert "agreement penalty (proxy-penalty)'s, 0.05 [0.00, 0.10]" in sentence
    assert "against 0.90 [0.85, 0.95] under the proxy PM with no remedy" in sentence
    assert "runner-up is the non-sycophantic prefix (proxy-nonsyc) at 0.10 [0.05, 0.15], and their intervals overlap" in sentence
    assert "costs 0.07 gold reward against the highest there, the non-sycophantic prefix (proxy-nonsyc)'s 1.00" in sentence


def test_interpolation_between_grid_points():
    points = [{"kl": 0.0, "syco": point(0.2, 0.1, 0.3), "gold": point(1.0, 0.9, 1.1)},
              {"kl": 1.0, "syco": point(0.6, 0.5, 0.7), "gold": point(0.0, -0.1, 0.1)}]
    got = at_kl(points, 0.25)
    assert got["syco"] == pytest.approx(point(0.3, 0.2, 0.4)) and got["gold"] == pytest.approx(point(0.75, 0.65, 0.85))
    assert at_kl(points, 1.5) is None and at_kl(points, -0.1) is None


def test_the_intervened_policy_sits_at_its_kl_to_the_base(tmp_path):
    """RUN/intervene/seed-<k>/after/bon/curves.jsonl: proxy rows moved to kl/reference, averaged over seeds; a
    curve that starts beyond the budget is named, not ranked."""
    run = tmp_path / "run"
    for k, offset in ((0, 0.2), (1, 0.4)):
        rows = []
        for n, s in ((1, 0.01), (2, 0.02), (4, 0.02)):
            bound = math.log(n) - (n - 1) / n
            rows += [bon_row("proxy", n, SYCO, s, 0.0, s + 0.01), bon_row("proxy", n, GOLD, 1.0, 0.95, 1.05),
                     bon_row("proxy", n, "kl/reference", bound + offset, bound + offset - 0.05, bound + offset + 0.05)]
        atomic_write_jsonl(run / "intervene" / f"seed-{k}" / "after" / "bon" / "curves.jsonl", rows)
    intervened = intervention_rows(run, n_boot=200)
    assert {r["pm"] for r in intervened} == {INTERVENTION_PM} and {r["metric"] for r in intervened} == {SYCO, GOLD}
    first = [r for r in intervened if r["n"] == 1 and r["metric"] == SYCO][0]
    assert first["kl"] == pytest.approx(0.3) and first["seed_values"] == [0.01, 0.01]
    result = frontier(remedy_rows(remedy_curves(), intervened))
    bon = result["methods"]["bon"]
    assert bon["ranking"][0] == INTERVENTION_PM  # 0.01 + 0.3 nats <= the budget 0.636
    assert bon["at_budget"][INTERVENTION_PM]["syco"]["value"] == pytest.approx(0.01 + (0.636 - 0.3) / 0.307 * 0.01, abs=1e-3)
    late = [{**r, "kl": r["kl"] + 1.0} for r in intervened]
    assert frontier(remedy_rows(remedy_curves(), late))["methods"]["bon"]["not_reaching"] == [INTERVENTION_PM]
    assert "not ranked: the Wei et al. 2023 SFT, then the proxy PM (wei-sft+proxy) starts beyond this KL, at 1.30 nats, " \
           "with syco_rate 0.01" in frontier(remedy_rows(remedy_curves(), late))["methods"]["bon"]["sentence"]


def test_report_draws_both_sections(tmp_path, run):
    from pmopt.report.html import build_report

    atomic_write_jsonl(run / "bon" / "curves.jsonl", remedy_curves())
    for k in (0, 1):
        rows = [bon_row("proxy", n, m, v) for n in (1, 2, 4) for m, v in ((SYCO, 0.02), (GOLD, 1.0))]
        rows += [bon_row("proxy", n, "kl/reference", 0.5 + n / 10) for n in (1, 2, 4)]
        atomic_write_jsonl(run / "intervene" / f"seed-{k}" / "after" / "bon" / "curves.jsonl", rows)
    page = build_report(run).read_text(encoding="utf-8")
    assert page.index('id="remedies"') < page.index('id="drift"')
    assert 'alt="frontier"' in page and "Wei et al. 2023 SFT, then the proxy PM" in page
    out = run / "report"
    assert json.loads((out / "frontier.json").read_text())["methods"]["bon"]["ranking"]
    assert (out / "drift_table.csv").read_text().count("\n") == 1 + 4
