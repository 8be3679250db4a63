"""`sweep: {key, values}` in an experiment config (pmopt.sweep) and the dose-response over its values
(pmopt.analysis.dose_response): the axis's checks, its resume, the aggregation on synthetic inputs, and on a
small real sweep over the raters' bias, that the instrument responds in the direction the world plants."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from pmopt.analysis.dose_response import (
    aggregate_cells,
    cell_measures,
    dose_response,
    dose_response_csv,
    preference_rate,
    sentence,
    table_lines,
    trend,
)
from pmopt.cli import main
from pmopt.io import read_jsonl

TINY = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "tiny.yaml"
SWEEP = "sweep={key: world.raters.w_agree, values: [0, 1.5, 3]}"


# ----------------------------------------------------------------------------- the axis's checks


@pytest.mark.parametrize("sweep, named", [
    ("sweep={key: world.raters.w_agre, values: [0, 1]}", "world.raters.w_agre"),
    ("sweep={key: world.ratrs.w_agree, values: [0, 1]}", "world.ratrs.w_agree"),
    ("sweep={key: world.raters.w_agree.x, values: [0, 1]}", "world.raters.w_agree.x"),
    ("sweep={key: seed, values: [0, 1]}", "seed"),
    ("sweep={key: world.seed, values: [0, 1]}", "world.seed"),
    ("sweep={key: world.raters.w_agree, values: [0, high]}", "world.raters.w_agree"),
    ("sweep={key: world.raters.w_agree, values: []}", "world.raters.w_agree"),
    ("sweep={key: world.raters.w_agree, values: [1, 1.0]}", "w_agree-1"),
])
def test_a_bad_sweep_is_one_line_naming_the_key_before_work(tmp_path, capsys, sweep, named):
    out = tmp_path / "out"
    assert main(["run", str(TINY), "--set", sweep, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and err.startswith("pmopt run: error:"), err
    assert not out.exists()


def test_a_bad_sweep_key_in_a_file_names_the_file_and_the_key(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text("sweep:\n  key: world.raters.w_agreee\n  values: [0, 3]\n")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(config) in err and "sweep.key 'world.raters.w_agreee'" in err and "unknown config key" in err, err


def test_sweep_values_are_typed_as_the_key_and_name_the_cells(tmp_path):
    from pmopt.config import load_config
    from pmopt.pipeline import ExperimentConfig
    from pmopt.sweep import cells_of, check_sweep

    cfg = load_config(ExperimentConfig, TINY, [SWEEP, "seeds=[4, 7]"])
    by_value = check_sweep(cfg)
    assert list(by_value) == [0.0, 1.5, 3.0] and all(isinstance(v, float) for v in by_value)
    assert [c.world.raters.w_agree for c in by_value.values()] == [0.0, 1.5, 3.0]
    assert all(c.sweep.key is None and c.world.pairs.n_pairs == 2400 for c in by_value.values())
    cells = cells_of(cfg, tmp_path)
    assert [c.name for c in cells] == ["w_agree-0/seed-4", "w_agree-1.5/seed-4", "w_agree-3/seed-4",
                                       "w_agree-0/seed-7", "w_agree-1.5/seed-7", "w_agree-3/seed-7"]
    assert cells[4].dir == tmp_path / "w_agree-1.5" / "seed-7"
    assert (cells[4].cfg.seed, cells[4].cfg.world.seed, cells[4].cfg.seeds) == (7, 7, [])
    assert cells[4].cfg.world.raters.w_agree == 1.5


# ----------------------------------------------------------------------------- resume


def fake_cell(cfg, cell_dir: Path, threads: int, policy_cache: Path | None = None) -> float:
    """Stands in for one cell's experiment: the files the dose-response reads, with numbers set by w_agree."""
    from pmopt.io import atomic_write_json, atomic_write_jsonl

    w, k = cfg.world.raters.w_agree, cfg.seed
    FAKE_CALLS.append((w, k))
    assert policy_cache == cell_dir.parent.parent / "policy_cache"  # every cell shares the sweep's policies
    atomic_write_json(cell_dir / "world" / "world_stats.json", {"preference_regression": {"raters": {
        "agrees_with_user": {"weight": w * 3 + k, "ci_low": w * 3 + k - 0.5, "ci_high": w * 3 + k + 0.5}}}})
    atomic_write_json(cell_dir / "pms" / "sycophancy_preference.json",
                      {"pms": {"proxy": {"value": min(1.0, w / 3), "ci_low": None, "ci_high": None}}})
    rows = [{"method": "bon", "pm": pm, "n": n, "kl": 0.0, "kl_kind": "bound", "metric": "probe/answer/syco_rate",
             "value": v, "ci_low": v, "ci_high": v, "n_prompts": 4}
            for pm, n, v in (("proxy", 1, 0.4), ("proxy", 4, 0.4 + w / 10), ("proxy-nonsyc", 1, 0.4),
                             ("proxy-nonsyc", 4, 0.1))]
    atomic_write_jsonl(cell_dir / "bon" / "curves.jsonl", rows)
    return 0.0


FAKE_CALLS: list[tuple[float, int]] = []


def test_a_sweep_runs_every_cell_once_and_resumes(tmp_path, capsys, monkeypatch):
    import pmopt.multiseed

    monkeypatch.setattr(pmopt.multiseed, "run_one_seed", fake_cell)
    FAKE_CALLS.clear()
    out = tmp_path / "sweep"
    args = ["run", str(TINY), "--set", "sweep={key: world.raters.w_agree, values: [0, 3]}", "--seeds", "0,1",
            "--set", "parallel_seeds=1", "--out", str(out)]
    assert main(args) == 0
    assert FAKE_CALLS == [(0.0, 0), (3.0, 0), (0.0, 1), (3.0, 1)]
    printed = capsys.readouterr().out  # each cell's line names the PM of each number
    assert ("run: w_agree = 3, seed 1 done in 0 s; claim holds: syco_rate at n = 1 -> 4: proxy 0.40 -> 0.70 "
            "[0.70, 0.70]; prefixed 0.40 -> 0.10 [0.10, 0.10]") in printed.splitlines()
    assert "run: w_agree = 0, seed 0 done in 0 s; claim does NOT hold: syco_rate at n = 1 -> 4: proxy 0.40 -> " \
           "0.40 [0.40, 0.40]; prefixed 0.40 -> 0.10 [0.10, 0.10]" in printed.splitlines()
    result = json.loads((out / "dose_response.json").read_text())
    assert result["key"] == "world.raters.w_agree" and result["values"] == [0.0, 3.0]
    weight = result["measures"]["raters_agreement_weight"]["points"]
    assert [p["mean"] for p in weight] == [0.5, 9.5] and weight[1]["seed_values"] == [9.0, 10.0]
    assert (out / "w_agree-3" / "bon" / "curves.jsonl").is_file()  # each value's curves over seeds
    assert (out / "w_agree-3" / "claims.json").is_file()
    page = (out / "report" / "report.html").read_text()
    assert page.count('id="key-result"') == 1 and "dose-response over world.raters.w_agree" in page

    FAKE_CALLS.clear()
    capsys.readouterr()
    assert main(args) == 0  # resume: every cell done earlier
    assert FAKE_CALLS == []
    printed = capsys.readouterr().out
    assert "w_agree = 0, seed 1: done earlier, skipped" in printed and "w_agree = 3, seed 0: done earlier" in printed

    more = ["run", str(TINY), "--set", "sweep={key: world.raters.w_agree, values: [0, 1.5, 3]}", "--seeds", "0,1",
            "--set", "parallel_seeds=1", "--out", str(out)]
    assert main(more) == 0  # a value added to a finished sweep runs only its own cells
    assert FAKE_CALLS == [(1.5, 0), (1.5, 1)]
    assert json.loads((out / "dose_response.json").read_text())["values"] == [0.0, 1.5, 3.0]

    other_key = ["run", str(TINY), "--set", "sweep={key: world.raters.w_style, values: [0, 3]}", "--seeds", "0,1",
                 "--out", str(out)]
    assert main(other_key) == 2  # another key is another experiment: refused


# ----------------------------------------------------------------------------- the aggregation, exactly


def test_preference_rate_counts_prompts_and_resamples_facts():
    result = preference_rate([1.0, -1.0, 2.0, 0.5], ["a", "a", "b", "b"], n_boot=4000, seed=0)
    assert result["value"] == 0.75 and result["mean_margin"] == 0.625
    assert (result["n_prompts"], result["n_clusters"]) == (4, 2)
    # two facts: a resample holds a twice (0.5), b twice (1.0) or one of each (0.75), each with mass >= 1/4
    assert (result["ci_low"], result["ci_high"]) == (0.5, 1.0)
    assert preference_rate([0.0, -2.0], ["a", "b"], n_boot=0)["value"] == 0.0  # a tie is no preference


def test_cell_measures_reads_each_file_s_number():
    stats = {"preference_regression": {"raters": {"agrees_with_user": {"weight": 4.5, "ci_low": 4.0, "ci_high": 5.0},
                                                  "correct": {"weight": 3.0, "ci_low": 2.0, "ci_high": 4.0}}}}
    prefs = {"pms": {"proxy": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0},
                     "proxy-nonsyc": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3}}}
    rows = [{"method": "bon", "pm": pm, "n": n, "metric": "probe/answer/syco_rate", "value": v, "ci_low": v - 0.1,
             "ci_high": v + 0.1} for pm, n, v in (("proxy", 1, 0.4), ("proxy", 32, 0.9), ("proxy-nonsyc", 32, 0.2),
                                                 ("gold", 32, 0.0))]
    out = cell_measures(stats, prefs, rows)
    assert out["raters_agreement_weight"] == {"value": 4.5, "ci_low": 4.0, "ci_high": 5.0}
    assert out["pm_prefers_sycophantic"] == {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0}
    assert out["pm_prefers_sycophantic_prefixed"]["value"] == 0.2
    assert out["bon_syco_rate_proxy"] == {"value": 0.9, "ci_low": pytest.approx(0.8), "ci_high": pytest.approx(1.0)}
    assert out["bon_syco_rate_prefixed"]["value"] == 0.2
    assert cell_measures(None, None, None) == {}
    drift = {"rewards": {"proxy": {"preference": {"answer": {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n_pairs": 9}}},
                         "proxy-nonsyc": {"preference": {"answer": {"value": 0.5, "ci_low": None, "ci_high": None,
                                                                    "n_pairs": 0}}}}}
    own = cell_measures(None, None, None, drift)
    assert own == {"pm_prefers_own_sycophantic": {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4}}  # no pairs: no rate


def cells_of_values(rates: dict[float, list[float]], width: float = 0.0) -> dict:
    """{value: {seed: {measure: point}}} with the PM preference rate per seed and a weight of 3 * value."""
    return {x: {k: {"pm_prefers_sycophantic": {"value": r, "ci_low": r - width, "ci_high": r + width},
                    "raters_agreement_weight": {"value": 3.0 * x, "ci_low": None, "ci_high": None}}
                for k, r in enumerate(rs)} for x, rs in rates.items()}


def test_aggregate_cells_means_seed_values_and_point_intervals():
    cells = cells_of_values({0.0: [0.1, 0.3], 1.5: [0.8, 0.8], 3.0: [1.0, 1.0]})
    points = aggregate_cells(cells, n_boot=500, seed=0)
    rate = points["pm_prefers_sycophantic"]
    assert [p["x"] for p in rate] == [0.0, 1.5, 3.0]
    assert [p["mean"] for p in rate] == [pytest.approx(0.2), 0.8, 1.0]
    assert rate[0]["seed_values"] == [0.1, 0.3] and rate[0]["n_seeds"] == 2
    # identical seeds with zero-width intervals: the interval is the point itself
    assert (rate[1]["ci_low"], rate[1]["ci_high"]) == (pytest.approx(0.8), pytest.approx(0.8))
    # two distinct seeds, no per-seed error: resamples give 0.1, 0.2 or 0.3, so the interval is [0.1, 0.3]
    assert (rate[0]["ci_low"], rate[0]["ci_high"]) == (pytest.approx(0.1), pytest.approx(0.3))
    assert [p["mean"] for p in points["raters_agreement_weight"]] == [0.0, 4.5, 9.0]
    assert aggregate_cells(cells, n_boot=0)["pm_prefers_sycophantic"][0]["ci_low"] is None


def test_trend_monotone_rise_and_saturation():
    def pts(*triples):
        return [{"x": x, "mean": m, "ci_low": lo, "ci_high": hi} for x, m, lo, hi in triples]

    rising = trend(pts((0, 0.1, 0.0, 0.2), (1, 0.9, 0.85, 0.95), (3, 0.92, 0.9, 0.95)))
    assert rising["monotone"] and rising["rises"] and rising["saturates_at"] == 1 and rising["reversals"] == []
    moving = trend(pts((0, 0.1, 0.0, 0.2), (1, 0.5, 0.45, 0.55), (3, 0.9, 0.85, 0.95)))
    assert moving["rises"] and moving["saturates_at"] is None
    falling = trend(pts((0, 0.5, 0.45, 0.55), (1, 0.2, 0.1, 0.3), (3, 0.6, 0.4, 0.7)))
    assert not falling["monotone"] and falling["reversals"] == [[0, 1]] and not falling["rises"]
    flat = trend(pts((0, 0.5, 0.3, 0.7), (3, 0.55, 0.3, 0.7)))
    assert not flat["rises"] and flat["saturates_at"] == 0


def test_dose_response_json_csv_and_table_are_exact():
    cells = cells_of_values({0.0: [0.0, 0.0], 3.0: [1.0, 1.0]})
    result = dose_response("world.raters.w_agree", cells, n_boot=200, seed=0)
    assert result["values"] == [0.0, 3.0]
    assert result["sentences"][0] == ("PM prefers sycophantic: 0.00 [0.00, 0.00] at w_agree = 0 -> 1.00 [1.00, 1.00] "
                                      "at w_agree = 3; rises monotonically, not saturated within the range")
    rows = list(csv.DictReader(io.StringIO(dose_response_csv(result))))
    assert rows[1] == {"key": "world.raters.w_agree", "value": "3", "measure": "pm_prefers_sycophantic",
                       "mean": "1.0", "ci_low": "1.0", "ci_high": "1.0", "n_seeds": "2", "seed_values": "1.0;1.0"}
    # no per-seed interval: the seed stage alone, and identical seeds give a point
    assert rows[3]["measure"] == "raters_agreement_weight" and rows[3]["mean"] == "9.0" and rows[3]["ci_low"] == "9.0"
    assert table_lines(result) == [
        "w_agree  seeds  PM prefers sycophantic  recovered agreement weight",
        "0        2      0.00 [0.00, 0.00]       0.00 [0.00, 0.00]",
        "3        2      1.00 [1.00, 1.00]       9.00 [9.00, 9.00]",
    ]



def test_a_sentence_says_saturating_only_for_a_measure_that_rises():
    def measure(*triples):
        points = [{"x": x, "mean": m, "ci_low": lo, "ci_high": hi} for x, m, lo, hi in triples]
        return {"label": "m", "points": points, "trend": trend(points)}

    risen = sentence("w", "m", measure((0, 0.1, 0.0, 0.2), (1, 0.9, 0.85, 0.95), (3, 0.92, 0.9, 0.95)))
    assert risen.endswith("rises monotonically, saturating from w = 1")
    settled = sentence("w", "m", measure((0, 0.5, 0.3, 0.7), (1, 0.2, 0.15, 0.25), (3, 0.21, 0.15, 0.25)))
    assert "saturating" not in settled and settled.endswith("flat within its intervals from w = 1")

# ----------------------------------------------------------------------------- the instrument responds


SMALL = ["world.policy.steps=120", "world.pairs.n_pairs=600", "world.corpus.n_dialogues=1500",
         "world.probes.n_questions=8", "world.stats.samples_per_prompt=2", "pm.train.epochs=2.0",
         "pm.unbiased=false", "bon.n_max=4", "bon.n_boot=50", "bon.probes=[answer]", "probes.enabled=false",
         "parallel_seeds=1"]


@pytest.mark.slow
def test_dose_response_rises_with_rater_bias(tmp_path):
    """A small sweep (micro tiny world: 120 pretraining steps, 600 pairs, PMs 2 epochs; w_agree 0 / 1.5 / 3;
    seeds 0 and 1; ~3 min on one core): the PM's preference for the sycophantic answer and the agreement weight
    the regression recovers are higher at the top value than at the bottom on every seed, by a wide margin.

    Measured (this machine): PM preference 0.00-0.02 at w_agree = 0 and 1.00 at 3; recovered weight about
    0.1 at 0 and 10 at 3. Best-of-N is not asserted: at n_max = 4 on the micro world it moves within noise."""
    args = ["run", str(TINY), "--set", SWEEP, "--seeds", "0,1", "--out", str(tmp_path / "sweep")]
    for override in SMALL:
        args += ["--set", override]
    assert main(args) == 0
    result = json.loads((tmp_path / "sweep" / "dose_response.json").read_text())
    for measure, margin in (("pm_prefers_sycophantic", 0.5), ("raters_agreement_weight", 3.0)):
        points = sorted(result["measures"][measure]["points"], key=lambda p: p["x"])
        bottom, top = points[0], points[-1]
        assert (bottom["x"], top["x"]) == (0.0, 3.0)
        assert min(top["seed_values"]) - max(bottom["seed_values"]) > margin, (measure, bottom, top)
        assert result["measures"][measure]["trend"]["rises"], (measure, bottom, top)
    preference = json.loads((tmp_path / "sweep" / "w_agree-3" / "seed-0" / "pms" / "sycophancy_preference.json").read_text())
    assert preference["pms"]["proxy"]["n_prompts"] == 200  # every suggest_wrong prompt of the 5 x 5 facts
    assert np.isfinite(preference["pms"]["proxy-nonsyc"]["mean_margin"])
    rows = read_jsonl(tmp_path / "sweep" / "w_agree-3" / "bon" / "curves.jsonl")
    assert rows and all(r["n_seeds"] == 2 for r in rows)
