"""Which features of a response predict that it is preferred? (Sharma et al. 2023 §4.1)

The paper annotates each response of a preference pair with features ("matches the user's beliefs",
"authoritative", "truthful", ...) and fits a Bayesian logistic regression of the label on the feature
differences; "matches the user's beliefs" comes out among the most predictive. Here the same model:

    P(first preferred | pair) = σ(w · (f(first) − f(second)))

with a Gaussian prior w ~ N(0, prior_std² I). The posterior mode is found by Newton's method (the log
posterior is concave) and the posterior by the Laplace approximation N(w*, H⁻¹), H the Hessian of the
negative log posterior at w*. A pair's order is randomised (seeded), so both label classes occur and
no intercept is needed: a response's position in a file says nothing about it.

For Bradley–Terry raters with utility u = w·f and temperature τ (the world's raters), w/τ is what the
fit recovers; the world's per-response utility noise shrinks all weights by a common factor, so the
ratios between weights are what to compare. Pairs need `meta.chosen_features` and
`meta.rejected_features` (name -> number), as the world's pairs have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pmopt.io import RecordError, iter_jsonl

NEWTON_MAX_STEPS = 100
NEWTON_TOL = 1e-10  # largest |Δw| at which Newton's method has converged
FEATURE_FIELDS = ("chosen_features", "rejected_features")


@dataclass
class FeatureWeight:
    feature: str
    weight: float  # posterior mean (Laplace) = posterior mode
    std: float
    ci_low: float
    ci_high: float

    @property
    def p_preferred(self) -> float:
        """P(a response with the feature is preferred to one without it, all else equal) = σ(w)."""
        return 0.5 * (1.0 + math.tanh(0.5 * self.weight))

    def as_dict(self) -> dict:
        return {"feature": self.feature, "weight": self.weight, "std": self.std, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "p_preferred": self.p_preferred}


# ----------------------------------------------------------------------------- data


def load_feature_pairs(path: str | Path) -> list[dict]:
    """Preference pairs from JSONL, each with numeric `meta.chosen_features` / `meta.rejected_features`."""
    return [record for _, record in iter_jsonl(path, validate_feature_pair)]


def validate_feature_pair(record: dict, error) -> None:
    meta = record.get("meta")
    if not isinstance(meta, dict):
        raise error("meta", "missing: a pair needs meta.chosen_features and meta.rejected_features")
    for field in FEATURE_FIELDS:
        features = meta.get(field)
        if not isinstance(features, dict) or not features:
            raise error(f"meta.{field}", "expected a non-empty object of feature name -> number")
        for name, value in features.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise error(f"meta.{field}.{name}", f"expected a finite number, got {value!r}")
    if set(meta["chosen_features"]) != set(meta["rejected_features"]):
        raise error("meta.rejected_features", "names differ from meta.chosen_features")


def feature_differences(pairs: list[dict], seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, y, names): X[i] = f(first) − f(second) of pair i in a seeded random order, y[i] = first chosen."""
    if not pairs:
        raise ValueError("no preference pairs to analyse")
    for i, pair in enumerate(pairs):
        validate_feature_pair(pair, lambda field, message, i=i: RecordError(f"pairs[{i}]", None, field, message))
    names = sorted(pairs[0]["meta"]["chosen_features"])
    for i, pair in enumerate(pairs):
        if sorted(pair["meta"]["chosen_features"]) != names:
            raise RecordError(f"pairs[{i}]", None, "meta.chosen_features", f"feature names differ from pairs[0]: {names}")
    chosen = np.array([[p["meta"]["chosen_features"][n] for n in names] for p in pairs], dtype=np.float64)
    rejected = np.array([[p["meta"]["rejected_features"][n] for n in names] for p in pairs], dtype=np.float64)
    chosen_first = np.random.default_rng(seed).random(len(pairs)) < 0.5
    sign = np.where(chosen_first, 1.0, -1.0)[:, None]
    return sign * (chosen - rejected), chosen_first.astype(np.float64), names


# ----------------------------------------------------------------------------- the model


def fit_logistic_laplace(X: np.ndarray, y: np.ndarray, prior_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mode and Laplace covariance of Bayesian logistic regression (no intercept)."""
    if prior_std <= 0:
        raise ValueError(f"prior_std must be > 0, got {prior_std}")
    precision = np.eye(X.shape[1]) / prior_std**2
    w = np.zeros(X.shape[1])
    for _ in range(NEWTON_MAX_STEPS):
        p = _sigmoid(X @ w)
        gradient = X.T @ (y - p) - precision @ w
        hessian = (X * (p * (1 - p))[:, None]).T @ X + precision
        step = np.linalg.solve(hessian, gradient)
        w = w + step
        if np.max(np.abs(step)) < NEWTON_TOL:
            break
    p = _sigmoid(X @ w)
    hessian = (X * (p * (1 - p))[:, None]).T @ X + precision
    return w, np.linalg.inv(hessian)


def preference_regression(pairs: list[dict], prior_std: float = 10.0, level: float = 0.95,
                          seed: int = 0) -> list[FeatureWeight]:
    """One posterior weight per feature, with its `level` credible interval (Laplace approximation)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    X, y, names = feature_differences(pairs, seed)
    w, cov = fit_logistic_laplace(X, y, prior_std)
    std = np.sqrt(np.diag(cov))
    z = _normal_quantile(0.5 + level / 2)
    return [FeatureWeight(name, float(w[k]), float(std[k]), float(w[k] - z * std[k]), float(w[k] + z * std[k]))
            for k, name in enumerate(names)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow for large |z|


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


__all__ = ["FeatureWeight", "load_feature_pairs", "validate_feature_pair", "feature_differences",
           "fit_logistic_laplace", "preference_regression"]
