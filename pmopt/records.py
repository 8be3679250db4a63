"""The record schemas of docs/ARCHITECTURE.md §4, as validators for `pmopt.io.read_jsonl`.

A validator takes `(record, error)` and raises `error(field, message)`; `read_jsonl` turns that into
a `RecordError` naming file, line and field. Text fields are either a non-empty string or a
non-empty list of chat messages.
"""

from __future__ import annotations

import math
from typing import Any

from pmopt.io import require_fields

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
