"""pmopt.bon: best-of-N from one sampling pass (docs/ARCHITECTURE.md §6).

- `estimator`: the unbiased E[f(BoN_n)] estimator, bootstrap CIs, the KL bound and exact KL (pure numpy);
- `sweep`: `run_bon(cfg, out)`, the Python form of `pmopt bon CONFIG --out DIR`, with `BonConfig` /
  `PMEntry`; `shards`, `grades`, `scoring` and `curves` are its stages.

The sweep's names are imported lazily (PEP 562), so `pmopt.bon.estimator` stays importable without
torch and transformers.
"""

from pmopt.bon.estimator import (
    bon_curve,
    bon_expectation,
    bon_expectations,
    bon_probs,
    bon_weights,
    default_n_grid,
    exact_bon_kl,
    kl_bound,
)

_SWEEP_NAMES = ("BonConfig", "PMEntry", "run_bon", "plan_sweep")


def __getattr__(name: str):
    if name in _SWEEP_NAMES:
        from pmopt.bon import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'pmopt.bon' has no attribute '{name}'")


__all__ = ["bon_curve", "bon_expectation", "bon_expectations", "bon_probs", "bon_weights", "default_n_grid",
           "exact_bon_kl", "kl_bound", *_SWEEP_NAMES]
