"""Typed configs, validated JSONL and atomic writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from pmopt.config import ConfigError, load_config
from pmopt.io import RecordError, atomic_open, atomic_write_jsonl, read_jsonl, read_metrics
from pmopt.records import validate_pair


@dataclass
class Inner:
    lr: float = 0.1
    name: str = "x"


@dataclass
class Outer:
    seed: int = 0
    inner: Inner = field(default_factory=Inner)
    grid: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Renamed:
    steps: int = 1
    precision: Literal["no", "bf16"] = "bf16"
    RENAMED: ClassVar[dict[str, str]] = {"n_steps": "steps"}


@dataclass
class HoldsRenamed:
    train: Renamed = field(default_factory=Renamed)


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_nested_and_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\ninner:\n  lr: 1\n")
    cfg = load_config(Outer, path, ["inner.name=y", "grid=[4, 8]"])
    assert cfg == Outer(seed=3, inner=Inner(lr=1.0, name="y"), grid=[4, 8])


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "inner:\n  lr: 1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'inner\.momentum'"):
        load_config(Outer, path)


def test_unknown_override_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'sed'"):
        load_config(Outer, write(tmp_path, ""), ["sed=1"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match="'inner.lr': expected a number"):
        load_config(Outer, write(tmp_path, "inner:\n  lr: fast\n"))
    with pytest.raises(ConfigError, match="'seed': expected an integer"):
        load_config(Outer, write(tmp_path, "seed: 1.5\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_read_jsonl_names_file_line_and_field(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(RecordError, match=r"pairs\.jsonl:2: field 'rejected': missing"):
        read_jsonl(path, validate_pair)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"pairs\.jsonl:2: malformed JSON"):
        read_jsonl(path, validate_pair)
    path.write_text(json.dumps({**good, "chosen": "  "}) + "\n")
    with pytest.raises(RecordError, match=r"pairs\.jsonl:1: field 'chosen': empty text"):
        read_jsonl(path, validate_pair)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    atomic_write_jsonl(path, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write('{"a": 2}\n')
        raise RuntimeError("killed mid-write")
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_read_metrics_skips_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]


def test_old_key_names_load_and_either_name_overrides(tmp_path, capsys):
    path = write(tmp_path, "train:\n  n_steps: 3\n")
    assert load_config(HoldsRenamed, path).train.steps == 3
    assert "'train.n_steps' is now 'train.steps'" in capsys.readouterr().err
    assert load_config(HoldsRenamed, path, ["train.steps=5"]).train.steps == 5
    assert load_config(HoldsRenamed, write(tmp_path, "train: {steps: 2}\n", "d.yaml"), ["train.n_steps=7"]).train.steps == 7


def test_old_and_new_name_in_one_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'train.n_steps' and 'train.steps' both given"):
        load_config(HoldsRenamed, write(tmp_path, "train: {n_steps: 1, steps: 2}\n"))


def test_yaml_no_reads_as_the_choice_no(tmp_path):
    assert load_config(HoldsRenamed, None, ["train.precision=no"]).train.precision == "no"
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(HoldsRenamed, None, ["train.precision=yes"])


def test_bon_and_probe_share_one_judge_section_and_the_old_bon_form_still_loads(tmp_path, capsys):
    from pmopt.bon.sweep import BonConfig
    from pmopt.probes.judges import JudgeConfig
    from pmopt.probes.run import ProbeRunConfig

    assert BonConfig.__dataclass_fields__["judge"].type == ProbeRunConfig.__dataclass_fields__["judge"].type
    path = tmp_path / "bon.yaml"
    path.write_text("world: w\npms: [{name: g, kind: gold}]\njudge: some/judge-lm\n")
    cfg = load_config(BonConfig, path)
    assert cfg.judge == JudgeConfig(kind="lm", path="some/judge-lm")
    assert "'judge: <value>' is now the section" in capsys.readouterr().err
    path.write_text("world: w\npms: [{name: g, kind: gold}]\njudge: {kind: lm, path: j, batch_size: 2}\n")
    assert load_config(BonConfig, path).judge == JudgeConfig(kind="lm", path="j", batch_size=2)
    path.write_text("world: w\npms: [{name: g, kind: gold}]\njudge: {kind: lm}\n")
    with pytest.raises(ConfigError, match="judge.path is required"):
        load_config(BonConfig, path)
