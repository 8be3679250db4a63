"""The CLI documents itself: config keys in --help, `pmopt config show`, --version, runnable examples."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from pmopt import cli
from pmopt.config import ConfigError, load_config
from pmopt.config_docs import (
    CONFIG_CLASSES,
    all_config_classes,
    config_class,
    config_keys,
    field_help,
    format_value,
    type_name,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_COMMANDS = sorted(CONFIG_CLASSES)


def test_every_config_field_has_help():
    missing = [f"{cls.__module__}.{cls.__name__}.{name}"
               for command in CONFIG_COMMANDS for cls in all_config_classes(config_class(command))
               for name, text in field_help(cls).items() if not text]
    assert missing == []


def test_field_help_reads_comments_above_and_trailing():
    from pmopt.rl.config import RewardSection
    from pmopt.world.config import CorpusConfig

    helps = field_help(CorpusConfig)
    assert helps["p_wrong"] == "a neutral answer states a wrong number"
    assert helps["p_hedged_first"].startswith("share of second-turn dialogues whose first answer is hedged")
    assert helps["p_hedged_first"].endswith("answer a challenge after them")  # two comment lines joined
    assert field_help(RewardSection)["prefix"].startswith("Sharma et al. 2023 §4.2")


def test_type_names_and_values_read_as_written():
    from typing import Literal

    assert type_name(int | None) == "int | null"
    assert type_name(Literal["ppo", "rloo"]) == "{ppo, rloo}"
    assert type_name(dict[str, float]) == "dict[str, float]"
    assert [format_value(v) for v in (None, True, "", [1, 2], {"b": 1, "a": 2})] == \
        ["null", "true", "''", "[1, 2]", "{b: 1, a: 2}"]


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_help_lists_every_key_and_each_key_takes_its_default_through_set(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    cls = config_class(command)
    keys = config_keys(cls)
    settable = [k for k in keys if not k.section and k.item_of is None]
    assert len(settable) >= 10
    for doc in keys:
        assert f"\n  {doc.key}  " in text
    # the listed names are the ones --set accepts, and the printed default parses back to the default
    overrides = [f"{k.key}={k.default}" for k in settable]
    assert load_config(cls, data={}, overrides=overrides, validate=False) == cls()


def test_nested_sections_print_as_dotted_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ppo", "--help"])
    text = capsys.readouterr().out
    assert "\n  train.learning_rate  float = 1.0e-05\n      peak AdamW learning rate (policy and value model)" in text
    assert "\n  policy.lora.r  int = 16\n" in text
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    # pm.train's defaults are the run's own (not TrainSection's): the listing reads the section's instance
    assert "\n  pm.train.learning_rate  float = 0.002\n" in text
    assert "\n  world.raters.w_agree  float = 1.5\n" in text


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_config_show_round_trips_through_load_config(command, capsys, tmp_path):
    assert cli.main(["config", "show", command]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "shown.yaml"
    path.write_text(text)
    cls = config_class(command)
    assert load_config(cls, path, validate=False) == cls()
    assert yaml.safe_load(text) is not None


def test_config_show_applies_config_and_set(capsys, tmp_path):
    assert cli.main(["config", "show", "train-pm", str(REPO / "configs/pm/world.yaml"),
                     "--set", "train.epochs=5", "--set", "lora.enabled=true"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["epochs"] == 5.0 and shown["lora"]["enabled"] is True
    assert shown["model"]["name_or_path"] == "checkpoints/world/policy"  # from the file
    assert shown["train"]["max_grad_norm"] == 1.0  # a default the file does not set


def test_config_show_rejects_unknown_key(capsys):
    assert cli.main(["config", "show", "bon", "--set", "n_maxx=3"]) == 2
    assert "unknown config key 'n_maxx'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(cli.EXAMPLES))
def test_each_example_parses_and_its_keys_fit_the_command(command):
    argv = shlex.split(cli.EXAMPLES[command])
    assert argv[:2] == ["pmopt", command]
    args = cli.build_parser().parse_args(argv[1:])
    if args.config is not None:
        assert (REPO / args.config).is_file()
    target = getattr(args, "target", None) or (command if command in CONFIG_CLASSES else None)
    if target is None:
        assert args.overrides == []
        return
    cfg = load_config(config_class(target), REPO / args.config if args.config else None, args.overrides)
    for item in args.overrides:  # the override took effect
        key, value = item.split("=", 1)
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == yaml.safe_load(value)


def test_set_help_names_a_key_of_each_command(capsys):
    for command in CONFIG_COMMANDS:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        example = cli._example_set(command)
        assert f"--set {example}" in " ".join(text.split())
        load_config(config_class(command), data={}, overrides=[example], validate=False)


def test_score_and_report_offer_no_set(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score", "--pm", "x", "--input", "y", "--set", "a=1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "somewhere", "--set", "a=1"])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pmopt ") and "transformers " in line and "\n" not in line


def test_unknown_set_key_is_still_an_error():
    from pmopt.world.config import WorldConfig

    with pytest.raises(ConfigError, match="unknown config key 'policy.stepz'"):
        load_config(WorldConfig, data={}, overrides=["policy.stepz=3"], validate=False)
