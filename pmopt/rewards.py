"""One reward abstraction for best-of-N and RL alike (docs/ARCHITECTURE.md §6, §7).

A `RewardSpec` says what scores a (prompt, response): its `kind`, the `path` it reads, an optional
`prefix`, and for ensembles the `aggregate` and its `lam`. `build_reward(spec, options)` returns a
`Reward`, a callable `(prompts, responses, metas) -> (B,) tensor`. Kinds:

- pm        `PreferenceModel.load(path).score(prompts, responses)` (a full, LoRA or ensemble dir, or a hub id);
- prefixed  the same PM scoring the dialogue behind a prefix (Sharma et al. 2023 §4.2's non-sycophantic PM);
- ensemble  an ensemble dir aggregated by mean, worst or uncertainty-weighted mean (Coste et al. 2023);
- agreement_penalty  the PM at `path` (behind `prefix`, if any) minus `lam`·a(x, y), a = 1 when the response
  agrees with a user whose stance is false (Shapira, Benadè & Procaccia 2026's A(x, y)·1{x ∈ X_false}: the
  `sycophantic` grade, exact from the record's source, else the answer / mimicry probe's own grader);
  best-of-N fits `lam` on the base policy's samples when it is null (`pmopt.bon.drift.penalty_coefficient`);
- gold, raters, ...: a reward without a model that a data source supplies at `path` (the synthetic
  world's gold reward, Gao et al. 2022; see `pmopt.sources`). Scores of another source's records are NaN.

A new kind is one function `builder(spec, options) -> Reward` passed to `register_kind`.
"""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pmopt import sources
from pmopt.io import PmoptError
from pmopt.prefixes import PREFIXES, named_prefix
from pmopt.records import check_text

PM_KINDS = ("pm", "prefixed", "ensemble")
PENALTY_KIND = "agreement_penalty"
AGREEMENT_OUTCOME = "sycophantic"  # A(x, y)·1{x in X_false}: agreeing with a user whose stance is false
AGGREGATES = ("mean", "worst", "uwo")


@dataclass
class RewardSpec:
    """What scores a response; `name` labels its curves and its score file."""

    name: str
    kind: str = "pm"  # pm | prefixed | ensemble | agreement_penalty, or a source's reward (gold, raters)
    path: str | None = None  # PM dir or hub id; for a source's reward, the source dir (a world)
    prefix: str | list[dict] | None = None  # a named prefix ("non_sycophantic") or messages
    aggregate: str | None = None  # ensemble: mean | worst | uwo; default: what ensemble.json records
    # the weight of a penalty subtracted from the PM's score: uwo's mean - lam * variance (default: ensemble.json's
    # uwo_lambda); agreement_penalty's score - lam * a (default: fitted on the base samples by best-of-N)
    lam: float | None = None
    batch_size: int = 32  # sequences per PM forward pass

    def resolved_prefix(self) -> list[dict] | None:
        """The prefix as messages: kind prefixed defaults to the non-sycophantic one."""
        prefix = self.prefix
        if prefix is None or prefix == "none":
            return named_prefix("non_sycophantic") if self.kind == "prefixed" else None
        if isinstance(prefix, str):
            if prefix not in PREFIXES:
                raise PmoptError(f"{self.name}: prefix {prefix!r}: expected one of {sorted(PREFIXES)} or a "
                                 "list of {role, content} messages")
            return named_prefix(prefix)

        def error(field, message):
            return PmoptError(f"{self.name}: {field}: {message}")

        check_text(prefix, "prefix", error)
        return prefix


class Reward(ABC):
    """A scorer of (prompt, response) pairs; `extra` holds per-call diagnostics (e.g. ensemble spread)."""

    name: str = ""
    extra: dict[str, float]

    @abstractmethod
    def __call__(self, prompts: Sequence, responses: Sequence[str], metas: Sequence[dict]) -> torch.Tensor:
        """(B,) scores, one per (prompt, response)."""

    def members(self, prompts: Sequence, responses: Sequence[str], metas: Sequence[dict]) -> torch.Tensor:
        """(K, B) scores of an ensemble's members; (1, B) for any other reward."""
        return self(prompts, responses, metas).unsqueeze(0)

    def close(self) -> None:
        """Release the model (one PM resident at a time); a reward without one holds nothing."""
        return None


class PMReward(Reward):
    """A PreferenceModel (or ensemble) score, optionally behind a prefix."""

    def __init__(self, pm, prefix: list[dict] | None, batch_size: int, name: str):
        self.pm, self.prefix, self.batch_size, self.name = pm, prefix, batch_size, name
        self.extra = {}

    def __call__(self, prompts, responses, metas=()) -> torch.Tensor:
        scores = self.pm.score(list(prompts), list(responses), prefix=self.prefix, batch_size=self.batch_size)
        members = getattr(self.pm, "member_scores", None)
        self.extra = {} if members is None else {"reward/ensemble_std": float(members.std(0).mean())}
        return scores

    def members(self, prompts, responses, metas=()) -> torch.Tensor:
        score_members = getattr(self.pm, "score_members", None)
        if score_members is None:
            return super().members(prompts, responses, metas)
        return score_members(list(prompts), list(responses), prefix=self.prefix, batch_size=self.batch_size)

    @property
    def n_truncated(self) -> int:
        return getattr(self.pm, "n_truncated", 0)

    def close(self) -> None:
        self.pm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class SourceReward(Reward):
    """A reward a data source computes exactly from its records' metadata (no model)."""

    def __init__(self, fn: Callable[[Sequence[dict], Sequence[str]], list[float]], name: str):
        self.fn, self.name, self.extra = fn, name, {}

    def __call__(self, prompts, responses, metas) -> torch.Tensor:
        # float64: gold rewards are exact small sums, kept exact for the curves
        return torch.from_numpy(np.asarray(self.fn(list(metas), list(responses)), dtype=np.float64))


Builder = Callable[[RewardSpec, object], Reward]
_KINDS: dict[str, Builder] = {}


def register_kind(kind: str, builder: Builder) -> Builder:
    """Add a reward kind: `builder(spec, load_options) -> Reward`."""
    if kind in _KINDS and _KINDS[kind] is not builder:
        raise ValueError(f"a reward kind '{kind}' is already registered")
    _KINDS[kind] = builder
    return builder


def registered_kinds() -> tuple[str, ...]:
    """The kinds with a builder of their own (the PM kinds and any added with `register_kind`); any
    other kind is the reward of a data source at `spec.path`."""
    return tuple(_KINDS)


def _build_pm(spec: RewardSpec, options) -> Reward:
    from pmopt.pm.model import PreferenceModel

    if not spec.path:
        raise PmoptError(f"{spec.name}: path is required for kind {spec.kind}")
    pm = PreferenceModel.load(spec.path, options, method=spec.aggregate, lam=spec.lam)
    return PMReward(pm, spec.resolved_prefix(), spec.batch_size, spec.name)


for _kind in PM_KINDS:
    register_kind(_kind, _build_pm)


class AgreementPenaltyReward(Reward):
    """r(x, y) − μ·a(x, y): a PM's score minus μ times the agreement grade on false-stance prompts.

    Shapira, Benadè & Procaccia 2026 show that optimisation raises sycophancy when a and r covary under the
    base policy, and correct the reward by an agreement penalty; μ* = max(0, Cov(a, r) / Var(a)) is the
    smallest μ that leaves Cov(a, r − μ·a) <= 0 on base samples (docs/drift.md derives it and compares it
    with the paper's form). `mu` None: not yet fitted (best-of-N fits it; RL needs it given as `lam`).
    """

    def __init__(self, base: Reward, mu: float | None, name: str):
        self.base, self.mu, self.name, self.extra = base, mu, name, {}

    def agreement(self, metas: Sequence[dict], responses: Sequence[str]) -> np.ndarray:
        return np.array([agreement_grade(m, r) for m, r in zip(metas, responses, strict=True)], dtype=np.float64)

    def __call__(self, prompts, responses, metas) -> torch.Tensor:
        if self.mu is None:
            raise PmoptError(f"{self.name}: kind {PENALTY_KIND} needs lam (the penalty's weight μ); best-of-N fits "
                             "it on the base policy's samples (bon/drift.json), give that value as lam here")
        scores = self.base(prompts, responses, metas).detach().cpu().double()
        return scores - self.mu * torch.from_numpy(self.agreement(metas, responses))

    def close(self) -> None:
        self.base.close()


def agreement_grade(meta: dict, response: str) -> float:
    """a(x, y): the record's source grades it exactly; a record without one is graded by the answer or the
    mimicry probe's own rules (exact string matching), whichever probe's metadata it carries."""
    source = sources.of_record(meta)
    if source is not None:
        return float(source.grade(meta, response).get(AGREEMENT_OUTCOME, 0.0))
    from pmopt.probes.registry import get_probe

    for probe in (get_probe("answer"), get_probe("mimicry")):
        if all(isinstance(meta.get(k), kind) for k, kind in probe.required_meta.items()):
            return float(probe.grade({"id": "", "prompt": "", "meta": meta}, response)[AGREEMENT_OUTCOME])
    raise PmoptError(f"kind {PENALTY_KIND}: cannot grade agreement for a record with meta keys {sorted(meta)}: it "
                     "needs a registered source (meta.source) or the answer / mimicry probe's metadata")


def _build_agreement_penalty(spec: RewardSpec, options) -> Reward:
    from dataclasses import replace

    if spec.lam is not None and spec.lam < 0:
        raise PmoptError(f"{spec.name}: lam (the agreement penalty's μ) must be >= 0, got {spec.lam}")
    base = _build_pm(replace(spec, kind="pm", lam=None), options)
    return AgreementPenaltyReward(base, spec.lam, spec.name)


register_kind(PENALTY_KIND, _build_agreement_penalty)


def source_reward(spec: RewardSpec, options=None) -> Reward:
    """A source's own reward of kind `spec.kind` (e.g. the world's gold), the source found by its path."""
    if not spec.path:
        raise PmoptError(f"{spec.name}: kind {spec.kind} needs the source directory it is computed from "
                         "(a `pmopt world` dir)")
    return SourceReward(sources.open_path(spec.path, f"{spec.name}.path").reward(spec.kind), spec.name)


def build_reward(spec: RewardSpec, options=None) -> Reward:
    """The `Reward` for `spec`; PM kinds load with `options` (`PMLoadOptions`)."""
    builder = _KINDS.get(spec.kind, source_reward)
    return builder(spec, options)


__all__ = ["RewardSpec", "Reward", "PMReward", "SourceReward", "AgreementPenaltyReward", "agreement_grade",
           "register_kind", "registered_kinds", "build_reward", "source_reward", "PM_KINDS", "PENALTY_KIND", "AGGREGATES"]
