"""Gao et al. 2022 functional forms: exact recovery, interval coverage, the peak, the CLI, bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from pmopt.analysis.fits import Curve, FitConfig, features, fit_curve, fit_rows, peak, peak_within
from pmopt.cli import main
from pmopt.io import atomic_write_jsonl

GRID = (1, 2, 4, 8, 16, 32)
STEPS = (0, 10, 20, 30, 40, 50)
GOLD0 = 0.9


def bound(n: int) -> float:
    return math.log(n) - (n - 1) / n


def gold(form: str, kl: float, alpha: float, beta: float) -> float:
    return GOLD0 + float((features(form, np.array([math.sqrt(kl)])) @ np.array([alpha, beta]))[0])


def bon_rows(pm: str, alpha: float, beta: float, support_scale: float | None = None, half_width: float = 0.0,
             metric: str = "gold/reward") -> list[dict]:
    """Noise-free best-of-n rows; with `support_scale`, kl/support = scale * bound^0.6 (a curve in the
    form on the support KL is then not one on the bound) and gold follows the support KL."""
    rows = []
    for n in GRID:
        kl = bound(n) if support_scale is None else support_scale * bound(n) ** 0.6
        value = gold("bon", kl, alpha, beta)
        rows.append({"method": "bon", "pm": pm, "n": n, "kl": bound(n), "kl_kind": "bound", "metric": metric,
                     "value": value, "ci_low": value - half_width, "ci_high": value + half_width})
        if support_scale is not None:
            rows.append({"method": "bon", "pm": pm, "n": n, "kl": bound(n), "kl_kind": "bound",
                         "metric": "kl/support", "value": kl, "ci_low": kl, "ci_high": kl})
    return rows


def ppo_rows(pm: str, alpha: float, beta: float) -> list[dict]:
    rows = []
    for step in STEPS:
        kl = 0.08 * step
        value = gold("rl", kl, alpha, beta)
        rows.append({"method": "ppo", "rl_method": "ppo", "pm": pm, "step": step, "kl": kl, "kl_kind": "measured",
                     "metric": "gold/reward", "value": value, "ci_low": value - 0.02, "ci_high": value + 0.02})
    return rows


def only(fits, **where):
    found = [f for f in fits if all(f[k] == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


# ----------------------------------------------------------------------------- exact recovery


def test_noise_free_bon_and_rl_curves_are_recovered_exactly():
    rows = bon_rows("proxy", 0.6, 0.45, support_scale=0.4) + ppo_rows("proxy", 0.3, 0.2)
    fits, skipped = fit_rows(rows, FitConfig(metrics=["gold/reward"], n_boot=200))
    assert skipped == []
    on_support = only(fits, method="bon", kl_kind="support")
    assert on_support["alpha"] == pytest.approx(0.6, abs=1e-10)
    assert on_support["beta"] == pytest.approx(0.45, abs=1e-10)
    assert on_support["r2"] == pytest.approx(1.0, abs=1e-12)
    assert on_support["n_points"] == len(GRID) - 1 and on_support["baseline"] == pytest.approx(GOLD0)
    assert on_support["kl_max"] == pytest.approx(0.4 * bound(32) ** 0.6)
    assert only(fits, method="bon", kl_kind="bound")["r2"] < 1 - 1e-6  # gold followed the support KL
    rl = only(fits, method="ppo")
    assert (rl["form"], rl["kl_kind"]) == ("rl", "measured")
    assert rl["alpha"] == pytest.approx(0.3, abs=1e-10) and rl["beta"] == pytest.approx(0.2, abs=1e-10)
    assert rl["weighting"].startswith("inverse-variance")


def test_bound_kl_curve_recovered_and_zero_width_cis_fall_back_to_unweighted():
    fits, _ = fit_rows(bon_rows("proxy", -0.2, 0.1), FitConfig(metrics=["gold/reward"], n_boot=100))
    fit = only(fits, kl_kind="bound")
    assert (fit["alpha"], fit["beta"]) == (pytest.approx(-0.2, abs=1e-10), pytest.approx(0.1, abs=1e-10))
    assert fit["weighting"] == "none" and fit["bootstrap"].startswith("residual")
    # zero residuals: every bootstrap refit is the fit itself
    assert fit["alpha_ci"] == [pytest.approx(-0.2, abs=1e-9)] * 2
    assert fit["peak"]["status"] == "none within range" and "falls from KL = 0" in fit["peak"]["note"]


# ----------------------------------------------------------------------------- noisy curves


def analytic_sd(form: str, d: np.ndarray, sigma: np.ndarray, sigma0: float) -> np.ndarray:
    """Standard deviations of the weighted least-squares (alpha, beta) under independent point noise
    and a shared baseline noise: (XᵀWX)⁻¹ XᵀW Σ W X (XᵀWX)⁻¹ with Σ = diag(σ²) + σ0² 11ᵀ."""
    x, w = features(form, d), 1 / sigma**2
    a = np.linalg.inv(x.T @ (w[:, None] * x)) @ (x.T * w)
    cov = a @ (np.diag(sigma**2) + sigma0**2) @ a.T
    return np.sqrt(np.diag(cov))


def noisy_curve(rng, form: str, alpha: float, beta: float) -> Curve:
    kl = np.array([0.0] + [bound(n) for n in GRID[1:]]) if form == "bon" else 0.08 * np.array(STEPS, float)
    sigma = np.linspace(0.02, 0.05, kl.size)
    clean = GOLD0 + features(form, np.sqrt(kl)) @ np.array([alpha, beta])
    value = clean + rng.standard_normal(kl.size) * sigma
    return Curve("bon" if form == "bon" else "ppo", None if form == "bon" else "ppo", "pm", "gold/reward",
                 "bound" if form == "bon" else "measured", kl, value, sigma, float(value[0]), float(sigma[0]))


@pytest.mark.parametrize("form,alpha,beta", [("bon", 0.5, 0.3), ("rl", 0.4, 0.25)])
def test_noisy_fits_cover_the_truth_at_the_stated_level(form, alpha, beta):
    rng = np.random.default_rng(1)
    cfg = FitConfig(n_boot=1000, seed=0)
    covered, widths = np.zeros(2), []
    replicates = 80
    for _ in range(replicates):
        curve = noisy_curve(rng, form, alpha, beta)
        fit = fit_curve(curve, cfg)
        assert fit["bootstrap"].startswith("parametric")
        for i, (truth, key) in enumerate(((alpha, "alpha_ci"), (beta, "beta_ci"))):
            covered[i] += fit[key][0] <= truth <= fit[key][1]
        widths.append([fit["alpha_ci"][1] - fit["alpha_ci"][0], fit["beta_ci"][1] - fit["beta_ci"][0]])
    coverage = covered / replicates
    assert np.all(coverage >= 0.85) and np.all(coverage <= 1.0), coverage
    # interval widths are those of the estimator's true sampling distribution (±1.96 sd), not just wide
    used = curve.kl > 0
    sd = analytic_sd(form, np.sqrt(curve.kl[used]), curve.sigma[used], curve.sigma[0])
    assert np.mean(widths, axis=0) == pytest.approx(2 * 1.96 * sd, rel=0.1)


# ----------------------------------------------------------------------------- the peak


def test_peak_formulas_against_a_grid_search():
    for form, alpha, beta in (("bon", 1.0, 0.25), ("rl", 1.0, 0.5), ("bon", 0.3, 0.4), ("rl", -0.2, 0.3)):
        found = peak(form, alpha, beta, d_max=50.0)
        grid = np.linspace(1e-6, 50.0, 2_000_001)
        values = features(form, grid) @ np.array([alpha, beta])
        assert found["status"] == "within range"
        assert found["d"] == pytest.approx(grid[values.argmax()], abs=1e-4)
        assert found["value"] == pytest.approx(values.max(), abs=1e-9)
        assert found["kl"] == pytest.approx(found["d"] ** 2)
    assert peak("bon", 1.0, 0.25, 10.0)["d"] == pytest.approx(2.0)  # alpha / (2 beta)
    assert peak("rl", 1.0, 0.5, 10.0)["d"] == pytest.approx(math.e)  # exp(alpha / beta - 1)


def test_no_peak_within_range():
    for form in ("bon", "rl"):
        for beta in (0.0, -0.3):
            result = peak(form, 0.5, beta, 10.0)
            assert (result["status"], result["kl"]) == ("none within range", None) and "beta <= 0" in result["note"]
    beyond = peak("bon", 1.0, 0.25, d_max=1.5)  # d* = 2 > 1.5
    assert beyond["status"] == "none within range" and "beyond" in beyond["note"]
    assert peak("rl", 1.0, 0.5, d_max=2.0)["status"] == "none within range"  # d* = e > 2
    assert peak("bon", -0.1, 0.25, 10.0)["status"] == "none within range"  # d* < 0
    # RL with alpha < 0 < beta: the form turns over at d* = exp(alpha/beta - 1), before any measured point
    tiny = peak("rl", -0.238, 0.034, d_max=1.3, d_min=0.33)  # a measured beta sweep's fit: d* = 3.3e-4
    assert tiny["status"] == "none within range" and "before the smallest measured d" in tiny["note"]
    assert peak("rl", -0.238, 0.034, d_max=1.3)["status"] == "within range"  # without d_min: the bare formula
    thetas = np.array([[-0.238, 0.034], [1.0, 0.5]])  # d* = 3.3e-4 and e
    assert peak_within("rl", thetas, d_max=3.0, d_min=0.33).tolist() == [False, True]


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    bon = (bon_rows("proxy", 0.4, 0.3, support_scale=0.5, half_width=0.03)
           + bon_rows("proxy", 0.1, -0.05, support_scale=0.5, half_width=0.03, metric="probe/answer/syco_rate"))
    atomic_write_jsonl(run / "bon" / "curves.jsonl", bon)
    atomic_write_jsonl(run / "ppo" / "curves.jsonl", ppo_rows("proxy", 0.3, 0.2))
    return run


def test_fit_command_writes_json_csv_and_prints_a_table(run_dir, capsys):
    assert main(["fit", str(run_dir), "--n-boot", "300"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / "fits.json").read_text())
    fits = result["fits"]
    assert {(f["metric"], f["method"], f["kl_kind"]) for f in fits} == {
        ("gold/reward", "bon", "bound"), ("gold/reward", "bon", "support"), ("gold/reward", "ppo", "measured"),
        ("probe/answer/syco_rate", "bon", "bound"), ("probe/answer/syco_rate", "bon", "support")}
    support = only(fits, metric="gold/reward", kl_kind="support")
    assert support["alpha"] == pytest.approx(0.4, abs=1e-9) and support["beta"] == pytest.approx(0.3, abs=1e-9)
    assert support["alpha_ci"][0] < 0.4 < support["alpha_ci"][1]
    # d* = 0.4 / 0.6 = 0.667 (KL 0.444) lies within the measured support KL (0.5 * 2.50^0.6)
    assert support["peak"]["kl"] == pytest.approx((0.4 / 0.6) ** 2)
    syco = only(fits, metric="probe/answer/syco_rate", kl_kind="support")
    assert syco["peak"]["status"] == "none within range" and syco["beta"] == pytest.approx(-0.05, abs=1e-9)
    with open(run_dir / "fits.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(fits) and float(table[0]["alpha"]) == pytest.approx(fits[0]["alpha"])
    assert "alpha [95% CI]" in out and "proxy (PPO)" in out and "none within range" in out and "0.444" in out


def test_fit_command_bad_input_is_one_line_and_exit_2(tmp_path, run_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no curves to fit" in err and "bon/curves.jsonl" in err and len(err.splitlines()) == 1
    assert main(["fit", str(run_dir), "--metric", "nope"]) == 2
    assert "no curve rows for ['nope']" in capsys.readouterr().err
    assert not (run_dir / "fits.json").exists()  # nothing written on error

    assert main(["fit", str(run_dir), "--n-boot", "50"]) == 0
    before = (run_dir / "fits.json").read_bytes()
    lines = (run_dir / "ppo" / "curves.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"value": ', '"value": "x", "was": ')
    (run_dir / "ppo" / "curves.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["fit", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run_dir / 'ppo' / 'curves.jsonl'}:3: field 'value'" in err and len(err.splitlines()) == 1
    assert (run_dir / "fits.json").read_bytes() == before  # the earlier result is untouched


def test_curves_without_a_baseline_or_enough_points_are_skipped_with_a_reason():
    rows = [r for r in bon_rows("a", 0.4, 0.3) if r["n"] != 1] + [r for r in bon_rows("b", 0.4, 0.3) if r["n"] <= 4]
    fits, skipped = fit_rows(rows, FitConfig(metrics=["gold/reward"], n_boot=10))
    assert fits == []
    reasons = {s["pm"]: s["reason"] for s in skipped}
    assert reasons == {"a": "no n = 1 point (the baseline)", "b": "2 point(s) with KL > 0 (need 3)"}


def test_report_shows_the_fits_table_and_fitted_curves(run_dir):
    import re

    from pmopt.report.html import build_report

    assert main(["fit", str(run_dir), "--n-boot", "100"]) == 0
    page = build_report(run_dir).read_text()
    fit_plots = sorted((run_dir / "report" / "plots" / "fits").glob("*.png"))
    assert [p.name for p in fit_plots] == sorted(
        f"fit_{m}_{k}.png" for m, k in (("gold_reward", "bound"), ("gold_reward", "support"),
                                         ("gold_reward", "measured"), ("probe_answer_syco_rate", "bound"),
                                         ("probe_answer_syco_rate", "support")))
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in fit_plots)
    section = page.split("Functional-form fits (Gao et al. 2022)")[1]
    assert len(re.findall(r"<tr><td>", section.split("</table>")[0])) == 5
    assert "none within range" in section and "proxy (PPO)" in section
    # the fitted gold curve on the exact KL axis is embedded among the figures, the other fit plots linked
    embedded = re.findall(r'<img alt="(fit_[a-z_]+)" src="data:image/png;base64,', section)
    assert embedded == ["fit_gold_reward_support"]
    assert sorted(re.findall(r'<a href="(plots/fits/[a-z_]+\.png)">', section)) == sorted(
        f"plots/fits/{p.name}" for p in fit_plots if p.stem != "fit_gold_reward_support")
