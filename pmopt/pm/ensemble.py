"""PM ensembles and their conservative aggregates (Coste et al. 2023, "Reward Model Ensembles Help
Mitigate Overoptimization").

K members trained from different seeds score every pair; the aggregate is one of

- mean:  R(x) = (1/K) Σ_k R_k(x)
- worst: R(x) = min_k R_k(x)                                   (worst-case optimization, WCO)
- uwo:   R(x) = (1/K) Σ_k R_k(x) − λ · (1/K) Σ_k (R_k(x) − R̄(x))²   (uncertainty-weighted, UWO)

The UWO variance is the intra-ensemble (population, 1/K) variance, as in Coste et al. §3.
The aggregates are pure functions on a (K, B) tensor, tested against hand computation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from pmopt.io import PmoptError
from pmopt.pm.model import ENSEMBLE_FILE, PMLoadOptions, PreferenceModel
from pmopt.text import Messages, Text

METHODS = ("mean", "worst", "uwo")


def mean_aggregate(scores: torch.Tensor) -> torch.Tensor:
    return scores.mean(dim=0)


def worst_case_aggregate(scores: torch.Tensor) -> torch.Tensor:
    return scores.min(dim=0).values


def uncertainty_weighted_aggregate(scores: torch.Tensor, lam: float) -> torch.Tensor:
    return scores.mean(dim=0) - lam * scores.var(dim=0, unbiased=False)


def aggregate(scores: torch.Tensor, method: str = "mean", lam: float = 0.0) -> torch.Tensor:
    """(K, B) member scores -> (B,) ensemble scores."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"expected member scores of shape (K, B) with K >= 1, got {tuple(scores.shape)}")
    if method == "mean":
        return mean_aggregate(scores)
    if method == "worst":
        return worst_case_aggregate(scores)
    if method == "uwo":
        return uncertainty_weighted_aggregate(scores, lam)
    raise ValueError(f"unknown ensemble aggregate {method!r} (expected one of {list(METHODS)})")


class EnsemblePM:
    """K PreferenceModels scored together. `score` aggregates; `.member_scores` keeps the (K, B) scores."""

    def __init__(self, members: Sequence[PreferenceModel], name: str = "ensemble", method: str = "mean",
                 lam: float = 0.0):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if method not in METHODS:
            raise ValueError(f"unknown ensemble aggregate {method!r} (expected one of {list(METHODS)})")
        self.members = list(members)
        self.name, self.method, self.lam = name, method, lam
        self.member_scores: torch.Tensor | None = None

    @classmethod
    def load(cls, path: str | Path, options: PMLoadOptions | None = None, *, method: str | None = None,
             lam: float | None = None, **overrides) -> EnsemblePM:
        """Every member loaded with the same `options` (see `PreferenceModel.load`)."""
        path = Path(path)
        options = replace(options or PMLoadOptions(), **overrides)
        spec = read_ensemble_spec(path)
        members = [PreferenceModel.load(path / member, options) for member in spec["members"]]
        return cls(members, name=path.resolve().name, method=method or spec.get("aggregate", "mean"),
                   lam=spec.get("uwo_lambda", 0.0) if lam is None else lam)

    @property
    def n_truncated(self) -> int:
        return sum(m.n_truncated for m in self.members)

    def score_members(self, prompts: Sequence[Text], responses: Sequence[str],
                      prefix: Messages | None = None, batch_size: int = 32) -> torch.Tensor:
        """(K, B): every member's score of every pair."""
        return torch.stack([m.score(prompts, responses, prefix=prefix, batch_size=batch_size)
                            for m in self.members])

    def score(self, prompts: Sequence[Text], responses: Sequence[str], prefix: Messages | None = None,
              batch_size: int = 32) -> torch.Tensor:
        self.member_scores = self.score_members(prompts, responses, prefix, batch_size)
        return aggregate(self.member_scores, self.method, self.lam)

    @property
    def info(self) -> dict:
        return {"kind": "ensemble", "members": [m.name for m in self.members], "aggregate": self.method,
                "uwo_lambda": self.lam}

    def __repr__(self) -> str:
        return f"EnsemblePM(name={self.name!r}, K={len(self.members)}, method={self.method!r})"


def read_ensemble_spec(path: Path) -> dict:
    spec_file = path / ENSEMBLE_FILE
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{spec_file}: malformed JSON ({exc.msg})") from None
    members = spec.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise PmoptError(f"{spec_file}: field 'members': expected a non-empty list of member directories")
    if spec.get("aggregate", "mean") not in METHODS:
        raise PmoptError(f"{spec_file}: field 'aggregate': expected one of {list(METHODS)}")
    return spec


__all__ = ["EnsemblePM", "aggregate", "mean_aggregate", "worst_case_aggregate",
           "uncertainty_weighted_aggregate", "METHODS", "read_ensemble_spec"]
