"""Best-of-n estimator vs brute-force enumeration; KL bound vs exact KL; bootstrap CIs; bad input."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest

from pmopt.bon.estimator import (
    bon_curve,
    bon_expectation,
    bon_expectations,
    bon_probs,
    bon_weights,
    default_n_grid,
    exact_bon_kl,
    kl_bound,
    sort_order,
    support_bon_kl,
)

# ----------------------------------------------------------------------------- brute-force references


def best_index(scores, subset):
    """The tie rule: highest score, and among equal scores the highest sample index."""
    return max(subset, key=lambda j: (scores[j], j))


def brute_bon(scores, values, n):
    """Average f over every n-subset of the N samples of each prompt (all C(N, n) of them)."""
    out = []
    for s, v in zip(scores, values, strict=True):
        subsets = list(itertools.combinations(range(len(s)), n))
        out.append(sum(v[best_index(s, sub)] for sub in subsets) / len(subsets))
    return np.array(out)


def brute_bon_kl(probs, scores, n):
    """KL(BoN_n || base) by enumerating all K^n ordered iid draws from the base."""
    p_bon = defaultdict(float)
    for draw in itertools.product(range(len(probs)), repeat=n):
        p_bon[best_index(scores, draw)] += math.prod(probs[k] for k in draw)
    return sum(q * math.log(q / probs[k]) for k, q in p_bon.items() if q > 0)


@pytest.fixture
def tied_case():
    """3 prompts x 6 samples with ties in score (including a tie at the top) and varied values."""
    scores = np.array([
        [0.3, 1.2, 1.2, -0.5, 0.7, 1.2],  # three-way tie at the top
        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],   # all tied
        [0.1, -1.0, 0.4, 0.4, 3.0, -2.0],
    ])
    values = np.array([
        [1.0, 5.0, -2.0, 0.5, 3.0, 7.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [2.5, 1.0, -1.0, 6.0, 0.25, 4.0],
    ])
    return scores, values


# ----------------------------------------------------------------------------- weights and order


@pytest.mark.parametrize("N", [1, 2, 6, 17, 200])
def test_weights_sum_to_one_and_match_binomials(N):
    for n in range(1, N + 1):
        w = bon_weights(N, n)
        assert w.shape == (N,)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        if N <= 17:
            exact = [math.comb(i - 1, n - 1) / math.comb(N, n) for i in range(1, N + 1)]
            np.testing.assert_allclose(w, exact, rtol=1e-12, atol=0)
        assert np.all(w[: n - 1] == 0)


def test_weights_hand_computed():
    # N=4, n=2: the i-th smallest is the max of a random pair with prob (i-1)/6.
    np.testing.assert_allclose(bon_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6], rtol=1e-15)
    np.testing.assert_allclose(bon_weights(3, 3), [0, 0, 1])
    np.testing.assert_allclose(bon_weights(5, 1), [0.2] * 5)


@pytest.mark.parametrize("N, n", [(3, 0), (3, 4), (0, 1), (3, -1)])
def test_weights_reject_bad_n(N, n):
    with pytest.raises(ValueError, match="1 <= n <= N"):
        bon_weights(N, n)


def test_weights_reject_non_integer():
    with pytest.raises(ValueError, match="integer"):
        bon_weights(4, 2.0)


def test_sort_order_breaks_ties_by_later_index():
    scores = np.array([1.0, 0.0, 1.0, 0.5, 1.0])
    assert sort_order(scores).tolist() == [1, 3, 0, 2, 4]
    # explicit tie-break key first, then index
    assert sort_order(scores, tie_break=np.array([0, 0, 2, 0, 1])).tolist() == [1, 3, 0, 4, 2]
    # row-wise on 2-D input
    assert sort_order(np.array([[2.0, 2.0, 1.0]])).tolist() == [[2, 0, 1]]
    with pytest.raises(ValueError, match="tie_break"):
        sort_order(scores, tie_break=np.zeros(3))


# ----------------------------------------------------------------------------- estimator vs brute force


def test_equals_brute_force_for_every_n_with_ties(tied_case):
    scores, values = tied_case
    for n in range(1, 7):
        np.testing.assert_allclose(bon_expectation(scores, values, n), brute_bon(scores, values, n),
                                   rtol=0, atol=1e-12)


def test_equals_brute_force_random_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(20, 7)).astype(float)  # heavy ties
    values = rng.normal(size=(20, 7))
    for n in range(1, 8):
        np.testing.assert_allclose(bon_expectation(scores, values, n), brute_bon(scores, values, n),
                                   rtol=0, atol=1e-12)


def test_n1_is_sample_mean_and_nN_is_tie_ruled_argmax(tied_case):
    scores, values = tied_case
    np.testing.assert_allclose(bon_expectation(scores, values, 1), values.mean(axis=1), atol=1e-12)
    # row 0: top score 1.2 tied at samples 1, 2, 5 -> sample 5 (value 7); row 1: all tied -> sample 5;
    # row 2: sample 4 (score 3.0).
    np.testing.assert_allclose(bon_expectation(scores, values, 6), [7.0, 5.0, 0.25], atol=1e-12)


def test_bool_values_give_rates():
    scores = np.array([[0.0, 1.0, 2.0, 3.0]])
    values = np.array([[True, False, False, True]])
    # n=2: weights [0, 1/6, 2/6, 3/6] -> P(best is sample 3) = 1/2
    assert bon_expectation(scores, values, 2)[0] == pytest.approx(0.5, abs=1e-15)


def test_masked_prompt_with_nan_values_is_skipped():
    scores = np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 0.0]])
    values = np.array([[0.0, 1.0], [np.nan, np.nan], [1.0, 0.0]])
    mask = np.array([True, False, True])
    out = bon_expectation(scores, values, 2, mask=mask)
    assert out[0] == 1.0 and out[2] == 1.0 and np.isnan(out[1])
    rows = bon_curve(scores, values, [1, 2], n_boot=50, mask=mask)
    assert rows[1]["mean"] == 1.0 and rows[0]["mean"] == 0.5 and rows[0]["n_prompts"] == 2


# ----------------------------------------------------------------------------- bad input


def test_nan_values_rejected_naming_row():
    scores = np.zeros((3, 4))
    values = np.ones((3, 4))
    values[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"values: prompt row 2, sample 1: NaN value .*mask"):
        bon_expectation(scores, values, 2)
    values[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"values: prompt row 2, sample 1: infinite value"):
        bon_expectation(scores, values, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bad_scores_rejected_naming_row(bad):
    scores = np.zeros((3, 4))
    scores[1, 3] = bad
    with pytest.raises(ValueError, match=r"scores: prompt row 1, sample 3: NaN or inf"):
        bon_expectation(scores, np.ones((3, 4)), 1)


def test_shape_and_n_errors():
    with pytest.raises(ValueError, match="shape"):
        bon_expectation(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match=r"\(prompts, samples\)"):
        bon_expectation(np.zeros(3), np.zeros(3), 1)
    with pytest.raises(ValueError, match="1 <= n <= N"):
        bon_expectation(np.zeros((2, 3)), np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="numbers or booleans"):
        bon_expectation(np.zeros((1, 2)), [["a", "b"]], 1)
    with pytest.raises(ValueError, match="mask"):
        bon_expectation(np.zeros((2, 3)), np.zeros((2, 3)), 1, mask=np.array([1, 0]))
    with pytest.raises(ValueError, match="ci"):
        bon_curve(np.zeros((2, 3)), np.zeros((2, 3)), [1], ci=1.5)
    with pytest.raises(ValueError, match="masked out"):
        bon_curve(np.zeros((2, 3)), np.zeros((2, 3)), [1], mask=np.array([False, False]))


# ----------------------------------------------------------------------------- curves and bootstrap


def test_curve_means_bounds_and_ci():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 8))
    values = scores + rng.normal(size=(40, 8))  # f correlates with the score
    grid = default_n_grid(8)
    rows = bon_curve(scores, values, grid, n_boot=500, seed=1)
    assert [r["n"] for r in rows] == [1, 2, 4, 8]
    for r in rows:
        expected = bon_expectation(scores, values, r["n"]).mean()
        assert r["mean"] == pytest.approx(expected, abs=1e-12)
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        assert r["kl_bound"] == pytest.approx(math.log(r["n"]) - (r["n"] - 1) / r["n"])
        assert r["n_prompts"] == 40
    # optimizing a correlated score raises the expected value
    assert rows[-1]["mean"] > rows[0]["mean"] + 0.5


def test_bootstrap_deterministic_for_seed_and_varies_with_seed():
    rng = np.random.default_rng(5)
    scores, values = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    a = bon_curve(scores, values, [1, 4], n_boot=200, seed=7)
    b = bon_curve(scores, values, [1, 4], n_boot=200, seed=7)
    c = bon_curve(scores, values, [1, 4], n_boot=200, seed=8)
    assert a == b
    assert a[0]["ci_low"] != c[0]["ci_low"]


def test_bootstrap_matches_loop_reference():
    """The vectorised bootstrap equals the obvious loop over resamples with the same draws."""
    rng = np.random.default_rng(2)
    scores, values = rng.normal(size=(13, 5)), rng.normal(size=(13, 5))
    rows = bon_curve(scores, values, [2], n_boot=300, seed=4, ci=0.9)
    per_prompt = bon_expectation(scores, values, 2)
    draws = np.random.default_rng(4).integers(0, 13, size=(300, 13))
    means = np.array([per_prompt[d].mean() for d in draws])
    lo, hi = np.quantile(means, [0.05, 0.95])
    assert rows[0]["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert rows[0]["ci_high"] == pytest.approx(hi, abs=1e-12)


def test_bootstrap_independent_of_chunking(monkeypatch):
    """Identical results (bitwise) whether replicates are drawn in one chunk or many."""
    from pmopt import stats

    rng = np.random.default_rng(6)
    scores, values = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    whole = bon_curve(scores, values, [1, 2, 6], n_boot=333, seed=3)
    monkeypatch.setattr(stats, "_CELLS_PER_CHUNK", 170)  # 1 replicate per chunk
    assert bon_curve(scores, values, [1, 2, 6], n_boot=333, seed=3) == whole


def test_bootstrap_bitwise_equal_to_the_estimators_own_before_pmopt_stats():
    """bon_curve's intervals come from `pmopt.stats` now; they are bit for bit those of the estimator's
    former `bootstrap_means` (prompt index draws, numpy means of the gathered values), so best-of-n
    curves written before keep their CIs."""
    rng = np.random.default_rng(8)
    scores, values = rng.normal(size=(37, 6)), rng.normal(size=(37, 6))
    grid = [1, 2, 3, 6]
    rows = bon_curve(scores, values, grid, n_boot=250, seed=11, ci=0.9)
    per_prompt = bon_expectations(scores, values, grid)  # (G, P), as bon_curve computes it
    draws = np.random.default_rng(11).integers(0, 37, size=(250, 37))
    boot = per_prompt[:, draws].mean(axis=-1).T  # the former bootstrap_means, one chunk
    low, high = np.quantile(boot, [0.05, 1 - 0.05], axis=0)
    assert [r["ci_low"] for r in rows] == low.tolist()
    assert [r["ci_high"] for r in rows] == high.tolist()


def test_default_n_grid():
    assert default_n_grid(1) == [1]
    assert default_n_grid(16) == [1, 2, 4, 8, 16]
    assert default_n_grid(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError):
        default_n_grid(0)


# ----------------------------------------------------------------------------- KL


def test_kl_bound_values():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError):
        kl_bound(0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_exact_kl_equals_brute_force_with_ties(n):
    probs = np.array([0.1, 0.25, 0.3, 0.05, 0.3])
    scores = np.array([0.5, 1.0, -1.0, 1.0, 0.2])  # outputs 1 and 3 tied: output 3 counts as larger
    assert exact_bon_kl(probs, scores, n) == pytest.approx(brute_bon_kl(probs, scores, n), abs=1e-12)


def test_bon_probs_equal_enumeration():
    probs = np.array([0.4, 0.1, 0.2, 0.3])
    scores = np.array([1.0, 1.0, 0.0, 2.0])
    n = 3
    p_bon = defaultdict(float)
    for draw in itertools.product(range(4), repeat=n):
        p_bon[best_index(scores, draw)] += math.prod(probs[k] for k in draw)
    np.testing.assert_allclose(bon_probs(probs, scores, n), [p_bon[k] for k in range(4)], atol=1e-14)


def test_exact_kl_below_bound_and_zero_at_n1():
    rng = np.random.default_rng(0)
    for _ in range(20):
        K = int(rng.integers(2, 30))
        probs = rng.dirichlet(np.ones(K))
        scores = rng.normal(size=K)
        assert exact_bon_kl(probs, scores, 1) == 0.0
        for n in (2, 4, 16, 256, 4096):
            kl = exact_bon_kl(probs, scores, n)
            assert 0.0 <= kl <= kl_bound(n) + 1e-12


def test_exact_kl_approaches_bound_for_many_outputs():
    # uniform base over many distinct outputs ~ a continuous score distribution: KL -> the bound
    K = 100_000
    kl = exact_bon_kl(np.full(K, 1.0 / K), np.arange(K, dtype=float), 8)
    assert kl == pytest.approx(kl_bound(8), abs=1e-3)


def test_exact_kl_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        exact_bon_kl([0.5, 0.2], [0.0, 1.0], 2)
    with pytest.raises(ValueError, match="non-negative"):
        exact_bon_kl([1.5, -0.5], [0.0, 1.0], 2)
    with pytest.raises(ValueError, match="equal length"):
        exact_bon_kl([1.0], [0.0, 1.0], 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        exact_bon_kl([0.5, 0.5], [0.0, np.nan], 2)
    with pytest.raises(ValueError, match="n must be"):
        exact_bon_kl([0.5, 0.5], [0.0, 1.0], 0)


def test_support_kl_merges_repeats_and_is_exact_on_a_full_support():
    """Samples of the same output merge; with every output seen (mass 1) the support KL is exact."""
    outputs = [["a", "b", "a", "c", "b", "a"]]
    probs = {"a": 0.5, "b": 0.3, "c": 0.2}
    scores = {"a": 0.0, "b": 2.0, "c": 1.0}
    logprobs = [[math.log(probs[o]) for o in outputs[0]]]
    kl, covered = support_bon_kl(outputs, logprobs, [[scores[o] for o in outputs[0]]], [1, 2, 4, 32])
    assert covered.tolist() == pytest.approx([1.0])
    expected = [exact_bon_kl([0.5, 0.3, 0.2], [0.0, 2.0, 1.0], n) for n in (1, 2, 4, 32)]
    np.testing.assert_allclose(kl[:, 0], expected, atol=1e-12)
    # n = 32 picks "b" unless all 32 draws miss it (0.7^32 ~ 1e-5): KL -> log(1 / 0.3)
    assert kl[0, 0] == 0.0 and kl[3, 0] == pytest.approx(math.log(1 / 0.3), abs=1e-3)


def test_support_kl_renormalises_partial_support_and_sums_token_sequences():
    # "x" was drawn through two token sequences (different log-probs): its probability is their sum
    outputs = [["x", "x", "y", "x"], ["z", "z", "z", "z"]]
    logprobs = [[math.log(0.2), math.log(0.1), math.log(0.3), math.log(0.2)], [math.log(0.9)] * 4]
    scores = [[1.0, 1.0, 0.0, 1.0], [5.0] * 4]
    kl, covered = support_bon_kl(outputs, logprobs, scores, [1, 2, 8])
    np.testing.assert_allclose(covered, [0.6, 0.9])
    np.testing.assert_allclose(kl[:, 0], [exact_bon_kl([0.5, 0.5], [1.0, 0.0], n) for n in (1, 2, 8)], atol=1e-12)
    assert np.all(kl[:, 1] == 0.0)  # one output: best-of-n is the base policy, whatever the bound says
    assert kl_bound(8) > 1.0


def test_support_kl_bad_input():
    with pytest.raises(ValueError, match="logprobs must be finite"):
        support_bon_kl([["a"]], [[0.5]], [[0.0]], [1])
    with pytest.raises(ValueError, match=r"\(P, N\)"):
        support_bon_kl([["a", "b"]], [[-1.0]], [[0.0, 1.0]], [1])
