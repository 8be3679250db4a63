"""The `pmopt` command line: parse, load the config, call one function (DESIGN §3).

Each command is `module:function(args) -> Path` where `args` carries `config` (YAML path or None),
`overrides` (the `--set` list), `out` (or None) and the command's own flags. Errors caused by the
user's input (`PmoptError`) print one line and exit with code 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pmopt.io import PmoptError

# command -> (module, function, help). Modules are imported lazily so `pmopt --help` is instant.
COMMANDS = {
    "run": ("pmopt.pipeline", "run_command", "the main job: world -> PMs -> best-of-N -> PPO -> probes -> report"),
    "world": ("pmopt.world.build", "world_command", "build the synthetic world (corpus, pairs, probes, base policy)"),
    "train-pm": ("pmopt.pm.train", "train_pm_command", "train a preference model (or an ensemble); accelerate-ready"),
    "score": ("pmopt.pm.score", "score_command", "score prompt/response JSONL with a trained PM"),
    "bon": ("pmopt.bon.sweep", "bon_command", "best-of-N sweep over n <= N_max from one sampling pass"),
    "ppo": ("pmopt.rl.ppo", "ppo_command", "PPO against a PM with a KL leash to the reference policy"),
    "probe": ("pmopt.probes.run", "probe_command", "run sycophancy / truthfulness probes on a policy"),
    "report": ("pmopt.report.html", "report_command", "tables, PNG plots and an HTML page for a run directory"),
}


def _common(parser: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        parser.add_argument("config", nargs="?", default=None, help="YAML config path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (default checkpoints/<command>-<time>)")


def _pm_loading(parser: argparse.ArgumentParser) -> None:
    """The flags of `pmopt.pm.loading.PMLoadOptions`."""
    parser.add_argument("--dtype", default="float32", choices=["auto", "bfloat16", "float16", "float32"],
                        help="weights dtype (auto: the checkpoint's own)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:1 (default: cuda if present)")
    parser.add_argument("--device-map", default=None, choices=["auto"], help="spread a large PM over devices")
    parser.add_argument("--trust-remote-code", action="store_true", help="run a hub PM's own modelling code")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per record; longer keep their end")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="padded tokens per batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmopt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == "score":
            _common(cmd, config=False)
            cmd.add_argument("--pm", required=True, help="PM directory (full, LoRA or ensemble) or hub id")
            cmd.add_argument("--input", required=True, help="JSONL of {prompt, response} records")
            cmd.add_argument("--prefix", default=None, help="'non_sycophantic' or a JSON list of messages")
            cmd.add_argument("--batch-size", type=int, default=32)
            _pm_loading(cmd)
        elif name == "probe":
            _common(cmd)
            cmd.add_argument("--policy", default=None, help="policy directory (HF causal LM + tokenizer)")
            cmd.add_argument("--probes", default=None, help="comma-separated probe names")
        elif name == "report":
            cmd.add_argument("run_dir", help="a run directory")
            cmd.add_argument("--out", default=None, help="where to write (default RUN_DIR/report)")
            cmd.set_defaults(config=None, overrides=[])
        else:
            _common(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function_name, _ = COMMANDS[args.command]
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(args)
    except PmoptError as exc:
        print(f"pmopt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"pmopt {args.command}: results in {os.fspath(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
