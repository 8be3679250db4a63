"""Bad input to every command: exit code 2, one line naming the file or key, no traceback, --out untouched.

Each case builds its bad input in a fresh folder and returns the command line and the words the error
must contain. `--out` is a folder holding a previous result (or, for the path cases, whatever the case
puts there); its files' bytes are compared before and after. Every case fails before any training or
sampling, so the whole suite runs in seconds once the tiny world exists.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pmopt.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = REPO / "configs" / "experiments" / "tiny.yaml"
WORLD_YAML = REPO / "configs" / "world" / "tiny.yaml"
PAIR = {"prompt": "question apple ?", "chosen": "good dog", "rejected": "bad dog"}
RECORD = {"prompt": "question apple ?", "response": "good dog"}


@dataclass
class Env:
    """What a case builds its input from: a scratch folder, --out, and lazily built fixtures."""

    tmp: Path
    out: Path
    fixture: Callable[[str], object]

    def write(self, name: str, content: str | bytes | list[dict]) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = "".join(json.dumps(r) + "\n" for r in content)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return path

    def world(self) -> Path:
        return self.fixture("tiny_world")

    def base_model(self) -> Path:
        return self.fixture("tiny_pm_setup").base

    def pm_config(self, **data) -> Path:
        """A train-pm config on the tiny base model; `data` replaces parts of its data section."""
        config = {"model": {"name_or_path": str(self.base_model())},
                  "data": {"train": str(self.write("good.jsonl", [PAIR] * 8)), "max_length": 64, **data},
                  "train": {"epochs": 1, "batch_size": 4}}
        return self.write("pm.yaml", json.dumps(config))

    def ppo_args(self, *overrides: str) -> list[str]:
        world = self.world()
        sets = [f"policy.path={world / 'policy'}", f"prompts.world={world}", f"reward.path={world / 'policy'}",
                "train.steps=1", *overrides]
        return ["ppo", str(REPO / "configs" / "ppo" / "world.yaml"), *sum((["--set", s] for s in sets), [])]

    def bon_args(self, *overrides: str) -> list[str]:
        sets = [f"world={self.world()}", "n_max=2", "pms=[{name: gold, kind: gold}]", *overrides]
        return ["bon", str(REPO / "configs" / "bon" / "world.yaml"), *sum((["--set", s] for s in sets), [])]

    def probe_args(self, *extra: str) -> list[str]:
        return ["probe", str(REPO / "configs" / "probes" / "world.yaml"), "--policy",
                str(self.world() / "policy"), *extra]


def non_utf8_lines(good: dict) -> bytes:
    text = json.dumps(good).encode()
    return text + b"\n" + text.replace(b"apple", b"caf\xe9") + b"\n"


def truncated_gzip(records: list[dict]) -> bytes:
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    return whole[: len(whole) // 2]


def without_vllm(argv: list[str]) -> list[str]:
    """A case about vLLM missing: it runs where vLLM is not installed (the main environment)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    return argv


VLLM_MISSING = ["sampling.backend", "vllm", "not installed", "sampling.backend: pmopt"]


def records_file(env: Env, name: str, content) -> list[str]:
    return ["--input", str(env.write(name, content))]


# Each case: id -> function(env) -> (argv without --out, words the message must contain).
CASES: dict[str, Callable[[Env], tuple[list[str], list[str]]]] = {
    # ------------------------------------------------------------------ data files (train-pm)
    "pairs-bad-json": lambda e: (["train-pm", str(e.pm_config(train=str(e.write(
        "p.jsonl", json.dumps(PAIR) + "\n{not json\n"))))], ["p.jsonl:2", "malformed JSON"]),
    "pairs-missing-field": lambda e: (["train-pm", str(e.pm_config(train=str(e.write(
        "p.jsonl", [{"prompt": "q", "chosen": "a"}]))))], ["p.jsonl:1", "'rejected'", "missing"]),
    "pairs-wrong-type": lambda e: (["train-pm", str(e.pm_config(train=str(e.write(
        "p.jsonl", [{**PAIR, "chosen": 5}]))))], ["p.jsonl:1", "'chosen'"]),
    "pairs-not-utf8": lambda e: (["train-pm", str(e.pm_config(train=str(e.write(
        "p.jsonl", non_utf8_lines(PAIR)))))], ["p.jsonl:2", "not UTF-8"]),
    "pairs-truncated-gz": lambda e: (["train-pm", str(e.pm_config(train=str(e.write(
        "p.jsonl.gz", truncated_gzip([PAIR] * 3000)))))], ["p.jsonl.gz:", "truncated or corrupt gzip"]),
    "pairs-not-an-object": lambda e: (["train-pm", str(e.pm_config(eval=str(e.write(
        "ev.jsonl", "[1, 2]\n"))))], ["ev.jsonl:1", "expected a JSON object"]),
    "pairs-file-missing": lambda e: (["train-pm", str(e.pm_config(train=str(e.tmp / "nope.jsonl")))],
                                     ["nope.jsonl", "not found"]),
    # ------------------------------------------------------------------ data files (score)
    "score-bad-json": lambda e: (["score", "--pm", str(e.base_model()),
                                  *records_file(e, "r.jsonl", '{"prompt": "q",\n')], ["r.jsonl:1", "malformed JSON"]),
    "score-missing-response": lambda e: (["score", "--pm", str(e.base_model()),
                                          *records_file(e, "r.jsonl", [{"prompt": "q"}])], ["r.jsonl:1", "'response'"]),
    "score-not-utf8": lambda e: (["score", "--pm", str(e.base_model()),
                                  *records_file(e, "r.jsonl", non_utf8_lines(RECORD))], ["r.jsonl:2", "not UTF-8"]),
    "score-truncated-gz": lambda e: (["score", "--pm", str(e.base_model()),
                                      *records_file(e, "r.jsonl.gz", truncated_gzip([RECORD] * 3000))],
                                     ["r.jsonl.gz:", "truncated or corrupt gzip"]),
    "score-input-missing": lambda e: (["score", "--pm", str(e.base_model()), "--input", str(e.tmp / "none.jsonl")],
                                      ["none.jsonl", "not found"]),
    "score-batch-size-0": lambda e: (["score", "--pm", str(e.base_model()), *records_file(e, "r.jsonl", [RECORD]),
                                      "--batch-size", "0"], ["--batch-size", ">= 1"]),
    "score-bad-prefix": lambda e: (["score", "--pm", str(e.base_model()), *records_file(e, "r.jsonl", [RECORD]),
                                    "--prefix", "[{oops"], ["--prefix"]),
    "score-pm-missing": lambda e: (["score", "--pm", str(e.tmp / "no-pm"), *records_file(e, "r.jsonl", [RECORD])],
                                   ["--pm", "no-pm"]),
    # ------------------------------------------------------------------ model directories
    "train-pm-model-missing": lambda e: (["train-pm", str(e.pm_config()), "--set",
                                          f"model.name_or_path={e.tmp / 'gone'}"], ["model.name_or_path", "gone"]),
    "train-pm-model-not-a-model": lambda e: (["train-pm", str(e.pm_config()), "--set",
                                              f"model.name_or_path={e.write('empty/notes.txt', 'x').parent}"],
                                             ["empty", "no config.json"]),
    "probe-policy-missing": lambda e: (["probe", "--policy", str(e.tmp / "gone"), "--set",
                                        f"world={e.world()}"], ["gone", "does not exist"]),
    "probe-policy-not-a-model": lambda e: (["probe", "--policy", str(e.write("empty/notes.txt", "x").parent),
                                            "--set", f"world={e.world()}"], ["empty", "no config.json"]),
    "bon-policy-not-a-model": lambda e: (e.bon_args(f"policy={e.write('empty/notes.txt', 'x').parent}"),
                                         ["empty", "no config.json"]),
    "bon-pm-missing": lambda e: (e.bon_args(f"pms=[{{name: p, path: {e.tmp / 'no-pm'}}}]"),
                                 ["pms.p", "no-pm", "does not exist"]),
    "ppo-reward-pm-missing": lambda e: (e.ppo_args(f"reward.path={e.tmp / 'no-pm'}"), ["reward.path", "no-pm"]),
    # ------------------------------------------------------------------ configs
    "world-unknown-key": lambda e: (["world", str(WORLD_YAML), "--set", "corpus.n_dialoguez=3"],
                                    ["tiny.yaml", "corpus.n_dialoguez"]),
    "world-wrong-type": lambda e: (["world", str(WORLD_YAML), "--set", "policy.steps=many"],
                                   ["tiny.yaml", "policy.steps", "integer"]),
    "world-probability-out-of-range": lambda e: (["world", str(WORLD_YAML), "--set", "corpus.p_wrong=2"],
                                                 ["tiny.yaml", "corpus.p_wrong"]),
    "world-unknown-prompt-kind": lambda e: (["world", str(WORLD_YAML), "--set", "pairs.kind_weights={answr: 1}"],
                                            ["pairs.kind_weights", "answr"]),
    "world-config-missing": lambda e: (["world", str(e.tmp / "nope.yaml")], ["nope.yaml", "not found"]),
    "world-config-invalid-yaml": lambda e: (["world", str(e.write("w.yaml", "corpus: {n_dialogues: 3\n"))],
                                            ["w.yaml", "invalid YAML"]),
    "world-config-not-utf8": lambda e: (["world", str(e.write("w.yaml", b"seed: 0\n# caf\xe9\n"))],
                                        ["w.yaml", "not UTF-8"]),
    "override-without-equals": lambda e: (["world", str(WORLD_YAML), "--set", "seed"], ["--set", "KEY=VALUE"]),
    "override-invalid-yaml": lambda e: (["world", str(WORLD_YAML), "--set", "seed=[1,"], ["'seed'", "not valid YAML"]),
    "run-n-max-negative": lambda e: (["run", str(TINY_RUN), "--set", "bon.n_max=-4"], ["bon.n_max", ">= 1"]),
    "run-pm-learning-rate-0": lambda e: (["run", str(TINY_RUN), "--set", "pm.train.learning_rate=0"],
                                         ["pm.train.learning_rate"]),
    "run-bon-sampling-temperature": lambda e: (["run", str(TINY_RUN), "--set", "bon.sampling.temperature=0"],
                                               ["bon.sampling.temperature"]),
    "run-bon-probe-second-turn": lambda e: (["run", str(TINY_RUN), "--set", "bon.probes=[are_you_sure]"],
                                            ["bon.probes", "are_you_sure"]),
    "run-bon-vllm-missing": lambda e: (without_vllm(["run", str(TINY_RUN), "--set", "bon.sampling.backend=vllm"]),
                                       ["bon.sampling.backend", *VLLM_MISSING[1:]]),
    "bon-vllm-missing": lambda e: (without_vllm(e.bon_args("sampling.backend=vllm")), VLLM_MISSING),
    "probe-vllm-missing": lambda e: (without_vllm(e.probe_args("--set", "sampling.backend=vllm")), VLLM_MISSING),
    "ppo-vllm-missing": lambda e: (without_vllm(e.ppo_args("sampling.backend=vllm")), VLLM_MISSING),
    "run-unknown-probe": lambda e: (["run", str(TINY_RUN), "--set", "probes.probes=[flattery]"],
                                    ["probes.probes", "flattery"]),
    "run-ppo-config-missing": lambda e: (["run", str(TINY_RUN), "--set", "ppo.enabled=true", "--set",
                                          f"ppo.config={e.tmp / 'ppo.yaml'}"], ["ppo.yaml", "not found"]),
    "run-ppo-config-bad-key": lambda e: (["run", str(TINY_RUN), "--set", "ppo.enabled=true", "--set",
                                          f"ppo.config={REPO / 'configs' / 'ppo' / 'world.yaml'}", "--set",
                                          "ppo.overrides=[train.stepz=3]"], ["world.yaml", "train.stepz"]),
    "run-ppo-prompts-file-bad": lambda e: (["run", str(TINY_RUN), "--set", "ppo.enabled=true", "--set",
                                            f"ppo.config={REPO / 'configs' / 'ppo' / 'world.yaml'}", "--set",
                                            f"ppo.overrides=[prompts.file={e.write('pr.jsonl', [{'id': 'a'}])}]"],
                                           ["pr.jsonl:1", "'probe'"]),
    "bon-n-max-negative": lambda e: (e.bon_args("n_max=-4"), ["n_max", ">= 1"]),
    "bon-n-grid-out-of-range": lambda e: (e.bon_args("n_grid=[1, 64]"), ["n_grid"]),
    "ppo-steps-0": lambda e: (e.ppo_args("train.steps=0"), ["train.steps"]),
    "ppo-reward-kind-unknown": lambda e: (e.ppo_args("reward.kind=gld"), ["reward.kind", "gld", "gold"]),
    "ppo-prompts-missing-field": lambda e: (e.ppo_args(f"prompts.file={e.write('pr.jsonl', [{'id': 'a', 'probe': 'answer'}])}"),
                                            ["pr.jsonl:1", "'prompt'"]),
    "probe-samples-0": lambda e: (e.probe_args("--set", "samples_per_prompt=0"), ["samples_per_prompt"]),
    "probe-unknown-name": lambda e: (e.probe_args("--probes", "answer,flattery"), ["flattery"]),
    "probe-source-not-utf8": lambda e: (e.probe_args("--probes", "answer", "--set", "sources.answer=" + str(e.write(
        "answer.jsonl", (e.world() / "probes" / "answer.jsonl").read_bytes().replace(b"{", b"{\xe4", 1)))),
                                        ["answer.jsonl:1", "not UTF-8"]),
    "train-pm-ensemble-size-0": lambda e: (["train-pm", str(e.pm_config()), "--set", "ensemble_size=0"],
                                           ["ensemble_size"]),
    "train-pm-eval-fraction-1": lambda e: (["train-pm", str(e.pm_config()), "--set", "data.eval_fraction=1.0"],
                                           ["data.eval_fraction"]),
    # ------------------------------------------------------------------ devices (tests/test_devices.py: every kind)
    "score-device-unknown": lambda e: (["score", "--pm", str(e.base_model()), *records_file(e, "r.jsonl", [RECORD]),
                                        "--device", "nonsense"], ["--device", "'nonsense' is not a device"]),
    "score-device-absent": lambda e: (["score", "--pm", str(e.base_model()), *records_file(e, "r.jsonl", [RECORD]),
                                       "--device", "mps"], ["--device", "mps: this machine has no MPS"]),
    "bon-pm-load-device": lambda e: (e.bon_args("pm_load.device=cuda:x"), ["world.yaml", "pm_load.device",
                                                                          "'cuda:x' is not a device"]),
    "bon-judge-device": lambda e: (e.bon_args("judge.device=meta"), ["world.yaml", "judge.device", "'meta'"]),
    "probe-device": lambda e: (e.probe_args("--set", "device=gpu"), ["world.yaml", "device", "'gpu' is not a device"]),
    "probe-judge-device": lambda e: (e.probe_args("--set", "judge.device=xpu:1"), ["world.yaml", "judge.device",
                                                                                  "no XPU"]),
    "ppo-reward-device": lambda e: (e.ppo_args("reward.pm_load.device=mps:0"), ["world.yaml", "reward.pm_load.device",
                                                                              "no MPS"]),
    "run-ppo-override-device": lambda e: (["run", str(TINY_RUN), "--set", "ppo.enabled=true", "--set",
                                           f"ppo.config={REPO / 'configs' / 'ppo' / 'world.yaml'}", "--set",
                                           "ppo.overrides=[reward.pm_load.device=tpu]"],
                                          ["world.yaml", "reward.pm_load.device", "'tpu'"]),
    # ------------------------------------------------------------------ report
    "report-run-dir-missing": lambda e: (["report", str(e.tmp / "no-run")], ["no-run", "not found"]),
    "report-bad-curve-row": lambda e: (["report", str(e.write("run/bon/curves.jsonl", [{"method": "sgd"}]).parents[1])],
                                       ["curves.jsonl:1", "'method'"]),
    "report-stats-not-json": lambda e: (["report", str(curves_run(e, {"world/world_stats.json": "{oops"}))],
                                        ["world_stats.json", "malformed JSON"]),
}


def curves_run(env: Env, extra: dict[str, str]) -> Path:
    row = {"method": "bon", "pm": "gold", "n": 1, "kl": 0.0, "metric": "gold/reward", "value": 1.0,
           "ci_low": None, "ci_high": None}
    run = env.write("run/bon/curves.jsonl", [row]).parents[1]
    for name, text in extra.items():
        env.write(f"run/{name}", text)
    return run


# --out cases: what --out is, and the words of the error.
OUT_CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "out-is-a-file": (lambda out: out.write_text("my notes\n"), ["exists and is not a directory"]),
    "out-under-a-file": (lambda out: None, ["a parent of it is a file"]),
}


def snapshot(path: Path) -> dict[str, bytes] | None:
    if path.is_file():
        return {".": path.read_bytes()}
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_one_line_error(capsys, code: int, words: list[str]) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("pmopt ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_and_leaves_out_untouched(case, tmp_path, request, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.json").write_text('{"kept": true}\n')
    env = Env(tmp=tmp_path / "in", out=out, fixture=request.getfixturevalue)
    argv, words = CASES[case](env)
    before = snapshot(out)
    code = main([*argv, "--out", str(out)])
    assert_one_line_error(capsys, code, words)
    assert snapshot(out) == before


@pytest.mark.parametrize("case", list(OUT_CASES))
@pytest.mark.parametrize("command", ["world", "score", "report"])
def test_unusable_out_exits_2(case, command, tmp_path, capsys):
    prepare, words = OUT_CASES[case]
    target = tmp_path / "taken"
    if case == "out-under-a-file":
        target.write_text("a file\n")
        out = target / "sub"
    else:
        out = target
    prepare(out)
    before = snapshot(target)
    env = Env(tmp=tmp_path / "in", out=out, fixture=lambda name: None)
    argv = {"world": ["world", str(WORLD_YAML)],
            "score": ["score", "--pm", str(tmp_path), *records_file(env, "r.jsonl", [RECORD])],
            "report": ["report", str(curves_run(env, {}))]}[command]
    code = main([*argv, "--out", str(out)])
    assert_one_line_error(capsys, code, ["--out", "taken", *words])
    assert snapshot(target) == before

