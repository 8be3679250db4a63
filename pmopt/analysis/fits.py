"""Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") functional forms, fitted to curves.

With d = sqrt(KL(policy ‖ base)) and a "gold" metric measured relative to the base policy,
Gao et al. (§3, eq. 1-2) find

    best-of-n:  gold(d) − gold(0) = d (α − β d)
    RL:         gold(d) − gold(0) = d (α − β log d)

Both are linear in (α, β): with features x(d) = (d, −d²) for best-of-n and (d, −d log d) for RL, the
fit is (weighted) least squares, θ = (XᵀWX)⁻¹ XᵀWy, in closed form. Weights are 1/σᵢ² with σᵢ read
from each point's 95% interval (σ = width / (2 · 1.96)); when a point has no interval or a zero-width
one (a rate stuck at 0 or 1), the whole curve is fitted unweighted.

Peak (the KL where the fitted gold turns over): best-of-n d* = α / (2β), RL d* = exp(α/β − 1) (set
the derivative to zero); both are maxima only when β > 0. A peak beyond the largest measured d, one
at d* ≤ 0, or one before the smallest measured d > 0 is reported as "none within range": the RL form with
α < 0 < β turns over at a tiny d* (−β d log d > 0 as d → 0), an extrapolation below every measured point
of a gold reward that falls over the whole measured range.

Curves come from a run's `bon/curves.jsonl` (per PM, x = the bound log n − (n−1)/n, and where the
sweep has it x = `kl/support`, the exact KL on the sampled outputs) and `ppo/curves.jsonl` (x = the
measured KL on the probe prompts), the baseline gold(0) being the n = 1 / step 0 point. An RL β sweep
(`rl_method` "<method>-beta-sweep", pmopt.rl.beta_sweep: each point the final probe point of one run at a
fixed KL coefficient, gold(0) the base policy) is one more RL curve, the form Gao et al. fit to RL.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pmopt.io import PmoptError, atomic_write_json, atomic_write_text, read_jsonl
from pmopt.records import validate_curve_row

Z_95 = 1.959963984540054  # a 95% interval spans ±1.96 σ of a normal
MIN_POINTS = 3  # points with KL > 0: two would fit any curve exactly and say nothing about the form
SUPPORT_KL = "kl/support"
FORMULAS = {"bon": "d(alpha - beta d)", "rl": "d(alpha - beta log d)"}
CURVE_FILES = ("bon/curves.jsonl", "ppo/curves.jsonl", "curves.jsonl")
CSV_COLUMNS = ("method", "rl_method", "pm", "metric", "kl_kind", "form", "n_points", "kl_max", "baseline",
               "alpha", "alpha_ci_low", "alpha_ci_high", "beta", "beta_ci_low", "beta_ci_high", "r2",
               "peak_kl", "peak_value", "peak_status", "peak_within_share", "weighting", "bootstrap")


@dataclass
class FitConfig:
    metrics: list[str] = field(default_factory=lambda: ["gold/reward", "probe/answer/syco_rate"])
    n_boot: int = 2000  # bootstrap refits for the intervals of alpha and beta
    seed: int = 0
    level: float = 0.95

    def validate(self) -> None:
        if self.n_boot < 0 or not 0 < self.level < 1:
            raise PmoptError(f"fit: n_boot must be >= 0 and level in (0, 1), got {self.n_boot}, {self.level}")


@dataclass
class Curve:
    """One measured curve: a metric of one PM under one optimiser, against one kind of KL."""

    method: str  # "bon" | "ppo"
    rl_method: str | None  # "ppo" | "rloo" for RL rows; "ppo-beta-sweep" | "rloo-beta-sweep" for a β sweep
    pm: str
    metric: str
    kl_kind: str  # "bound" | "support" (best-of-n) | the RL rows' own: "rao_blackwell" ("measured" before it)
    kl: np.ndarray
    value: np.ndarray
    sigma: np.ndarray  # NaN where a point has no interval
    baseline: float  # the metric at n = 1 / step 0
    baseline_sigma: float

    @property
    def form(self) -> str:
        return "bon" if self.method == "bon" else "rl"

    @property
    def label(self) -> str:
        return self.pm if self.method == "bon" else f"{self.pm} ({rl_label(self.rl_method)})"


def rl_label(rl_method: str | None) -> str:
    """'ppo' -> 'PPO'; a β sweep's 'ppo-beta-sweep' -> 'PPO β sweep'."""
    method, sweep, _ = (rl_method or "ppo").partition("-beta-sweep")
    return method.upper() + (" β sweep" if sweep else "")


# ----------------------------------------------------------------------------- the closed-form fit


def features(form: str, d: np.ndarray) -> np.ndarray:
    """Design matrix X (k, 2) with gold(d) − gold(0) = X @ (alpha, beta)."""
    d = np.asarray(d, dtype=np.float64)
    if form == "bon":
        return np.stack([d, -d * d], axis=-1)
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 as d -> 0
    return np.stack([d, -d_log_d], axis=-1)


def least_squares(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """θ = (XᵀWX)⁻¹ XᵀW y for y of shape (k,) or a batch (B, k); returns (2,) or (B, 2)."""
    gram = x.T @ (w[:, None] * x)
    if not np.all(np.isfinite(gram)) or np.linalg.cond(gram) > 1e12:
        raise PmoptError("singular fit: the points' KL values do not separate alpha from beta")
    return np.linalg.solve(gram, (x.T * w) @ np.atleast_2d(y).T).T.reshape(np.shape(y)[:-1] + (2,))


def r_squared(x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray) -> float:
    """1 − Σw(y − ŷ)² / Σw(y − ȳ_w)²: the share of the points' spread the form explains (can be < 0)."""
    residual = y - x @ theta
    total = np.sum(w * (y - np.average(y, weights=w)) ** 2)
    return float(1.0 - np.sum(w * residual**2) / total) if total > 0 else math.nan


def peak(form: str, alpha: float, beta: float, d_max: float, d_min: float = 0.0) -> dict:
    """Where the fitted gold peaks: {status, kl, d, value}; 'none within range' unless 0 < d* and
    d_min ≤ d* ≤ d_max (the measured points' smallest and largest d > 0)."""
    none = {"status": "none within range", "kl": None, "d": None, "value": None}
    if not beta > 0:
        return {**none, "note": "beta <= 0: the fitted gold never turns over"}
    d_star = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 700.0))
    if d_star <= 0:
        return {**none, "note": "d* <= 0: the fitted gold falls from KL = 0"}
    if d_star > d_max:
        return {**none, "note": f"d* = {d_star:.3g} beyond the largest measured d = {d_max:.3g}"}
    if d_star < d_min:
        return {**none, "note": f"d* = {d_star:.3g} before the smallest measured d = {d_min:.3g}: the fitted gold "
                                "falls over the whole measured range"}
    value = float((features(form, np.array([d_star])) @ np.array([alpha, beta]))[0])
    return {"status": "within range", "kl": d_star**2, "d": d_star, "value": value, "note": ""}


def peak_within(form: str, thetas: np.ndarray, d_max: float, d_min: float = 0.0) -> np.ndarray:
    """Per bootstrap draw (B, 2): does the fitted curve peak inside (0, d_max] and at or after d_min?"""
    alpha, beta = thetas[:, 0], thetas[:, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d_star = alpha / (2 * beta) if form == "bon" else np.exp(np.minimum(alpha / beta - 1, 700.0))
    return (beta > 0) & (d_star > 0) & (d_star >= d_min) & (d_star <= d_max)


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_thetas(curve: Curve, x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray,
                     used: np.ndarray, cfg: FitConfig) -> tuple[np.ndarray, str]:
    """(B, 2) refits and the bootstrap used.

    Curve files hold each point's value and interval, not the per-prompt outcomes behind them, so the
    prompts cannot be resampled here. Where every point has an interval, the bootstrap is parametric:
    each point (and the baseline it is measured against) is redrawn as value + σ·z, z ~ N(0, 1), and
    the curve refitted. It treats the points as independent; best-of-n points share their prompts
    (positively correlated errors), so the intervals describe per-point sampling noise, not a joint
    resampling of prompts. Where a point has no interval or a zero-width one, it is a residual bootstrap over the points (residuals
    resampled with replacement, inflated by sqrt(k / (k − 2)) for the two fitted parameters).
    """
    rng = np.random.default_rng(cfg.seed)
    sigma, base_sigma = curve.sigma[used], curve.baseline_sigma
    if np.all(np.isfinite(sigma)) and np.all(sigma > 0) and math.isfinite(base_sigma):
        noise = rng.standard_normal((cfg.n_boot, y.size)) * sigma - rng.standard_normal((cfg.n_boot, 1)) * base_sigma
        return least_squares(x, y + noise, w), "parametric (per-point CI)"
    fitted, k = x @ theta, y.size
    residual = (y - fitted) * math.sqrt(k / (k - 2))
    draws = fitted + residual[rng.integers(0, k, size=(cfg.n_boot, k))]
    return least_squares(x, draws, w), "residual (over points)"


# ----------------------------------------------------------------------------- curves from rows


def sigma_of(row: dict) -> float:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None:
        return math.nan
    return (float(high) - float(low)) / (2 * Z_95)


def curves_of(rows: list[dict], metric: str) -> tuple[list[Curve], list[dict]]:
    """Every curve of `metric` (per method, RL algorithm, PM and KL kind) and the ones that cannot be fitted."""
    support = {(r["pm"], r["n"]): r["value"] for r in rows if r["method"] == "bon" and r["metric"] == SUPPORT_KL}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["metric"] == metric:
            groups.setdefault((row["method"], row.get("rl_method"), row["pm"]), []).append(row)
    curves, skipped = [], []
    for (method, rl_method, pm), members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        x_key = "n" if method == "bon" else "step"
        members = sorted(members, key=lambda r, k=x_key: r[k])
        kinds = {members[0].get("kl_kind", "measured"): [r.get("kl") for r in members]} if method != "bon" else {
            "bound": [r.get("kl") for r in members]}
        if method == "bon" and all((pm, r["n"]) in support for r in members):
            kinds["support"] = [support[(pm, r["n"])] for r in members]
        for kind, kls in kinds.items():
            where = {"method": method, "rl_method": rl_method, "pm": pm, "metric": metric, "kl_kind": kind}
            first = members[0]
            if first[x_key] != (1 if method == "bon" else 0):
                skipped.append({**where, "reason": f"no {x_key} = {1 if method == 'bon' else 0} point (the baseline)"})
                continue
            if any(k is None for k in kls):
                skipped.append({**where, "reason": "a point has no KL value"})
                continue
            curves.append(Curve(method, rl_method, pm, metric, kind, np.maximum(np.array(kls, float), 0.0),
                                np.array([r["value"] for r in members], float),
                                np.array([sigma_of(r) for r in members], float),
                                float(first["value"]), sigma_of(first)))
    return curves, skipped


# ----------------------------------------------------------------------------- one curve, every curve


def fit_curve(curve: Curve, cfg: FitConfig) -> dict:
    """Fit one curve: the fields of a fits.json entry (raises PmoptError when it cannot be fitted)."""
    d = np.sqrt(curve.kl)
    used = d > 0  # points at d = 0 carry no information about alpha or beta
    if used.sum() < MIN_POINTS:
        raise PmoptError(f"{used.sum()} point(s) with KL > 0 (need {MIN_POINTS})")
    x, y = features(curve.form, d[used]), curve.value[used] - curve.baseline
    sigma = curve.sigma[used]
    weighted = bool(np.all(np.isfinite(sigma)) and np.all(sigma > 0))
    w = 1.0 / sigma**2 if weighted else np.ones_like(y)
    theta = least_squares(x, y, w)
    d_max, d_min = float(d.max()), float(d[used].min())
    out = {"method": curve.method, "rl_method": curve.rl_method, "pm": curve.pm, "label": curve.label,
           "metric": curve.metric, "kl_kind": curve.kl_kind, "form": curve.form, "formula": FORMULAS[curve.form],
           "n_points": int(used.sum()), "kl_max": d_max**2, "baseline": curve.baseline,
           "weighting": "inverse-variance (1/sigma^2 from each point's CI)" if weighted else "none",
           "alpha": float(theta[0]), "beta": float(theta[1]), "r2": r_squared(x, y, w, theta)}
    alpha_ci = beta_ci = (math.nan, math.nan)
    share = math.nan
    if cfg.n_boot > 0:
        thetas, out["bootstrap"] = bootstrap_thetas(curve, x, y, w, theta, used, cfg)
        tail = (1 - cfg.level) / 2
        low, high = np.quantile(thetas, [tail, 1 - tail], axis=0)
        alpha_ci, beta_ci = (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))
        share = float(peak_within(curve.form, thetas, d_max, d_min).mean())
    out.update(alpha_ci=list(alpha_ci), beta_ci=list(beta_ci), peak=peak(curve.form, *theta, d_max, d_min),
               peak_within_share=share,
               points=[{"kl": float(k), "value": float(v)} for k, v in zip(curve.kl, curve.value, strict=True)])
    out.setdefault("bootstrap", "none")
    return out


def fit_rows(rows: list[dict], cfg: FitConfig) -> tuple[list[dict], list[dict]]:
    """(fits, skipped) for every curve of every metric in `cfg.metrics` present in `rows`."""
    cfg.validate()
    present = {r["metric"] for r in rows}
    missing = [m for m in cfg.metrics if m not in present]
    if len(missing) == len(cfg.metrics):
        raise PmoptError(f"no curve rows for {cfg.metrics} (metrics present: {', '.join(sorted(present))})")
    fits, skipped = [], [{"metric": m, "reason": "no curve rows"} for m in missing]
    for metric in cfg.metrics:
        curves, not_fitted = curves_of(rows, metric) if metric in present else ([], [])
        skipped += not_fitted
        for curve in curves:
            try:
                fits.append(fit_curve(curve, cfg))
            except PmoptError as exc:
                skipped.append({"method": curve.method, "rl_method": curve.rl_method, "pm": curve.pm,
                                "metric": metric, "kl_kind": curve.kl_kind, "reason": str(exc)})
    return fits, skipped


# ----------------------------------------------------------------------------- run directories


def load_run_curves(run_dir: str | Path) -> list[dict]:
    """The run's curve rows (`bon/curves.jsonl`, `ppo/curves.jsonl`, or a stage's own `curves.jsonl`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PmoptError(f"{run_dir}: run directory not found")
    present = [run_dir / name for name in CURVE_FILES if (run_dir / name).is_file()]
    if not present:
        raise PmoptError(f"{run_dir}: no curves to fit: expected {run_dir / CURVE_FILES[0]} or {run_dir / CURVE_FILES[1]}")
    return [row for path in present for row in read_jsonl(path, validate_curve_row)]


def write_fits(run_dir: str | Path, cfg: FitConfig | None = None, out_dir: str | Path | None = None) -> dict:
    """Fit every curve of a run; write OUT/fits.json and OUT/fits.csv (OUT defaults to RUN_DIR)."""
    cfg = cfg or FitConfig()
    rows = load_run_curves(run_dir)
    fits, skipped = fit_rows(rows, cfg)
    result = {"fits": fits, "skipped": skipped, "n_boot": cfg.n_boot, "seed": cfg.seed, "level": cfg.level,
              "forms": FORMULAS}
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir)
    atomic_write_json(out_dir / "fits.json", _json_safe(result))
    atomic_write_text(out_dir / "fits.csv", fits_csv(fits))
    return result


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def csv_row(fit: dict) -> dict:
    peak_info = fit["peak"]
    return {**{k: fit.get(k) for k in CSV_COLUMNS if k in fit},
            "alpha_ci_low": fit["alpha_ci"][0], "alpha_ci_high": fit["alpha_ci"][1],
            "beta_ci_low": fit["beta_ci"][0], "beta_ci_high": fit["beta_ci"][1],
            "peak_kl": peak_info["kl"], "peak_value": peak_info["value"], "peak_status": peak_info["status"]}


def fits_csv(fits: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for fit in fits:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for k, v in csv_row(fit).items()})
    return buffer.getvalue()


def _num(value, digits: int = 3) -> str:
    return "nan" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}g}"


def format_table(fits: list[dict]) -> str:
    """One line per fit: PM, metric, KL kind, alpha and beta with intervals, R², the peak."""
    header = ("pm", "metric", "kl", "n", "alpha [95% CI]", "beta [95% CI]", "R^2", "peak KL")
    lines = [
        (f["label"], f["metric"], f["kl_kind"], str(f["n_points"]),
         f"{_num(f['alpha'])} [{_num(f['alpha_ci'][0])}, {_num(f['alpha_ci'][1])}]",
         f"{_num(f['beta'])} [{_num(f['beta_ci'][0])}, {_num(f['beta_ci'][1])}]", _num(f["r2"]),
         _num(f["peak"]["kl"]) if f["peak"]["kl"] is not None else "none within range")
        for f in fits]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *lines])


def fit_command(args) -> Path:
    """CLI: `pmopt fit RUN_DIR [--metric M ...] [--n-boot B] [--out DIR]`; returns the fits.json path."""
    cfg = FitConfig(n_boot=args.n_boot, seed=args.seed)
    if args.metric:
        cfg.metrics = list(args.metric)
    out_dir = Path(args.out) if args.out else Path(args.run_dir)
    result = write_fits(args.run_dir, cfg, out_dir)
    print(f"Gao et al. 2022 fits, best-of-n: gold - gold(0) = {FORMULAS['bon']}; RL: {FORMULAS['rl']}; "
          "d = sqrt(KL)")
    print(format_table(result["fits"]))
    for skip in result["skipped"]:
        where = " ".join(str(skip[k]) for k in ("pm", "metric", "kl_kind") if skip.get(k))
        print(f"not fitted: {where}: {skip['reason']}")
    return out_dir / "fits.json"


__all__ = ["FitConfig", "Curve", "rl_label", "features", "least_squares", "r_squared", "peak", "curves_of", "fit_curve",
           "fit_rows", "load_run_curves", "write_fits", "format_table", "fit_command", "FORMULAS"]
