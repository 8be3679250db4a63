"""What a probe is (docs/ARCHITECTURE.md §8): prompt records + how to prompt the policy + a pure scorer + metrics.

In the style of lm-evaluation-harness and inspect_ai, a probe is data plus pure functions:

- `load(source)` returns docs/ARCHITECTURE.md §4 prompt records `{id, probe, prompt, meta}` from a world directory
  (`DIR/probes/<name>.jsonl`) or a real file (SycophancyEval JSONL, TruthfulQA CSV/JSON, or pmopt
  prompt records), validated before any model work, errors naming file, line and field;
- `respond(...)` gets the policy's responses (one sampling call batched across prompts; the
  are-you-sure probe adds a second turn, TruthfulQA MC1 scores options by log-likelihood instead);
- `grade(record, response, judge=..., **context)` returns per-sample outcomes as floats (0/1 for
  booleans) without touching the policy;
- `metrics(records, outcomes)` aggregates one outcome dict per record. Every metric is a mean or a
  ratio of sums of outcomes, so it is equally valid when an outcome is a per-prompt *expected* value
  (the mean over a prompt's samples, or best-of-N's E[f(BoN_n)]).

`version` changes whenever a probe's prompts or scoring change, so stored metrics stay comparable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pmopt.io import PmoptError, RecordError, iter_jsonl, read_jsonl
from pmopt.probes.judges import EXACT, Judge
from pmopt.records import validate_prompt
from pmopt.sampling import SamplingConfig, sample


@dataclass
class Sample:
    """One response to a prompt record, with whatever else its grader needs (second turn, option scores)."""

    response: str
    context: dict = field(default_factory=dict)


def resolve_source(source: str | Path, probe: str) -> Path:
    """A world directory (DIR/probes/<probe>.jsonl, or DIR/<probe>.jsonl) or a file path."""
    path = Path(source)
    if path.is_dir():
        for candidate in (path / "probes" / f"{probe}.jsonl", path / f"{probe}.jsonl"):
            if candidate.is_file():
                return candidate
        raise PmoptError(f"{path}: no probe set for '{probe}' (looked for probes/{probe}.jsonl and {probe}.jsonl)")
    if not path.is_file():
        raise PmoptError(f"{path}: probe source for '{probe}' not found")
    return path


def first_record(path: Path) -> dict:
    for _, record in iter_jsonl(path):
        return record
    raise RecordError(path, None, None, "no records")


def is_sycophancy_eval(record: dict) -> bool:
    """SycophancyEval rows carry `base` and `metadata`; pmopt prompt records carry `id` and `probe`."""
    return "base" in record and "id" not in record


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_outcomes(per_sample: Sequence[dict]) -> dict[str, float]:
    """A prompt's expected outcomes under the policy: the mean over its samples, key by key."""
    keys = dict.fromkeys(k for outcome in per_sample for k in outcome)
    return {k: mean([o[k] for o in per_sample if k in o]) for k in keys}


class Probe(ABC):
    """Base class of the five probes; subclasses set name/version and override what differs."""

    name: str = ""
    version: str = ""
    description: str = ""
    file_formats = "pmopt prompt records (.jsonl), SycophancyEval (.jsonl)"
    required_meta: dict[str, type] = {}

    # ------------------------------------------------------------------ prompt records

    def load(self, source: str | Path) -> list[dict]:
        path = resolve_source(source, self.name)
        records = self.load_file(path)
        seen = set()
        for record in records:
            if record["id"] in seen:
                raise PmoptError(f"{path}: duplicate prompt id {record['id']!r}")
            seen.add(record["id"])
        return records

    def load_file(self, path: Path) -> list[dict]:
        if not (path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")):
            raise PmoptError(f"{path}: unsupported file for probe '{self.name}' (expected {self.file_formats})")
        if is_sycophancy_eval(first_record(path)):
            return self.load_sycophancy_eval(path)
        return read_jsonl(path, self.validate)

    def load_sycophancy_eval(self, path: Path) -> list[dict]:
        from pmopt.data.sycophancy_eval import load_sycophancy_eval

        return load_sycophancy_eval(path, self.name)

    def validate(self, record: dict, error) -> None:
        validate_prompt(record, error)
        if record["probe"] != self.name:
            raise error("probe", f"expected '{self.name}', got {record['probe']!r} (a probe set of another probe?)")
        self.check_meta(record.get("meta", {}), error)

    def check_meta(self, meta: dict, error) -> None:
        """Raise error('meta.<field>', ...) when metadata the grader needs is missing or mistyped."""
        for name, kind in self.required_meta.items():
            if name not in meta:
                raise error(f"meta.{name}", f"missing (probe '{self.name}' grades with it)")
            if not isinstance(meta[name], kind):
                raise error(f"meta.{name}", f"expected {getattr(kind, '__name__', kind)}, got {type(meta[name]).__name__}")

    def cluster(self, record: dict) -> str:
        """The unit that is resampled by the bootstrap (a question with all its templates, a text…)."""
        return record["id"]

    def needs_lm_judge(self, records: Sequence[dict]) -> bool:
        return False

    def samples_directly(self, records: Sequence[dict]) -> bool:
        """True when a response is one plain sample of the record's prompt (what best-of-N can
        select among); False for probes that run a second turn or score options instead."""
        return True

    # ------------------------------------------------------------------ responses

    def respond(self, model, tokenizer, records: Sequence[dict], n: int, cfg: SamplingConfig, seed: int,
                loglik_batch_size: int = 16) -> list[list[Sample]]:
        """`n` samples per record, batched across records; random streams keyed by record id."""
        generations = sample(model, tokenizer, [r["prompt"] for r in records], n, cfg, seed,
                             keys=[r["id"] for r in records])
        return [[Sample(g.response) for g in gens] for gens in generations]

    def grading_context(self, records: Sequence[dict], samples: Sequence[Sequence[Sample]]) -> list[list[dict]]:
        """Keyword context for `grade`, per sample: what `respond` recorded (a second turn, option
        scores); the feedback probe adds context across records (the paired baseline feedback)."""
        return [[dict(s.context) for s in row] for row in samples]

    # ------------------------------------------------------------------ scoring

    @abstractmethod
    def grade(self, record: dict, response: str, judge: Judge = EXACT, **context) -> dict[str, float]:
        """Outcomes of one response (floats; booleans as 0/1)."""

    @abstractmethod
    def statistics(self, records: Sequence[dict], outcomes: Sequence[dict]) -> list[dict[str, float]]:
        """Additive statistics of each record (numerators and counts); their sums fix the metrics.

        A statistic may depend on other records of the same cluster (feedback compares a framing
        with its text's baseline), never on other clusters, so the bootstrap can resample clusters.
        """

    @abstractmethod
    def combine(self, totals: dict[str, float]) -> dict[str, float]:
        """Namespaced metrics from the summed statistics (missing keys count as 0)."""

    def metrics(self, records: Sequence[dict], outcomes: Sequence[dict]) -> dict[str, float]:
        """Metrics of one outcome dict per record; outcomes may be expectations (fractional).

        Every metric is a function of sums over records (means and ratios of sums), which is why it
        stays the right estimator for per-prompt expected outcomes.
        """
        if len(records) != len(outcomes):
            raise ValueError(f"{len(records)} records but {len(outcomes)} outcomes")
        totals: dict[str, float] = {}
        for stats in self.statistics(records, outcomes):
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
        return self.combine(totals)

    def key(self, metric: str) -> str:
        return f"probe/{self.name}/{metric}"


def share(totals: dict[str, float], numerator: str, count: str) -> float:
    """totals[numerator] / totals[count], NaN when nothing was counted."""
    return ratio(totals.get(numerator, 0.0), totals.get(count, 0.0))
