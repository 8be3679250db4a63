"""The console policy: Trainer log dicts and third-party bars stay off the console, pmopt's own long steps
show one named bar with their metric, stages print one line at start and one at the end, and -q leaves
only the final line. Warnings are recorded with every filter set to "always" (pytest's own config ignores
FutureWarning and DeprecationWarning) so a deprecated call made by pmopt fails here."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from pmopt import cli, console
from pmopt.config import dump_yaml

REPO = Path(__file__).resolve().parents[1]
TINY_WORLD = ["world", str(REPO / "configs/world/tiny.yaml"), "--set", "policy.steps=20",
              "--set", "corpus.n_dialogues=400", "--set", "pairs.n_pairs=100", "--set", "stats.samples_per_prompt=1"]
TRAINER_DICT = re.compile(r"\{'(loss|grad_norm|learning_rate|epoch|train_runtime)'")
THIRD_PARTY_BARS = ("Loading weights", "Writing model shards", "Map:", "Saving the dataset")


@pytest.fixture(autouse=True)
def normal_console():
    yield
    console.configure("normal")


def run_cli(argv: list[str]) -> tuple[int, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(argv)
    return code, [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]


def assert_clean(out: str, err: str, deprecations: list) -> None:
    text = out + err
    assert not TRAINER_DICT.search(text), "a Trainer log dict reached the console"
    assert not [bar for bar in THIRD_PARTY_BARS if bar in text]
    assert "warning" not in text.lower()
    assert [f"{w.category.__name__}: {w.message}" for w in deprecations] == []


def bar_lines(err: str, desc: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(desc)]


def test_world_prints_stage_lines_and_one_pretraining_bar(capfd, tmp_path):
    code, deprecations = run_cli([*TINY_WORLD, "--out", str(tmp_path / "world")])
    out, err = capfd.readouterr()
    assert code == 0
    assert_clean(out, err, deprecations)
    lines = out.splitlines()
    assert "world: measure the base policy on the probe prompts ..." in lines
    assert any(re.fullmatch(r"world: measure the base policy on the probe prompts done in \d+\.\d s", line)
               for line in lines)
    assert lines[-1] == f"pmopt world: results in {tmp_path / 'world'}"
    bars = bar_lines(err, "world: pretrain policy")
    assert bars and "20/20" in bars[-1] and "loss=" in bars[-1]
    assert not [line for line in err.splitlines() if line.strip() and not line.startswith("world: pretrain")
                and "\r" not in line]


def test_train_pm_shows_one_bar_per_member_and_no_trainer_logs(capfd, tmp_path, tiny_pm_setup):
    cfg = tiny_pm_setup.config(train={"epochs": 1, "logging_steps": 1}, ensemble_size=2)
    path = tmp_path / "pm.yaml"
    path.write_text(dump_yaml(cfg))
    code, deprecations = run_cli(["train-pm", str(path), "--out", str(tmp_path / "proxy")])
    out, err = capfd.readouterr()
    assert code == 0
    assert_clean(out, err, deprecations)
    for k in (1, 2):
        bars = bar_lines(err, f"train-pm: PM proxy {k}/2")
        assert bars and "loss=" in bars[-1] and "6/6" in bars[-1]  # 48 training pairs / batch 8
        assert re.search(rf"^train-pm: PM proxy {k}/2 done: mean training loss \d\.\d{{4}}, "
                         r"held-out accuracy \d\.\d{3}$", out, re.M)
    assert (tmp_path / "proxy" / "metrics.jsonl").read_text().count('"pm/loss"') == 12  # logs still recorded


def test_quiet_prints_only_the_final_line(capfd, tmp_path):
    code, _ = run_cli(["-q", *TINY_WORLD, "--out", str(tmp_path / "world")])
    out, err = capfd.readouterr()
    assert code == 0
    assert out.splitlines() == [f"pmopt world: results in {tmp_path / 'world'}"]
    assert err == ""


def test_quiet_still_prints_errors(capfd, tmp_path):
    code, _ = run_cli(["-q", "world", str(tmp_path / "missing.yaml")])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert "missing.yaml: config file not found" in err


def test_flags_after_the_command_and_bad_levels():
    args = cli.build_parser().parse_args(["world", "c.yaml", "-v"])
    assert args.verbose and not args.quiet
    args = cli.build_parser().parse_args(["-q", "world", "c.yaml"])
    assert args.quiet  # the command's parser does not reset a flag given before it
    with pytest.raises(ValueError, match="console level"):
        console.configure("loud")


def test_stage_prints_one_line_at_each_end(capsys):
    with console.stage("demo: step"):
        print("inside")
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["demo: step ...", "inside"]
    assert re.fullmatch(r"demo: step done in \d+\.\d s", lines[2])
