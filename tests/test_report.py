"""Report: curve rows -> PNG plots, summary CSV and one self-contained HTML page; errors on bad runs."""

from __future__ import annotations

import base64
import csv
import json
import math
import re

import matplotlib.image
import pytest

from pmopt.cli import main
from pmopt.io import PmoptError, RecordError, atomic_write_jsonl
from pmopt.report.html import build_report, load_curves, summary_rows
from pmopt.report.plots import plot_all, plot_metric_vs_kl, plot_metric_vs_n, rows_on_support_kl, slug

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PMS = ("pm_biased", "pm_nonsyco")
METRICS = ("probe/answer/syco_rate", "gold/reward")


def _bon_rows():
    rows = []
    for k, pm in enumerate(PMS):
        for metric in METRICS:
            for n in (1, 2, 4, 8, 16):
                slope = 0.05 if k == 0 else -0.04
                value = 0.3 + slope * math.log2(n) + (0.1 if metric == "gold/reward" else 0.0)
                rows.append({"method": "bon", "pm": pm, "n": n, "kl": math.log(n) - (n - 1) / n,
                             "metric": metric, "value": value, "ci_low": value - 0.03, "ci_high": value + 0.03})
    return rows


def _ppo_rows():
    rows = []
    for k, pm in enumerate(PMS):
        for metric in METRICS:
            for step in (0, 10, 20, 30):
                value = 0.3 + (0.004 if k == 0 else -0.003) * step
                rows.append({"method": "ppo", "pm": pm, "step": step, "kl": 0.05 * step, "metric": metric,
                             "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05})
    return rows


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run1"
    atomic_write_jsonl(run / "bon" / "curves.jsonl", _bon_rows())
    atomic_write_jsonl(run / "ppo" / "curves.jsonl", _ppo_rows())
    (run / "world").mkdir()
    (run / "world" / "world_stats.json").write_text(json.dumps(
        {"n_facts": 120, "base_policy": {"neutral_accuracy": 0.8625, "syco_rate": 0.3125}}))
    (run / "probes").mkdir()
    (run / "probes" / "metrics.json").write_text(json.dumps({"probe/answer/syco_rate": 0.271828}))
    (run / "config.yaml").write_text("seed: 0\nbon:\n  n_max: 16  # <tag> & more\n")
    return run


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 0.01  # not a blank canvas
    return data


# ----------------------------------------------------------------------------- plots


def test_plot_all_writes_valid_pngs(tmp_path):
    rows = _bon_rows() + _ppo_rows()
    paths = plot_all(rows, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{slug(m)}_vs_{axis}.png" for m in METRICS for axis in ("n", "kl"))
    for path in paths:
        _assert_png(path)
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # atomic writes leave no temp files


def test_support_kl_moves_bon_points_and_adds_plots(tmp_path):
    """With kl/support rows, best-of-n points move to their PM's exact KL at that n; PPO rows stay."""
    support = [{"method": "bon", "pm": pm, "n": n, "kl": math.log(n) - (n - 1) / n, "metric": "kl/support",
                "value": 0.1 * math.log2(n), "ci_low": None, "ci_high": None} for pm in PMS for n in (1, 2, 4, 8, 16)]
    rows = _bon_rows() + _ppo_rows() + support
    moved = rows_on_support_kl(rows)
    bon = [r for r in moved if r["method"] == "bon" and r["metric"] == "gold/reward" and r["pm"] == PMS[0]]
    assert [(r["n"], r["kl"], r["kl_kind"]) for r in bon] == [(n, 0.1 * math.log2(n), "support") for n in (1, 2, 4, 8, 16)]
    assert [r for r in moved if r["method"] == "ppo"] == _ppo_rows()
    paths = plot_all(rows, tmp_path)
    names = {p.name for p in paths}
    assert {f"{slug(m)}_vs_kl_support.png" for m in METRICS} <= names
    assert "kl_support_vs_kl_support.png" not in names and "kl_support_vs_n.png" in names
    for path in paths:
        _assert_png(path)
    # a PM without kl/support rows has no best-of-n points on the support axis
    assert not [r for r in rows_on_support_kl(_bon_rows()) if r["method"] == "bon"]


def test_ppo_only_rows_get_only_kl_plots(tmp_path):
    paths = plot_all(_ppo_rows(), tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{slug(m)}_vs_kl.png" for m in METRICS)


def test_single_plots_and_errors(tmp_path):
    rows = _bon_rows() + _ppo_rows()
    _assert_png(plot_metric_vs_n(rows, "gold/reward", tmp_path / "a.png"))
    _assert_png(plot_metric_vs_kl(rows, "gold/reward", tmp_path / "b.png"))
    with pytest.raises(ValueError, match="no best-of-N rows for metric 'nope'"):
        plot_metric_vs_n(rows, "nope", tmp_path / "c.png")
    with pytest.raises(ValueError, match="no rows with a KL value"):
        plot_metric_vs_kl(_ppo_rows(), "nope", tmp_path / "d.png")
    assert not (tmp_path / "c.png").exists()


def test_slug():
    assert slug("probe/answer/syco_rate") == "probe_answer_syco_rate"
    assert slug("pm/score") == "pm_score"


# ----------------------------------------------------------------------------- summary and HTML


def test_summary_first_and_last_values():
    rows = _bon_rows() + _ppo_rows()
    summary = {(s["method"], s["pm"], s["metric"]): s for s in summary_rows(rows)}
    assert len(summary) == 2 * 2 * 2
    s = summary[("bon", "pm_biased", "probe/answer/syco_rate")]
    assert (s["first_x"], s["last_x"]) == (1, 16)
    assert s["first_value"] == pytest.approx(0.3) and s["last_value"] == pytest.approx(0.5)
    assert s["change"] == pytest.approx(0.2)
    assert s["last_kl"] == pytest.approx(math.log(16) - 15 / 16)
    p = summary[("ppo", "pm_nonsyco", "gold/reward")]
    assert (p["x"], p["first_x"], p["last_x"]) == ("step", 0, 30)
    assert p["last_value"] == pytest.approx(0.21) and p["last_ci_high"] == pytest.approx(0.26)


def test_build_report(run_dir):
    html_path = build_report(run_dir)
    out = run_dir / "report"
    assert html_path == out / "report.html"
    page = html_path.read_text(encoding="utf-8")

    # every metric's plots are written; the page embeds the headline and the curated ones and links the rest
    pngs = {p.name: p for p in (out / "plots").glob("*.png")}
    assert sorted(pngs) == sorted(["headline.png"] + [f"{slug(m)}_vs_{axis}.png" for m in METRICS for axis in ("n", "kl")])
    embedded = re.findall(r'<img alt="([a-z_]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [alt for alt, _ in embedded] == ["headline", "probe_answer_syco_rate_vs_n", "gold_reward_vs_n"]
    for alt, data in embedded:
        assert base64.b64decode(data) == _assert_png(pngs[f"{alt}.png"])
    linked = re.findall(r'<a href="([^"]+)">', page)
    assert sorted(linked) == ["plots/gold_reward_vs_kl.png", "plots/probe_answer_syco_rate_vs_kl.png"]
    assert page.index('id="key-result"') < page.index('id="pms"') < page.index("<h2>Figures</h2>")

    # summary numbers: BoN pm_biased syco_rate goes 0.3 -> 0.5 with CI [0.47, 0.53] at n = 16
    with open(out / "summary.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 8
    row = next(r for r in table if r["method"] == "bon" and r["pm"] == "pm_biased"
               and r["metric"] == "probe/answer/syco_rate")
    assert (row["x"], row["first_x"], row["last_x"]) == ("n", "1", "16")
    numbers = [float(row[k]) for k in ("first_value", "last_value", "last_ci_low", "last_ci_high", "change")]
    assert numbers == pytest.approx([0.3, 0.5, 0.47, 0.53, 0.2], abs=1e-15)  # full precision in the CSV
    assert float(row["last_kl"]) == math.log(16) - 15 / 16
    assert '<td class="num">0.5 [0.47, 0.53]</td>' in page and "n = 16" in page and "step = 30" in page
    assert "<td>pm_nonsyco</td>" in page

    # optional tables and config, escaped
    assert '<td>base_policy.neutral_accuracy</td><td class="num">0.8625</td>' in page
    assert '<td>probe/answer/syco_rate</td><td class="num">0.2718</td>' in page
    assert "n_max: 16  # &lt;tag&gt; &amp; more" in page


def test_build_report_bon_only_custom_out(tmp_path):
    run = tmp_path / "run"
    atomic_write_jsonl(run / "bon" / "curves.jsonl", _bon_rows())
    html_path = build_report(run, tmp_path / "elsewhere")
    assert html_path == tmp_path / "elsewhere" / "report.html"
    assert len(list((tmp_path / "elsewhere" / "plots").glob("*.png"))) == 5  # vs n and vs KL, 2 metrics; headline
    page = html_path.read_text(encoding="utf-8")
    assert "World statistics" not in page and "config.yaml" not in page
    assert not (run / "report").exists()


# ----------------------------------------------------------------------------- errors


def test_missing_curves_is_an_error_naming_expected_files(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(PmoptError, match=r"bon/curves\.jsonl and/or .*ppo/curves\.jsonl"):
        build_report(tmp_path / "run")
    assert not (tmp_path / "run" / "report").exists()
    with pytest.raises(PmoptError, match="run directory not found"):
        build_report(tmp_path / "absent")


def test_empty_curve_file_is_an_error(tmp_path):
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "curves.jsonl").write_text("\n")
    with pytest.raises(PmoptError, match="curve files are empty"):
        load_curves(tmp_path)


@pytest.mark.parametrize("change, field", [
    ({"method": "dpo"}, "method"),
    ({"n": 0}, "n"),
    ({"n": "4"}, "n"),
    ({"value": None}, "value"),
    ({"kl": "big"}, "kl"),
    ({"metric": ""}, "metric"),
])
def test_bad_curve_row_names_file_line_field(tmp_path, change, field):
    rows = _bon_rows()[:3]
    rows[1] = {**rows[1], **change}
    atomic_write_jsonl(tmp_path / "bon" / "curves.jsonl", rows)
    with pytest.raises(RecordError, match=rf"bon/curves\.jsonl:2: field '{field}'"):
        load_curves(tmp_path)


def test_ppo_row_needs_step_and_null_ci_allowed(tmp_path):
    row = {"method": "ppo", "pm": "a", "step": 3, "kl": None, "metric": "m", "value": 1.0,
           "ci_low": None, "ci_high": None}
    atomic_write_jsonl(tmp_path / "ppo" / "curves.jsonl", [row])
    assert load_curves(tmp_path) == [row]
    atomic_write_jsonl(tmp_path / "ppo" / "curves.jsonl", [{**row, "step": None, "n": 3}])
    with pytest.raises(RecordError, match="field 'step'"):
        load_curves(tmp_path)


def test_malformed_optional_json_is_an_error(run_dir):
    (run_dir / "probes" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(PmoptError, match=r"probes/metrics\.json: expected a JSON object"):
        build_report(run_dir)


# ----------------------------------------------------------------------------- CLI


def test_cli_report(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert str(run_dir / "report" / "report.html") in printed
    assert (run_dir / "report" / "report.html").is_file()


def test_cli_report_missing_curves_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pmopt report: error:") and "curves.jsonl" in err


def test_ppo_and_rloo_against_one_pm_are_two_lines(tmp_path):
    from pmopt.report.plots import _series

    ppo = [{**r, "rl_method": "ppo"} for r in _ppo_rows() if r["pm"] == PMS[0]]
    rloo = [{**r, "rl_method": "rloo", "value": r["value"] + 0.1} for r in ppo]
    series = _series(ppo + rloo, "gold/reward", None, "kl")
    assert sorted(series) == [("ppo", "ppo", PMS[0]), ("ppo", "rloo", PMS[0])]
    assert all(len(points) == 4 for points in series.values())
    _assert_png(plot_metric_vs_kl(ppo + rloo, "gold/reward", tmp_path / "rl.png"))
