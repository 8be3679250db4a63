"""Preference-pair loading: explicit / implicit / conversational forms, HH-RLHF, errors, splits."""

from __future__ import annotations

import gzip
import json

import pytest

from pmopt.data.preferences import (
    ASSISTANT_MARKER,
    check_pairs,
    load_pairs,
    looks_like_hub_id,
    split_dialogue,
    split_pairs,
)
from pmopt.io import PmoptError, RecordError

HH_HARMLESS_TEST = "hh-rlhf/harmless-base/test.jsonl.gz"


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_explicit_pairs_with_strings_and_messages(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "meta": {"id": "a"}},
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
    ])
    pairs = load_pairs(path)
    assert pairs[0] == {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "meta": {"id": "a"},
                        "source": f"{path}:1"}
    assert pairs[1]["prompt"] == [{"role": "user", "content": "Hi"}]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("Hello!", "Go away.")
    assert pairs[1]["meta"] == {} and pairs[1]["source"] == f"{path}:2"


def test_hh_dialogue_split_keeps_leading_space():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant: Sure, gladly."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant: Sure. No."
    prompt, c, r = split_dialogue(chosen, rejected, _error)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:"
    assert (c, r) == (" Sure, gladly.", " Sure. No.")


def test_hh_dialogue_split_when_a_response_contains_the_marker():
    """The split is at the last marker inside the shared prefix, not the last marker of either side."""
    chosen = "\n\nHuman: Q\n\nAssistant: A\n\nAssistant: B"
    rejected = "\n\nHuman: Q\n\nAssistant: C"
    assert split_dialogue(chosen, rejected, _error) == ("\n\nHuman: Q\n\nAssistant:", " A\n\nAssistant: B", " C")


def test_hh_pair_without_shared_prefix_is_an_error_naming_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: z\n\nAssistant: y"},
    ])
    with pytest.raises(RecordError, match=rf"{path}:2: field 'rejected':.*do not share a dialogue prefix"):
        load_pairs(path)


def test_hh_gzip_and_implicit_conversational(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected":
                                 "\n\nHuman: a\n\nAssistant: no"}) + "\n")
        user = {"role": "user", "content": "q"}
        handle.write(json.dumps({"chosen": [user, {"role": "assistant", "content": "good"}],
                                 "rejected": [user, {"role": "assistant", "content": "bad"}]}) + "\n")
    first, second = load_pairs(path)
    assert (first["prompt"], first["chosen"], first["rejected"]) == ("\n\nHuman: a" + ASSISTANT_MARKER, " yes", " no")
    assert (second["prompt"], second["chosen"], second["rejected"]) == ([user], "good", "bad")


@pytest.mark.parametrize("line, field, message", [
    ('{"prompt": "p", "chosen": "a", "rejected": "b"', None, "malformed JSON"),
    ('{"prompt": "p", "rejected": "b"}', "chosen", "missing"),
    ('{"prompt": "p", "chosen": "a"}', "rejected", "missing"),
    ('{"prompt": "p", "chosen": "  ", "rejected": "b"}', "chosen", "empty text"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "prompt", "empty text"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "chosen", "expected a string or a list"),
    ('{"chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}', "rejected", "both be strings"),
])
def test_bad_records_name_file_line_and_field(tmp_path, line, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "p", "chosen": "a", "rejected": "b"}', line])
    with pytest.raises(RecordError) as info:
        load_pairs(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert message in str(info.value)


def test_missing_file_and_hub_ids(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    assert looks_like_hub_id("Anthropic/hh-rlhf") and looks_like_hub_id("imdb")
    assert not looks_like_hub_id("data/pairs.jsonl") and not looks_like_hub_id("/abs/dir")
    assert not looks_like_hub_id("a/b/c") and not looks_like_hub_id("pairs.jsonl.gz")


def test_directory_source_picks_the_split_file(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert len(load_pairs(tmp_path, split="test")) == 1
    with pytest.raises(RecordError, match="no train.jsonl"):
        load_pairs(tmp_path)


def test_in_memory_pairs_are_validated():
    assert check_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}])[0]["source"] == "pairs 0"
    with pytest.raises(PmoptError, match="pairs 1: field 'rejected': missing"):
        check_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}])


def test_split_pairs_is_deterministic_disjoint_and_complete():
    pairs = [{"i": i} for i in range(50)]
    train, held = split_pairs(pairs, 0.2, seed=3)
    assert (len(train), len(held)) == (40, 10)
    assert sorted(p["i"] for p in train + held) == list(range(50))
    assert split_pairs(pairs, 0.2, seed=3) == (train, held)
    assert split_pairs(pairs, 0.2, seed=4)[1] != held
    assert [p["i"] for p in held] == sorted(p["i"] for p in held)  # input order kept
    assert split_pairs(pairs, 0.0, seed=3) == (pairs, [])
    assert len(split_pairs(pairs[:3], 0.01, seed=0)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(ValueError):
        split_pairs(pairs, 1.0, seed=0)


def test_hh_rlhf_harmless_test_file_loads_whole(shared_data):
    """All 2,312 rows parse. Odd rows found and kept as they are: 4 whose chosen reply is empty
    (" ": the rater preferred saying nothing) and 5 whose reply itself contains "\\n\\nAssistant:"."""
    pairs = load_pairs(shared_data / HH_HARMLESS_TEST)
    assert len(pairs) == 2312
    assert all(p["prompt"].startswith("\n\nHuman:") and p["prompt"].endswith(ASSISTANT_MARKER) for p in pairs)
    assert all(p["chosen"].startswith(" ") and p["rejected"].startswith(" ") for p in pairs)
    assert sum(not p["chosen"].strip() for p in pairs) == 4
    assert sum(not p["rejected"].strip() for p in pairs) == 0
    assert sum(ASSISTANT_MARKER in p["chosen"] + p["rejected"] for p in pairs) == 5
    with gzip.open(shared_data / HH_HARMLESS_TEST, "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert pairs[0]["prompt"] + pairs[0]["chosen"] == first["chosen"]
    assert pairs[0]["prompt"] + pairs[0]["rejected"] == first["rejected"]
    train, held = split_pairs(pairs, 0.1, seed=0)
    assert (len(train), len(held)) == (2081, 231)


def _error(field, message):
    return PmoptError(f"{field}: {message}")


# ----------------------------------------------------------------------------- column mapping, hub subsets, limit

SE_STYLE = [  # a StackExchange-paired-style file: its own column names, an extra column
    {"question": "Why is the sky blue?", "response_j": "Rayleigh scattering.", "response_k": "Because it is.",
     "score": 3},
    {"question": "2+2?", "response_j": "4", "response_k": "5", "score": 1},
]


def test_columns_map_a_data_sets_own_names_to_pmopt_fields(tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", SE_STYLE)
    columns = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    pairs = load_pairs(path, columns=columns)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("Why is the sky blue?", "Rayleigh scattering.", "Because it is."), ("2+2?", "4", "5")]
    assert pairs[1]["source"] == f"{path}:2"
    assert load_pairs(path, columns=columns, limit=1) == pairs[:1]


def test_columns_for_implicit_prompt_dialogues(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"good": "\n\nHuman: Hi\n\nAssistant: Hello!",
                                                "bad": "\n\nHuman: Hi\n\nAssistant: Go away."}])
    [pair] = load_pairs(path, columns={"chosen": "good", "rejected": "bad"})
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("\n\nHuman: Hi" + ASSISTANT_MARKER, " Hello!",
                                                                  " Go away.")


def test_column_mapping_errors(tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", SE_STYLE)
    with pytest.raises(RecordError, match=r"se.jsonl:1.*response_x.*maps 'rejected'"):
        load_pairs(path, columns={"prompt": "question", "chosen": "response_j", "rejected": "response_x"})
    with pytest.raises(PmoptError, match="unknown field.*answer"):
        load_pairs(path, columns={"answer": "response_j"})
    with pytest.raises(PmoptError, match="same column"):
        load_pairs(path, columns={"chosen": "response_j", "rejected": "response_j"})


def test_hub_dataset_config_name_data_dir_and_columns(monkeypatch):
    """The hub path passes config name, data_dir and split to datasets.load_dataset; rows get the same mapping."""
    import datasets

    calls = []

    def fake_load_dataset(dataset_id, name=None, split=None, **kwargs):
        calls.append((dataset_id, name, split, kwargs))
        return [dict(r) for r in SE_STYLE]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    columns = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    pairs = load_pairs("org/se-paired", "test", config_name="v2", data_dir="data/finetune", columns=columns, limit=1)
    assert calls == [("org/se-paired", "v2", "test", {"data_dir": "data/finetune"})]
    assert [(p["prompt"], p["chosen"], p["source"]) for p in pairs] == [
        ("Why is the sky blue?", "Rayleigh scattering.", "org/se-paired[test]:0")]
    load_pairs("Anthropic/hh-rlhf", columns=columns)
    assert calls[-1] == ("Anthropic/hh-rlhf", None, "train", {})


def test_hub_load_failure_names_the_subset(monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise FileNotFoundError("no such subset")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(PmoptError, match=r"Anthropic/hh-rlhf: could not load.*data_dir 'helpful-bse'.*no such subset"):
        load_pairs("Anthropic/hh-rlhf", "train", data_dir="helpful-bse")


def test_train_config_passes_subset_columns_and_limit(tmp_path):
    from pmopt.config import load_config
    from pmopt.pm.train import PMTrainConfig, resolve_pairs

    path = write_jsonl(tmp_path / "se.jsonl", SE_STYLE * 3)
    cfg = load_config(PMTrainConfig, data={
        "model": {"name_or_path": "x"},
        "data": {"train": str(path), "eval": str(path), "max_pairs": 2,
                 "columns": {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}}})
    train, held_out = resolve_pairs(cfg, None, None)
    assert len(train) == len(held_out) == 2 and train[0]["chosen"] == "Rayleigh scattering."
