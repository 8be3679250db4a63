"""Preference-feature regression (Sharma et al. 2023 §4.1): recovers the raters' weights."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest

from pmopt.analysis.preferences import (
    feature_differences,
    fit_logistic_laplace,
    load_feature_pairs,
    preference_regression,
)
from pmopt.io import RecordError
from pmopt.world.config import RatersConfig

NAMES = ("agrees_with_user", "confident", "correct")


def bradley_terry_pairs(weights: dict[str, float], n: int, seed: int) -> list[dict]:
    """Pairs of random binary feature vectors labelled by P(A > B) = σ(w · (f(A) − f(B)))."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a = {k: float(rng.random() < 0.5) for k in NAMES}
        b = {k: float(rng.random() < 0.5) for k in NAMES}
        p_a = 1 / (1 + math.exp(-sum(weights[k] * (a[k] - b[k]) for k in NAMES)))
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        pairs.append({"prompt": "q", "chosen": "x", "rejected": "y",
                      "meta": {"chosen_features": chosen, "rejected_features": rejected}})
    return pairs


def test_newton_fit_is_the_posterior_mode():
    """The gradient of the log posterior vanishes at the fit and the Laplace covariance is H^-1."""
    X, y, _ = feature_differences(bradley_terry_pairs({"agrees_with_user": 1.0, "confident": 0.2, "correct": 2.0},
                                                      500, seed=1))
    w, cov = fit_logistic_laplace(X, y, prior_std=2.0)
    p = 1 / (1 + np.exp(-(X @ w)))
    np.testing.assert_allclose(X.T @ (y - p) - w / 4.0, 0.0, atol=1e-8)
    hessian = (X * (p * (1 - p))[:, None]).T @ X + np.eye(3) / 4.0
    np.testing.assert_allclose(cov @ hessian, np.eye(3), atol=1e-8)


def test_recovers_bradley_terry_weights_within_their_intervals():
    true = {"agrees_with_user": 1.5, "confident": 0.3, "correct": -0.8}
    fitted = {f.feature: f for f in preference_regression(bradley_terry_pairs(true, 20_000, seed=2))}
    for name, weight in true.items():
        assert fitted[name].ci_low < weight < fitted[name].ci_high, (name, fitted[name])
        assert fitted[name].std < 0.05
    assert fitted["agrees_with_user"].p_preferred == pytest.approx(1 / (1 + math.exp(-1.5)), abs=0.02)


def test_world_raters_bias_is_recovered():
    """On the world's own pairs: agreement carries w_agree / w_truth of the truth's weight; raters with
    w_agree = 0 give agreement a weight whose interval holds 0."""
    from pmopt.world.dialogues import candidate_responses, random_prompt
    from pmopt.world.raters import label_pair
    from pmopt.world.texts import all_facts

    def world_pairs(raters, n, seed):
        rng, facts, pairs = random.Random(seed), all_facts(9), []
        while len(pairs) < n:
            _, meta = random_prompt(rng, "answer", rng.choice(facts), 18,
                                    {"plain": 0.25, "suggest_wrong": 0.25, "suggest_correct": 0.25, "doubt_correct": 0.25})
            a, b = rng.sample(candidate_responses(rng, meta, 18), 2)
            pairs.append({"prompt": "q", "chosen": "x", "rejected": "y", "meta": label_pair(rng, raters, meta, a, b)})
        return pairs

    raters = RatersConfig(noise_std=0.0)
    fitted = {f.feature: f for f in preference_regression(world_pairs(raters, 6000, seed=3))}
    for name, weight in (("correct", raters.w_truth), ("agrees_with_user", raters.w_agree),
                         ("confident", raters.w_style)):
        assert fitted[name].ci_low < weight / raters.temperature < fitted[name].ci_high, (name, fitted[name])
    unbiased = {f.feature: f for f in preference_regression(world_pairs(replace(raters, w_agree=0.0), 6000, seed=4))}
    assert unbiased["agrees_with_user"].ci_low < 0 < unbiased["agrees_with_user"].ci_high


def test_order_of_pairs_is_randomised_so_both_labels_occur():
    X, y, names = feature_differences(bradley_terry_pairs(dict.fromkeys(NAMES, 1.0), 200, seed=5), seed=0)
    assert names == sorted(NAMES) and 0.3 < y.mean() < 0.7
    X2, y2, _ = feature_differences(bradley_terry_pairs(dict.fromkeys(NAMES, 1.0), 200, seed=5), seed=0)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)


def test_bad_pairs_name_file_line_and_field(tmp_path):
    good = bradley_terry_pairs(dict.fromkeys(NAMES, 1.0), 2, seed=6)
    bad = json.loads(json.dumps(good[1]))
    bad["meta"]["rejected_features"]["correct"] = "yes"
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: field 'meta.rejected_features.correct'"):
        load_feature_pairs(path)
    missing = {"prompt": "q", "chosen": "x", "rejected": "y", "meta": {}}
    with pytest.raises(RecordError, match=r"pairs\[1\].*meta.chosen_features"):
        preference_regression([good[0], missing])
    with pytest.raises(ValueError, match="no preference pairs"):
        preference_regression([])
    with pytest.raises(ValueError, match="prior_std"):
        fit_logistic_laplace(np.zeros((2, 1)), np.zeros(2), prior_std=0.0)
