"""Grading every sample of a sweep once with its probe -> `grades.jsonl` (docs/ARCHITECTURE.md §4 grade rows).

Grades do not depend on any PM, so they are computed once and reused by every PM's curves. The file
is recomputed only when the samples or a probe's version change (`grades.json` records both).
Outcomes are floats; an outcome that does not apply (NaN) is written as null and read back as absent.

Grading goes through the probe's own machinery: `grading_context` (the feedback probe pairs sample j
of a framed prompt with sample j of the unframed baseline) and `grade_batched`, which batches an LM
judge's queries. In the world every grader is exact.

Under `accelerate launch` an LM judge's queries are split across processes (`pmopt.bon.distribute`):
every process calls `load_or_grade` with its `state`, answers every P-th chunk of `_JUDGE_CHUNKS_OF`
judge batches, and gets all answers back; the main process writes the files. The chunks are the same
with one process, so the grades are identical to a one-process run. Exact graders (no model) are cheap
and run on the main process only (`pmopt.bon.sweep`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pmopt.bon.distribute import sharded_list_map
from pmopt.io import RecordError, atomic_write_json, atomic_write_jsonl, iter_jsonl, require_fields

GRADES_FILE = "grades.jsonl"
GRADES_META = "grades.json"
_JUDGE_CHUNKS_OF = 32  # judge batches per chunk of queries (the unit of work per process)


def load_or_grade(out: str | Path, plan, samples, judge=None, state=None, tally: list[int] | None = None) -> list[list[dict]]:
    """Per prompt, per sample: the outcome dict (NaN outcomes left out). `tally` gets the judge queries each
    process answered (rank order; left empty when the grades were already on disk).

    With `state` (several processes), every process must call this: a judge's queries are split across
    them, and only the main process writes.
    """
    out = Path(out)
    meta = {"samples": plan.samples_key(), "probes": {name: p.version for name, p in plan.probes.items()}}
    path, meta_path = out / GRADES_FILE, out / GRADES_META
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")) == meta:
        return read_grades(path, samples)
    grades = grade_samples(plan, samples, judge, state, tally)
    if state is None or state.is_main_process:
        atomic_write_jsonl(path, grade_rows(plan, samples, grades))
        atomic_write_json(meta_path, meta)  # written last: it marks grades.jsonl as complete and current
    if state is not None:
        state.wait_for_everyone()
    return grades


def grade_samples(plan, samples, judge=None, state=None, tally: list[int] | None = None) -> list[list[dict]]:
    from pmopt.probes.base import Sample
    from pmopt.probes.judges import EXACT, grade_batched

    judge = judge if judge is not None else EXACT
    chunk = getattr(judge, "batch_size", 16) * _JUDGE_CHUNKS_OF

    def answer(ask, queries):  # a judge's queries in chunks, split across the processes of `state`
        counts: list[int] = []
        answers = sharded_list_map(state, ask, queries, chunk, counts)
        if tally is not None:  # summed over the probes' calls, per process
            tally[:] = [a + b for a, b in zip(tally, counts, strict=True)] if tally else counts
        return answers
    grades: list[list[dict]] = [[] for _ in plan.records]
    for name, probe in plan.probes.items():
        index = [i for i, p in enumerate(plan.probe_of) if p == name]
        records = [plan.records[i] for i in index]
        rows = [[Sample(response) for response in samples.responses[i]] for i in index]
        context = probe.grading_context(records, rows)
        calls = [_call(probe, record, s.response, ctx)
                 for record, row, ctxs in zip(records, rows, context, strict=True)
                 for s, ctx in zip(row, ctxs, strict=True)]
        outcomes = grade_batched(calls, judge, answer)
        for k, i in enumerate(index):
            grades[i] = [_clean(o) for o in outcomes[k * samples.n:(k + 1) * samples.n]]
    return grades


def _call(probe, record: dict, response: str, context: dict):
    return lambda judge: probe.grade(record, response, judge=judge, **context)


def _clean(outcomes: dict) -> dict:
    """Floats only; NaN (outcome not applicable) is dropped so per-prompt expectations skip it."""
    return {k: float(v) for k, v in outcomes.items() if v is not None and not math.isnan(float(v))}


def grade_rows(plan, samples, grades: list[list[dict]]) -> list[dict]:
    return [{"prompt_id": pid, "sample_idx": j, "probe": plan.probe_of[i], "outcomes": grades[i][j]}
            for i, pid in enumerate(samples.prompt_ids) for j in range(samples.n)]


def _validate_grade(record: dict, error) -> None:
    require_fields(record, error, {"prompt_id": str, "sample_idx": int, "probe": str, "outcomes": dict})
    for key, value in record["outcomes"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise error(f"outcomes.{key}", f"expected a number or null, got {value!r}")


def read_grades(path: Path, samples) -> list[list[dict]]:
    index = {pid: i for i, pid in enumerate(samples.prompt_ids)}
    grades: list[list[dict | None]] = [[None] * samples.n for _ in index]
    for line, row in iter_jsonl(path, _validate_grade):
        i, j = index.get(row["prompt_id"]), row["sample_idx"]
        if i is None or not 0 <= j < samples.n:
            raise RecordError(path, line, "prompt_id", f"sample {j} of '{row['prompt_id']}' is not in this sweep")
        grades[i][j] = {k: float(v) for k, v in row["outcomes"].items() if v is not None}
    for i, row in enumerate(grades):
        if None in row:
            raise RecordError(path, None, None, f"no grade for sample {row.index(None)} of '{samples.prompt_ids[i]}'")
    return grades  # type: ignore[return-value]


__all__ = ["load_or_grade", "grade_samples", "grade_rows", "read_grades", "GRADES_FILE"]
