"""`pmopt score --pm DIR --input FILE --out DIR [--prefix non_sycophantic|JSON] [--batch-size N]`.

The whole input is validated first (`validate_scoring_input`: errors name file, line and field), then the
PM is loaded, every record scored, and `out/scores.jsonl` written in one atomic step: one record per
input line, the input's fields plus `score` and `pm` (and `member_scores` for an ensemble).
"""

from __future__ import annotations

import json
from pathlib import Path

from pmopt.io import PmoptError, atomic_write_jsonl, prepare_out_dir, read_jsonl
from pmopt.pm.ensemble import EnsemblePM
from pmopt.pm.model import NON_SYCOPHANTIC_PREFIX, PreferenceModel
from pmopt.records import check_text, validate_scoring_input
from pmopt.text import Messages

NAMED_PREFIXES = {"non_sycophantic": NON_SYCOPHANTIC_PREFIX}


def score_command(args) -> Path:
    records = read_jsonl(args.input, validate_scoring_input)
    prefix = parse_prefix(getattr(args, "prefix", None))
    batch_size = getattr(args, "batch_size", 32)
    if batch_size < 1:
        raise PmoptError(f"--batch-size: must be >= 1, got {batch_size}")
    if not Path(args.pm).exists():
        raise PmoptError(f"--pm: {args.pm}: no such directory")
    out = prepare_out_dir(getattr(args, "out", None), "score")  # a bad --out fails before the PM loads
    pm = PreferenceModel.load(args.pm)
    scored = score_records(pm, records, prefix, batch_size)
    atomic_write_jsonl(out / "scores.jsonl", scored)
    return out


def parse_prefix(value: str | None) -> Messages | None:
    """`non_sycophantic` (Sharma et al. 2023 §4) or a JSON list of {role, content} messages."""
    if value is None or value == "":
        return None
    if value in NAMED_PREFIXES:
        return NAMED_PREFIXES[value]
    try:
        prefix = json.loads(value)
    except json.JSONDecodeError:
        raise PmoptError(f"--prefix: expected one of {sorted(NAMED_PREFIXES)} or a JSON list of messages, "
                         f"got {value!r}") from None

    def error(field, msg):
        return PmoptError(f"--prefix: {field}: {msg}")

    if not isinstance(prefix, list):
        raise error("prefix", "expected a list of messages")
    check_text(prefix, "prefix", error)
    return prefix


def score_records(pm: PreferenceModel | EnsemblePM, records: list[dict], prefix: Messages | None,
                  batch_size: int) -> list[dict]:
    prompts = [r["prompt"] for r in records]
    responses = [r["response"] for r in records]
    scores = pm.score(prompts, responses, prefix=prefix, batch_size=batch_size)
    members = pm.member_scores if isinstance(pm, EnsemblePM) else None
    out = []
    for i, record in enumerate(records):
        row = {**record, "pm": pm.name, "score": float(scores[i])}
        if members is not None:
            row["member_scores"] = [float(s) for s in members[:, i]]
        out.append(row)
    return out


__all__ = ["score_command", "parse_prefix", "score_records", "NAMED_PREFIXES"]
