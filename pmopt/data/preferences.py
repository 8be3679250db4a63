"""Preference pairs from real formats, as the records of docs/ARCHITECTURE.md §4.

`load_pairs(source)` returns `{"prompt", "chosen", "rejected", "meta", "source"}` dicts from:

- pmopt / TRL explicit-prompt JSONL: `{"prompt", "chosen", "rejected", "meta"?}`. `chosen` / `rejected`
  may be message lists; the response is then the assistant content (`pmopt.text.response_text`).
- implicit-prompt JSONL (no `prompt` key): HH-RLHF whole dialogues "\\n\\nHuman: …\\n\\nAssistant: …" are
  split at the start of the last "\\n\\nAssistant:" turn the two sides share (the prompt ends with that
  marker; the responses keep their leading space), and conversational chosen/rejected message lists are
  split at their longest common message prefix (TRL's implicit conversational form).
- a hub dataset id (`datasets.load_dataset(id, name, data_dir=..., split=...)`) when the path does not
  exist locally; its rows go through the same converters. `name` is the dataset's config name, `data_dir`
  its subset folder (Anthropic/hh-rlhf keeps its subsets as folders: `data_dir="harmless-base"`).

`columns` maps pmopt's fields to a data set's own column names, e.g. `{"prompt": "question", "chosen":
"response_j", "rejected": "response_k"}` (local files and hub rows alike); unmapped fields keep their names.
`limit` keeps the first k pairs (0 = all).

`source` is "file:line" (or "hub-id[split]:row"), so later errors (an over-long pair) can name it.
Files may be gzipped (`.gz`). Every record is validated before any is returned.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from pmopt.hub import looks_like_hub_id  # noqa: F401 (re-exported: callers import it from here)
from pmopt.io import PmoptError, RecordError, iter_jsonl
from pmopt.records import check_text, validate_pair
from pmopt.text import response_text

ASSISTANT_MARKER = "\n\nAssistant:"

ErrorFn = Callable[[str | None, str], Exception]


def load_pairs(source: str | os.PathLike, split: str | None = None, *, config_name: str | None = None,
               data_dir: str | None = None, columns: dict[str, str] | None = None, limit: int = 0) -> list[dict]:
    """All pairs (or the first `limit`) of a JSONL file (explicit or implicit prompt, .gz or not) or of a hub
    dataset (`config_name`, `data_dir`: its config and subset folder), with `columns` renamed to pmopt's fields."""
    check_columns(columns)
    path = Path(source)
    if path.is_dir():
        path = _split_file(path, split or "train")
    if path.exists():
        pairs = []
        for line, record, error in _iter_file(path, columns):
            pairs.append(convert_pair(record, error, f"{path}:{line}"))
            if limit and len(pairs) == limit:
                break
        return pairs
    if looks_like_hub_id(str(source)):
        return _load_hub(str(source), split or "train", config_name, data_dir, columns, limit)
    raise RecordError(path, None, None, "file not found (and not a hub dataset id)")


PAIR_FIELDS = ("prompt", "chosen", "rejected", "meta")


def check_columns(columns: dict[str, str] | None) -> None:
    """A column mapping names pmopt fields (prompt, chosen, rejected, meta) and distinct source columns."""
    columns = columns or {}
    unknown = sorted(set(columns) - set(PAIR_FIELDS))
    if unknown:
        raise PmoptError(f"data.columns: unknown field(s) {unknown}; map any of {list(PAIR_FIELDS)} to a column name")
    if len(set(columns.values())) != len(columns):
        raise PmoptError(f"data.columns: two fields map to the same column: {columns}")


def rename_columns(record: dict, columns: dict[str, str] | None, error: ErrorFn) -> None:
    """Rename (in place) the source columns of `record` to pmopt's fields; a missing column is an error."""
    if not columns:
        return
    renamed = {}
    for field_name, column in columns.items():
        if column not in record:
            raise error(column, f"missing (data.columns maps {field_name!r} to it); "
                                f"the record has {sorted(record)}")
        renamed[field_name] = record[column]
    rest = {k: v for k, v in record.items() if k not in columns.values() and k not in renamed}
    record.clear()
    record.update(rest | renamed)


def _split_file(directory: Path, split: str) -> Path:
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        if (directory / name).is_file():
            return directory / name
    raise RecordError(directory, None, None, f"no {split}.jsonl or {split}.jsonl.gz in this directory")


def _iter_file(path: Path, columns: dict[str, str] | None = None):
    """(line, record, error) for each validated record of a JSONL file (columns renamed first)."""
    def validate(record, error):
        rename_columns(record, columns, error)
        validate_any_pair(record, error)

    for line, record in iter_jsonl(path, validate):
        yield line, record, (lambda field, msg, _n=line: RecordError(path, _n, field, msg))


def _load_hub(dataset_id: str, split: str, config_name: str | None = None, data_dir: str | None = None,
              columns: dict[str, str] | None = None, limit: int = 0) -> list[dict]:
    """A hub dataset's rows through the same validation and converters (needs network)."""
    import datasets

    kwargs = {"data_dir": data_dir} if data_dir else {}
    try:
        rows = datasets.load_dataset(dataset_id, config_name, split=split, **kwargs)
    except Exception as exc:  # any loading failure means the user's source is wrong or unreachable
        subset = "".join(f", {k} {v!r}" for k, v in (("config", config_name), ("data_dir", data_dir)) if v)
        raise PmoptError(f"{dataset_id}: could not load hub dataset (split {split!r}{subset}): {exc}") from None
    where = f"{dataset_id}[{split}]"
    pairs = []
    for row_index, row in enumerate(rows):
        def error(field, msg, _n=row_index):
            return RecordError(where, _n, field, msg)

        record = dict(row)
        rename_columns(record, columns, error)
        validate_any_pair(record, error)
        pairs.append(convert_pair(record, error, f"{where}:{row_index}"))
        if limit and len(pairs) == limit:
            break
    return pairs


def validate_any_pair(record: dict, error: ErrorFn) -> None:
    """`validate_pair`, plus: an implicit-prompt pair must have both sides of the same kind."""
    validate_pair(record, error)
    if "prompt" not in record and type(record["chosen"]) is not type(record["rejected"]):
        raise error("rejected", "implicit-prompt pair: 'chosen' and 'rejected' must both be strings "
                                "or both be message lists")


def convert_pair(record: dict, error: ErrorFn, source: str) -> dict:
    """A validated record (explicit or implicit prompt) as a pmopt pair."""
    if "prompt" in record:
        prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    elif isinstance(record["chosen"], str):
        prompt, chosen, rejected = split_dialogue(record["chosen"], record["rejected"], error)
    else:
        prompt, chosen, rejected = split_messages(record["chosen"], record["rejected"], error)
    pair = {"prompt": prompt, "chosen": response_text(chosen), "rejected": response_text(rejected),
            "meta": dict(record.get("meta", {})), "source": source}
    for field in ("chosen", "rejected"):
        if not pair[field] and not isinstance(record[field], str):
            raise error(field, "no assistant message content in this message list")
    return pair


def split_dialogue(chosen: str, rejected: str, error: ErrorFn) -> tuple[str, str, str]:
    """HH-RLHF: prompt = the shared prefix up to and including the last shared "\\n\\nAssistant:".

    The split is at the last marker lying entirely inside the common prefix, so a response that itself
    contains "\\n\\nAssistant:" (a few HH-RLHF rows do) stays whole.
    """
    common = len(os.path.commonprefix([chosen, rejected]))
    start = chosen.rfind(ASSISTANT_MARKER, 0, common)
    if start < 0:
        raise error("rejected", "implicit-prompt pair: 'chosen' and 'rejected' do not share a dialogue "
                                f"prefix ending with {ASSISTANT_MARKER!r}")
    cut = start + len(ASSISTANT_MARKER)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def split_messages(chosen: list[dict], rejected: list[dict], error: ErrorFn) -> tuple[list, list, list]:
    """Conversational implicit form: prompt = the longest common message prefix."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise error("rejected", "implicit-prompt pair: 'chosen' and 'rejected' share no leading messages")
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        rest = messages[shared:]
        if not rest or any(m["role"] != "assistant" for m in rest):
            raise error(field, "implicit-prompt pair: after the shared messages only assistant turns "
                               "may differ")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def split_pairs(pairs: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A deterministic held-out split: the same (pairs, fraction, seed) always give the same split.

    At least one pair is held out when `eval_fraction > 0` and at least one is kept for training.
    Both parts keep the input order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = round(len(pairs) * eval_fraction)
    if eval_fraction > 0 and len(pairs) >= 2:
        n_eval = min(max(n_eval, 1), len(pairs) - 1)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    train = [p for i, p in enumerate(pairs) if i not in held]
    held_out = [p for i, p in enumerate(pairs) if i in held]
    return train, held_out


def pair_source(pair: dict, index: int) -> str:
    """Where a pair came from, for error messages: "file:line", or its index for in-memory pairs."""
    return pair.get("source") or f"pair {index}"


def check_pairs(pairs: Iterable[dict], what: str = "pairs") -> list[dict]:
    """Validate in-memory pairs (e.g. passed by the pipeline, or returned by `load_pairs`).

    The prompt must be non-empty text; a response must be a string or messages but may be blank: a
    converted HH-RLHF pair can have an empty chosen reply (4 rows of harmless-base/test), and a policy
    sample can be empty too. (Explicit-prompt JSONL files keep the stricter `validate_pair` rule, where
    a blank field is more likely a data bug.)
    """
    checked = []
    for index, pair in enumerate(pairs):
        def error(field, msg, _i=index):
            return PmoptError(f"{what} {_i}: field '{field}': {msg}")

        if not isinstance(pair, dict):
            raise PmoptError(f"{what} {index}: expected a dict, got {type(pair).__name__}")
        if "prompt" not in pair:
            raise error("prompt", "missing (in-memory pairs use the explicit-prompt form)")
        check_text(pair["prompt"], "prompt", error)
        for field in ("chosen", "rejected"):
            if field not in pair:
                raise error(field, "missing (a preference pair needs 'chosen' and 'rejected')")
            if not isinstance(pair[field], str):
                check_text(pair[field], field, error)
        if not isinstance(pair.get("meta", {}), dict):
            raise error("meta", "expected an object")
        checked.append(convert_pair(pair, error, pair.get("source") or f"{what} {index}"))
    return checked


__all__ = ["load_pairs", "split_pairs", "convert_pair", "split_dialogue", "split_messages",
           "check_pairs", "pair_source", "looks_like_hub_id", "rename_columns", "check_columns", "ASSISTANT_MARKER"]
