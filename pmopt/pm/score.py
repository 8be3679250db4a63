"""`pmopt score --pm DIR|HUB_ID --input FILE --out DIR [--prefix non_sycophantic|JSON] [--batch-size N]
[--dtype D] [--device D | --device-map auto] [--trust-remote-code] [--max-length N] [--max-batch-tokens N]`.

The whole input is validated first (`validate_scoring_input`: errors name file, line and field), then the
PM is loaded, every record scored, and `out/scores.jsonl` written in one atomic step: one record per
input line, the input's fields plus `score` and `pm` (and `member_scores` for an ensemble).
"""

from __future__ import annotations

import json
from pathlib import Path

from pmopt.io import PmoptError, atomic_write_jsonl, prepare_out_dir, read_jsonl
from pmopt.pm.ensemble import EnsemblePM
from pmopt.pm.model import NON_SYCOPHANTIC_PREFIX, PMLoadOptions, PreferenceModel
from pmopt.policy import check_device, looks_like_hub_id
from pmopt.records import check_text, validate_scoring_input
from pmopt.text import Messages

NAMED_PREFIXES = {"non_sycophantic": NON_SYCOPHANTIC_PREFIX}


def score_command(args) -> Path:
    records = read_jsonl(args.input, validate_scoring_input)
    prefix = parse_prefix(getattr(args, "prefix", None))
    batch_size = getattr(args, "batch_size", 32)
    if batch_size < 1:
        raise PmoptError(f"--batch-size: must be >= 1, got {batch_size}")
    options = load_options(args)
    check_pm_source(args.pm)
    out = prepare_out_dir(getattr(args, "out", None), "score")  # a bad --out fails before the PM loads
    pm = PreferenceModel.load(args.pm, options)
    scored = score_records(pm, records, prefix, batch_size)
    if options.max_length is not None:
        print(f"pmopt score: {pm.n_truncated} of {len(records)} records truncated to --max-length="
              f"{options.max_length} tokens (cut at the start: the head reads the end)")
    atomic_write_jsonl(out / "scores.jsonl", scored)
    return out


def load_options(args) -> PMLoadOptions:
    """The CLI flags as `PMLoadOptions`, checked before anything loads."""
    for flag in ("max_length", "max_batch_tokens"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise PmoptError(f"--{flag.replace('_', '-')}: must be >= 1, got {value}")
    if getattr(args, "device", None) and getattr(args, "device_map", None):
        raise PmoptError("--device and --device-map: give one (--device-map auto places the PM itself)")
    try:
        check_device(getattr(args, "device", None))
    except PmoptError as exc:
        raise PmoptError(f"--device: {exc}") from None
    options = PMLoadOptions(
        dtype=getattr(args, "dtype", "float32"), device=getattr(args, "device", None),
        device_map=getattr(args, "device_map", None), trust_remote_code=getattr(args, "trust_remote_code", False),
        max_length=getattr(args, "max_length", None), max_batch_tokens=getattr(args, "max_batch_tokens", None),
        chat_template_kwargs=parse_json_object(getattr(args, "chat_template_kwargs", None), "--chat-template-kwargs"))
    return options


def parse_json_object(value: str | None, flag: str) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{flag}: not valid JSON ({exc.msg})") from None
    if not isinstance(parsed, dict):
        raise PmoptError(f"{flag}: expected a JSON object, got {type(parsed).__name__}")
    return parsed


def check_pm_source(pm: str) -> None:
    """A local directory, or an 'org/name' hub id (loaded from the hub, or its cache when offline)."""
    if not Path(pm).exists() and not looks_like_hub_id(pm):
        raise PmoptError(f"--pm: {pm}: no such directory (and not a hub model id such as 'org/name')")


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


__all__ = ["score_command", "parse_prefix", "score_records", "load_options", "NAMED_PREFIXES"]
