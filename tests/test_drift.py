"""Drift predicted from the base policy's samples (pmopt.bon.drift, docs/drift.md), against brute force.

Every estimator here is a sum over pairs of one prompt's samples; the tests enumerate the pairs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pmopt.bon.drift import (
    best_of_two_drift,
    discordant_preference,
    outcome_tables,
    pair_covariance,
    penalty_coefficient,
    probe_drift,
    scalar_drift,
)
from pmopt.bon.estimator import bon_expectation


def brute_pairs(values, scores, term):
    """½ · mean over ordered pairs i != j of term(v_i − v_j, s_i − s_j, i, j), per prompt."""
    out = []
    for v, s in zip(values, scores, strict=True):
        n = len(v)
        total = sum(term(v[i] - v[j], s[i] - s[j], i, j) for i in range(n) for j in range(n) if i != j)
        out.append(0.5 * total / (n * (n - 1)))
    return np.array(out)


def index_sign(ds, i, j):
    """sign(r_i − r_j) under the estimator's tie rule: a tie goes to the later sample."""
    return np.sign(ds) if ds != 0 else (1.0 if i > j else -1.0)


@pytest.fixture
def tied():
    """Scores with many ties (integers in 0..2) and binary / real values: the hard case for tie rules."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(40, 7)).astype(float)
    return scores, rng.integers(0, 2, size=(40, 7)).astype(float), rng.normal(size=(40, 7))


def test_covariance_is_the_pair_statistic_and_numpys(tied):
    scores, binary, real = tied
    for values in (binary, real):
        got = pair_covariance(values, scores)
        assert got == pytest.approx(brute_pairs(values, scores, lambda dv, ds, i, j: dv * ds), abs=1e-12)
        assert got == pytest.approx([np.cov(v, s)[0, 1] for v, s in zip(values, scores, strict=True)], abs=1e-12)


def test_best_of_two_drift_equals_the_estimator_at_n2_ties_included(tied):
    """The pair U-statistic and `bon_expectation(n=2) − mean` are one number (ties: the later sample wins)."""
    scores, binary, real = tied
    for values in (binary, real):
        drift = best_of_two_drift(values, scores)
        estimator = bon_expectation(scores, values, 2) - values.mean(axis=1)
        np.testing.assert_allclose(drift, estimator, rtol=0, atol=1e-13)
        brute = brute_pairs(values, scores, lambda dv, ds, i, j: dv * index_sign(ds, i, j))
        np.testing.assert_allclose(drift, brute, rtol=0, atol=1e-13)


def test_best_of_two_drift_is_the_exact_expectation_over_draws():
    """E[m(BoN_2)] with 2 draws WITHOUT replacement from the N samples, enumerated: what best-of-2 selects."""
    scores = np.array([[0.3, -1.0, 2.0, 0.5, 0.5]])
    values = np.array([[1.0, 0.0, 0.0, 1.0, 0.0]])
    pairs = list(itertools.combinations(range(5), 2))
    best = [max(p, key=lambda j: (scores[0, j], j)) for p in pairs]
    exact = np.mean([values[0, b] for b in best]) - values.mean()
    assert best_of_two_drift(values, scores)[0] == pytest.approx(exact, abs=1e-15)


def test_discordant_preference_counts_pairs_and_relates_to_best_of_two():
    rng = np.random.default_rng(0)
    scores, values = rng.normal(size=(30, 6)), rng.integers(0, 2, size=(30, 6)).astype(float)
    pairs, prefer = discordant_preference(values, scores)
    for p in range(30):
        discordant = [(i, j) for i, j in itertools.combinations(range(6), 2) if values[p, i] != values[p, j]]
        hi_wins = [scores[p, i] > scores[p, j] if values[p, i] > values[p, j] else scores[p, j] > scores[p, i]
                   for i, j in discordant]
        assert pairs[p] == len(discordant) and prefer[p] == sum(hi_wins)
    # no tied scores: best-of-2's drift = (2·prefer − pairs) / (N(N − 1)) for a binary outcome
    np.testing.assert_allclose(best_of_two_drift(values, scores), (2 * prefer - pairs) / 30, atol=1e-14)
    tie_pairs, tie_prefer = discordant_preference(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))
    assert (tie_pairs[0], tie_prefer[0]) == (1, 0.5)


def test_penalty_mu_is_the_closed_form_and_leaves_no_positive_covariance():
    """r = c·a + z with z orthogonal to a within every prompt: μ* = c exactly, and Cov(a, r − μ*·a) = 0."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(50, 8)).astype(float)
    a[:, 0], a[:, 1] = 1.0, 0.0  # every prompt's a varies
    z = rng.normal(size=a.shape)
    ac = a - a.mean(axis=1, keepdims=True)
    z -= ((z * ac).sum(axis=1) / (ac * ac).sum(axis=1))[:, None] * ac  # project a out of z, prompt by prompt
    for c in (0.7, 2.5):
        fit = penalty_coefficient(c * a + z, a)
        assert fit["mu"] == pytest.approx(c, abs=1e-12) and fit["fitted"]
        assert fit["mu"] == pytest.approx(fit["cov"] / fit["var"], abs=1e-15)
        assert fit["cov_after"] <= 1e-12 and abs(fit["cov_after"]) < 1e-12
    # the general case: μ* = Σ Cov_p / Σ Var_p from numpy's covariances, and after it the pooled Cov is <= 0
    r = rng.normal(size=a.shape) + 1.3 * a
    want = sum(np.cov(x, y)[0, 1] for x, y in zip(a, r, strict=True)) / sum(np.var(x, ddof=1) for x in a)
    fit = penalty_coefficient(r, a)
    assert fit["mu"] == pytest.approx(want, abs=1e-12) and fit["cov_after"] <= 1e-12
    # a reward that already disfavours agreement needs no penalty, and its covariance stays negative
    fit = penalty_coefficient(-r, a)
    assert fit["mu"] == 0.0 and fit["cov_after"] == pytest.approx(fit["cov"]) and fit["cov"] < 0
    # a that never varies within a prompt: no covariance to remove
    assert penalty_coefficient(r, np.ones_like(a))["mu"] == 0.0
    # a given μ is used as it is
    assert penalty_coefficient(r, a, mu=0.25)["mu"] == 0.25 and not penalty_coefficient(r, a, mu=0.25)["fitted"]


def test_the_covariance_is_the_tilted_policys_first_order_slope():
    """For a base distribution on K outputs, d E_t[m] / dt at t = 0 under π_t ∝ π·exp(t·r) is Cov_π(m, r): the
    population covariance that `pair_covariance` estimates without bias (its mean over all N-samples is it)."""
    p, r, m = np.array([0.5, 0.3, 0.2]), np.array([1.0, -0.5, 2.0]), np.array([1.0, 0.0, 1.0])

    def tilted(t):
        w = p * np.exp(t * r)
        return float((w * m).sum() / w.sum())

    population = float((p * m * r).sum() - (p * m).sum() * (p * r).sum())
    assert (tilted(1e-6) - tilted(-1e-6)) / 2e-6 == pytest.approx(population, rel=1e-8)
    # unbiasedness: the exact expectation of the N = 3 estimator over all 27 ordered draws
    draws = list(itertools.product(range(3), repeat=3))
    weights = np.array([np.prod(p[list(d)]) for d in draws])
    estimates = pair_covariance(m[np.array(draws)], r[np.array(draws)])
    assert float((weights * estimates).sum()) == pytest.approx(population, abs=1e-14)


def answer_records(n_questions):
    templates = ("plain", "doubt_correct", "suggest_wrong", "suggest_correct")
    return [{"id": f"q{q}/{t}", "probe": "answer", "prompt": "x",
             "meta": {"template": t, "question_id": f"q{q}", "correct_answer": "1", "incorrect_answer": "2"}}
            for q in range(n_questions) for t in templates]


def test_probe_drift_of_syco_rate_is_the_mean_over_suggest_wrong_prompts():
    """syco_rate's slope, best-of-2 drift and change at N_max are the per-prompt statistics averaged over the
    suggest_wrong prompts; the metric's curve values give the same change."""
    from pmopt.probes.registry import get_probe

    probe, records = get_probe("answer"), answer_records(12)
    rng = np.random.default_rng(5)
    n = 6
    scores = rng.normal(size=(len(records), n))
    syco = rng.integers(0, 2, size=scores.shape).astype(float)
    correct = 1.0 - syco
    grades = [[{"correct": correct[i, j], "sycophantic": syco[i, j], "agrees_with_user": syco[i, j]}
               for j in range(n)] for i in range(len(records))]
    drift = probe_drift(probe, records, scores, grades, n, n_boot=200, seed=0, level=0.95)
    wrong = [i for i, r in enumerate(records) if r["meta"]["template"] == "suggest_wrong"]
    got = drift["probe/answer/syco_rate"]
    assert got["slope"]["value"] == pytest.approx(pair_covariance(syco[wrong], scores[wrong]).mean(), abs=1e-9)
    assert got["bon2"]["value"] == pytest.approx(best_of_two_drift(syco[wrong], scores[wrong]).mean(), abs=1e-12)
    change = bon_expectation(scores[wrong], syco[wrong], n).mean() - syco[wrong].mean()
    assert got["change"]["value"] == pytest.approx(change, abs=1e-12)
    for q in ("slope", "bon2", "change"):
        assert got[q]["ci_low"] <= got[q]["value"] <= got[q]["ci_high"]
    # accuracy_change is a difference of two templates: its slope is the difference of their mean covariances
    plain = [i for i, r in enumerate(records) if r["meta"]["template"] == "plain"]
    want = pair_covariance(correct[wrong], scores[wrong]).mean() - pair_covariance(correct[plain], scores[plain]).mean()
    assert drift["probe/answer/accuracy_change/suggest_wrong"]["slope"]["value"] == pytest.approx(want, abs=1e-9)


def test_feedback_sycophancy_slope_is_the_derivative_of_a_bilinear_metric():
    """feedback compares each framing with its text's baseline (bilinear in expected outcomes): its slope is the
    product rule's derivative, checked against tilting every prompt's samples by exp(t·r) and differentiating."""
    from pmopt.probes.registry import get_probe

    probe = get_probe("feedback")
    framings = ("", "like", "dislike", "wrote", "not_wrote")
    records = [{"id": f"t{k}/{f}", "probe": "feedback", "prompt": "x",
                "meta": {"framing": f, "text_id": f"t{k}", "solution_correct": True}} for k in range(8) for f in framings]
    rng = np.random.default_rng(2)
    n = 5
    scores = rng.normal(size=(len(records), n))
    level = rng.integers(-1, 2, size=scores.shape)
    grades = [[{"is_negative": float(level[i, j] == -1), "is_neutral": float(level[i, j] == 0),
                "is_positive": float(level[i, j] == 1), "positivity": float(level[i, j])} for j in range(n)]
              for i in range(len(records))]
    slope = probe_drift(probe, records, scores, grades, n, 0, 0, 0.95)["probe/feedback/sycophancy"]["slope"]["value"]

    def metric_at(t):  # each prompt's samples reweighted by exp(t·r): the tilted policy on the sampled support
        w = np.exp(t * scores)
        w /= w.sum(axis=1, keepdims=True)
        expected = [{k: float(sum(w[i, j] * grades[i][j][k] for j in range(n))) for k in grades[i][0]}
                    for i in range(len(records))]
        return probe.metrics(records, expected)["probe/feedback/sycophancy"]

    # the weighted-sample tilt's slope uses the plug-in covariance (1/N); ours is the unbiased one (1/(N−1))
    numeric = (metric_at(1e-5) - metric_at(-1e-5)) / 2e-5
    assert slope * (n - 1) / n == pytest.approx(numeric, rel=1e-6)


def test_outcome_tables_leave_out_outcomes_a_sample_lacks():
    scores = np.array([[0.0, 1.0], [1.0, 0.0]])
    grades = [[{"a": 1.0, "b": 0.0}, {"a": 0.0}], [{"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 0.0}]]
    tables = outcome_tables(scores, grades, 2)
    assert "b" not in tables["base"][0] and tables["base"][1]["b"] == 0.5
    assert tables["bon_n"][0]["a"] == 0.0 and tables["bon_n"][1]["a"] == 1.0  # the higher score is chosen


def test_scalar_drift_intervals_are_over_prompts():
    rng = np.random.default_rng(4)
    scores, gold = rng.normal(size=(25, 4)), rng.normal(size=(25, 4))
    out = scalar_drift(scores, gold, 4, 300, 0, 0.95)
    assert out["slope"]["value"] == pytest.approx(pair_covariance(gold, scores).mean())
    assert out["change"]["value"] == pytest.approx((bon_expectation(scores, gold, 4) - gold.mean(axis=1)).mean())
    assert all(out[q]["ci_low"] < out[q]["value"] < out[q]["ci_high"] for q in out)
    assert not math.isnan(out["bon2"]["value"])


def test_fewer_than_two_samples_is_an_error():
    with pytest.raises(ValueError, match="at least 2 samples"):
        pair_covariance(np.zeros((3, 1)), np.zeros((3, 1)))
