"""The record schemas of docs/ARCHITECTURE.md §4, as validators for `pmopt.io.read_jsonl`.

A validator takes `(record, error)` and raises `error(field, message)`; `read_jsonl` turns that into
a `RecordError` naming file, line and field. Text fields are either a non-empty string or a
non-empty list of chat messages.
"""

from __future__ import annotations

import math
from typing import Any

from pmopt.io import append_jsonl, atomic_write_jsonl, atomic_write_text, read_metrics, require_fields

ROLES = ("system", "user", "assistant")


def check_text(value: Any, field: str, error) -> None:
    """A text field is a non-empty string or a list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise error(field, "empty text")
        return
    if isinstance(value, list):
        if not value:
            raise error(field, "empty message list")
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise error(f"{field}[{i}]", "expected a message object {role, content}")
            if message.get("role") not in ROLES:
                raise error(f"{field}[{i}].role", f"expected one of {list(ROLES)}, got {message.get('role')!r}")
            if not isinstance(message.get("content"), str):
                raise error(f"{field}[{i}].content", "expected a string")
        return
    raise error(field, f"expected a string or a list of messages, got {type(value).__name__}")


def validate_pair(record: dict, error) -> None:
    """Preference pair: {"prompt"?: text, "chosen": text, "rejected": text, "meta"?: {...}}."""
    for field in ("chosen", "rejected"):
        if field not in record:
            raise error(field, "missing (a preference pair needs 'chosen' and 'rejected')")
        check_text(record[field], field, error)
    if "prompt" in record:
        check_text(record["prompt"], "prompt", error)
    if "meta" in record and not isinstance(record["meta"], dict):
        raise error("meta", "expected an object")


def validate_prompt(record: dict, error) -> None:
    """Prompt: {"id": str, "prompt": text, "probe": str, "meta": {...}}."""
    require_fields(record, error, {"id": str, "probe": str})
    if "prompt" not in record:
        raise error("prompt", "missing")
    check_text(record["prompt"], "prompt", error)
    if not isinstance(record.get("meta", {}), dict):
        raise error("meta", "expected an object")


def validate_scoring_input(record: dict, error) -> None:
    """Input of `pmopt score`: {"prompt": text, "response": str} (other fields are carried through)."""
    if "prompt" not in record:
        raise error("prompt", "missing")
    check_text(record["prompt"], "prompt", error)
    if "response" not in record:
        raise error("response", "missing")
    if not isinstance(record["response"], str):
        raise error("response", f"expected a string, got {type(record['response']).__name__}")


def validate_sample(record: dict, error) -> None:
    require_fields(record, error, {"prompt_id": str, "sample_idx": int, "response": str, "n_tokens": int})
    logprob = record.get("logprob")  # optional (docs/ARCHITECTURE.md §4); when given, a log-probability
    if logprob is not None and (isinstance(logprob, bool) or not isinstance(logprob, (int, float))
                                or not math.isfinite(logprob) or logprob > 0):
        raise error("logprob", f"expected a finite number <= 0, got {logprob!r}")


def validate_score(record: dict, error) -> None:
    require_fields(record, error, {"prompt_id": str, "sample_idx": int, "pm": str, "score": (int, float)})
    if not math.isfinite(record["score"]):
        raise error("score", f"not a finite number: {record['score']}")


# ----------------------------------------------------------------------------- curve rows
#
# One row per (method, reward, x, metric): best-of-N rows are indexed by n (the KL is the bound
# log n - (n-1)/n of Beirami et al. 2024, `kl_kind: "bound"`), RL rows by step (the KL measured on the probe
# samples, `kl_kind: "rao_blackwell"`: the exact per-position KL summed over each sampled response, averaged
# over samples, with its 95% interval in `kl_ci_low` / `kl_ci_high`; rows written before it say "measured",
# the mean k3 sum). RL_KL_KIND names the current one.

CURVES_JSONL, CURVES_CSV = "curves.jsonl", "curves.csv"
CURVE_X = {"bon": "n", "ppo": "step"}
CURVE_COLUMNS = {
    "bon": ("method", "pm", "n", "kl", "kl_kind", "metric", "value", "ci_low", "ci_high", "n_prompts"),
    "ppo": ("method", "rl_method", "pm", "step", "kl", "kl_ci_low", "kl_ci_high", "kl_kind", "kl_source", "metric",
            "value", "ci_low", "ci_high"),
}


def _finite_or_none(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def bon_curve_row(pm: str, n: int, kl: float, metric: str, value: float, low, high, n_prompts: int) -> dict:
    return {"method": "bon", "pm": pm, "n": int(n), "kl": kl, "kl_kind": "bound", "metric": metric,
            "value": float(value), "ci_low": _finite_or_none(low), "ci_high": _finite_or_none(high),
            "n_prompts": int(n_prompts)}


RL_KL_KIND = "rao_blackwell"


def rl_curve_row(rl_method: str, pm: str, step: int, kl: float, metric: str, value: float, low, high,
                 kl_low=None, kl_high=None) -> dict:
    return {"method": "ppo", "rl_method": rl_method, "pm": pm, "step": int(step), "kl": kl,
            "kl_ci_low": _finite_or_none(kl_low), "kl_ci_high": _finite_or_none(kl_high), "kl_kind": RL_KL_KIND,
            "kl_source": "probe", "metric": metric, "value": value, "ci_low": _finite_or_none(low),
            "ci_high": _finite_or_none(high)}


def validate_curve_row(record: dict, error) -> None:
    """Curve row: {method: bon|ppo, pm, n (bon) | step (ppo), kl, metric, value, ci_low, ci_high}.

    `kl`, `ci_low` and `ci_high` may be null (no KL estimate / no interval); `value` must be a number; the
    optional `kl_ci_low` / `kl_ci_high` (RL rows) are numbers or null.
    """
    method = record.get("method")
    if method not in CURVE_X:
        raise error("method", f"expected 'bon' or 'ppo', got {method!r}")
    for field in ("pm", "metric"):
        if not isinstance(record.get(field), str) or not record[field]:
            raise error(field, "expected a non-empty string")
    x_key = CURVE_X[method]
    x = record.get(x_key)
    lowest = 1 if method == "bon" else 0
    if isinstance(x, bool) or not isinstance(x, int) or x < lowest:
        raise error(x_key, f"expected an integer >= {lowest} for a {method} row, got {x!r}")
    if not is_number(record.get("value")):
        raise error("value", f"expected a number, got {record.get('value')!r}")
    for field in ("kl", "ci_low", "ci_high"):
        if field not in record:
            raise error(field, "missing (use null when there is no value)")
        if record[field] is not None and not is_number(record[field]):
            raise error(field, f"expected a number or null, got {record[field]!r}")
    for field in ("kl_ci_low", "kl_ci_high"):
        if record.get(field) is not None and not is_number(record[field]):
            raise error(field, f"expected a number or null, got {record[field]!r}")


def is_number(value) -> bool:
    """An int or float, not a bool (JSON's numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curves_csv(rows: list[dict], method: str) -> str:
    """The rows of one method as CSV (its `CURVE_COLUMNS`; null as an empty cell)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS[method], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CURVE_COLUMNS[method]})
    return buffer.getvalue()


def write_curves(out, rows: list[dict], method: str) -> None:
    """`curves.jsonl` and `curves.csv` of a finished stage, each written atomically."""
    from pathlib import Path

    out = Path(out)
    atomic_write_jsonl(out / CURVES_JSONL, rows)
    atomic_write_text(out / CURVES_CSV, curves_csv(rows, method))


def append_curves(out, rows: list[dict]) -> None:
    """Rows of a stage that grows step by step (RL): appended to `curves.jsonl`, one flushed line each."""
    from pathlib import Path

    for row in rows:
        append_jsonl(Path(out) / CURVES_JSONL, row)


def write_curves_csv(out, method: str):
    """`curves.csv` from the rows `curves.jsonl` holds now (validated)."""
    from pathlib import Path

    out = Path(out)
    # an append-only log may end in a line torn by a kill: read it as the resume logic does
    return atomic_write_text(out / CURVES_CSV, curves_csv(read_metrics(out / CURVES_JSONL), method))
