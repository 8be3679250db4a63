"""The `pmopt` command line: parse, load the config, call one function (docs/ARCHITECTURE.md §3).

Each command is `module:function(args) -> Path` where `args` carries `config` (YAML path or None),
`overrides` (the `--set` list), `out` (or None) and the command's own flags. Errors caused by the
user's input (`PmoptError`) print one line and exit with code 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pmopt.io import WRITE_ERRNOS, PmoptError, release_out_dirs

# command -> (module, function, help). Modules are imported lazily so `pmopt --help` is instant.
COMMANDS = {
    "run": ("pmopt.pipeline", "run_command", "the main job: world -> PMs -> best-of-N -> PPO -> probes -> report"),
    "world": ("pmopt.world.build", "world_command", "build the synthetic world (corpus, pairs, probes, base policy)"),
    "train-pm": ("pmopt.pm.train", "train_pm_command", "train a preference model (or an ensemble); accelerate-ready"),
    "score": ("pmopt.pm.score", "score_command", "score prompt/response JSONL with a trained PM"),
    "bon": ("pmopt.bon.sweep", "bon_command", "best-of-N sweep over n <= N_max from one sampling pass"),
    "ppo": ("pmopt.rl.command", "ppo_command", "PPO against a PM with a KL leash to the reference policy"),
    "probe": ("pmopt.probes.run", "probe_command", "run sycophancy / truthfulness probes on a policy"),
    "report": ("pmopt.report.html", "report_command", "tables, PNG plots and an HTML page for a run directory"),
    "fit": ("pmopt.analysis.fits", "fit_command", "fit Gao et al. 2022's gold-vs-KL forms to a run's curves"),
    "intervene": ("pmopt.intervene.command", "intervene_command",
                  "fine-tune the policy on synthetic data against sycophancy (Wei et al. 2023); before vs after"),
    "config": ("pmopt.config_docs", "config_show_command", "print a command's config as YAML (defaults + CONFIG + --set)"),
}

# One runnable example per command, shown in its --help; each `--set` key is one its config accepts (tested).
EXAMPLES = {
    "run": "pmopt run configs/experiments/tiny.yaml --seeds 0,1 --set world.raters.w_agree=0 --out checkpoints/tiny-unbiased",
    "world": "pmopt world configs/world/tiny.yaml --set policy.steps=200 --out checkpoints/world",
    "train-pm": "pmopt train-pm configs/pm/world.yaml --set train.epochs=1 --out checkpoints/pm-world",
    "score": "pmopt score --pm checkpoints/pm-world --input records.jsonl --out checkpoints/scores",
    "bon": "pmopt bon configs/bon/world.yaml --set n_max=16 --out checkpoints/bon",
    "ppo": "pmopt ppo configs/ppo/world.yaml --set train.steps=20 --out checkpoints/ppo",
    "probe": "pmopt probe configs/probes/world.yaml --policy checkpoints/world/policy --set samples_per_prompt=2",
    "report": "pmopt report checkpoints/sycophancy",
    "fit": "pmopt fit checkpoints/sycophancy --metric gold/reward",
    "intervene": "pmopt intervene configs/experiments/intervene_tiny.yaml --set train.epochs=1 --out checkpoints/intervene",
    "config": "pmopt config show train-pm configs/pm/world.yaml --set train.epochs=1",
}


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose --help ends with its config keys, generated from the config dataclass only
    when help is asked for (importing a config imports torch: `pmopt world CONFIG` must not pay for help)."""

    config_command: str | None = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.config_command is None:
            return text
        from pmopt.config_docs import command_config_help

        return f"{text}\n{command_config_help(self.config_command)}\n"


def _verbosity(parser: argparse.ArgumentParser, default) -> None:
    # SUPPRESS on a command's parser keeps `pmopt -q world` from being reset by the command's own default.
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print only errors and the final line")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="also print third-party logs, warnings and progress bars")


def _common(parser: argparse.ArgumentParser, example_key: str) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML config path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {example_key} (repeatable; keys listed below)")
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
    parser.add_argument("--chat-template-kwargs", default=None, metavar="JSON",
                        help="apply_chat_template kwargs (default: those the PM was trained with)")


def _example_set(name: str) -> str:
    words = EXAMPLES[name].split()
    return words[words.index("--set") + 1]


def _add_command(sub, name: str, help_text: str) -> None:
    config_command = None if name in ("score", "report", "fit") else name
    epilog = f"example:\n  {EXAMPLES[name]}"
    cmd = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _verbosity(cmd, argparse.SUPPRESS)
    if name == "config":
        from pmopt.config_docs import CONFIG_CLASSES

        cmd.add_argument("action", choices=["show"], help="show: print the config as YAML")
        cmd.add_argument("target", choices=sorted(CONFIG_CLASSES), help="the command whose config to show")
        _common(cmd, _example_set(name))
        return
    cmd.config_command = config_command
    if name == "score":  # no config file: --pm, --input and the flags below are all it takes
        cmd.add_argument("--pm", required=True, help="PM directory (full, LoRA or ensemble) or hub id")
        cmd.add_argument("--input", required=True, help="JSONL of {prompt, response} records")
        cmd.add_argument("--prefix", default=None, help="'non_sycophantic' or a JSON list of messages")
        cmd.add_argument("--batch-size", type=int, default=32, help="most records per batch")
        _pm_loading(cmd)
        cmd.add_argument("--out", default=None, help="output directory (default checkpoints/score-<time>)")
        cmd.set_defaults(config=None, overrides=[])
    elif name == "report":
        cmd.add_argument("run_dir", help="a run directory")
        cmd.add_argument("--out", default=None, help="where to write (default RUN_DIR/report)")
        cmd.set_defaults(config=None, overrides=[])
    elif name == "fit":
        cmd.add_argument("run_dir", help="a run directory with bon/curves.jsonl and/or ppo/curves.jsonl")
        cmd.add_argument("--metric", action="append", default=[], help="metric to fit (repeatable; "
                         "default gold/reward and probe/answer/syco_rate)")
        cmd.add_argument("--n-boot", type=int, default=2000, help="bootstrap refits for the intervals")
        cmd.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
        cmd.add_argument("--out", default=None, help="where to write fits.json (default RUN_DIR)")
        cmd.set_defaults(config=None, overrides=[])
    else:
        _common(cmd, _example_set(name))
        if name == "run":
            cmd.add_argument("--seeds", default=None, metavar="K,K,...",
                             help="run the experiment once per seed (e.g. 0,1,2) and aggregate over seeds")
            cmd.add_argument("--launcher", default=None, choices=["local", "slurm"],
                             help="where a sweep's cells or the seeds run: this machine's process pool (local, the "
                                  "default) or one SLURM job array plus an aggregation job (slurm; docs/cluster.md)")
            cmd.add_argument("--dry-run", action="store_true",
                             help="check the config and print what would run (with --launcher slurm: the sbatch "
                                  "scripts); write and submit nothing")
        if name == "probe":
            cmd.add_argument("--policy", default=None, help="policy directory (HF causal LM + tokenizer)")
            cmd.add_argument("--probes", default=None, help="comma-separated probe names")


def version_line() -> str:
    """pmopt's version and the versions of the libraries whose behaviour its results depend on."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{name} {v(name)}" for name in ("torch", "transformers", "trl", "accelerate", "peft"))
    return f"pmopt {v('pmopt')} ({deps})"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmopt", description=__doc__.splitlines()[0],
                                     epilog="`pmopt COMMAND --help` lists the command's config keys.")
    parser.add_argument("--version", action=_VersionAction)
    _verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, (_, _, help_text) in COMMANDS.items():
        _add_command(sub, name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pmopt import console

    console.configure("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    module_name, function_name, _ = COMMANDS[args.command]
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(args)
    except PmoptError as exc:
        one_line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"pmopt {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a full disk in a write pmopt does not make itself (a checkpoint, save_pretrained): pmopt's own
        # writes say this as a PmoptError; these leave the previous checkpoint, written whole and renamed
        # into place, as it was
        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"pmopt {args.command}: error: {disk_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # torch.save and safetensors wrap a failed write in their own errors (a RuntimeError "file write
        # failed", a SafetensorError "IoError(Os { code: 28, kind: StorageFull ...})")
        full = wrapped_disk_error(exc)
        if full is None:
            raise
        print(f"pmopt {args.command}: error: {disk_error(full)}", file=sys.stderr)
        return 2
    finally:
        release_out_dirs()  # the --out lock, however the command ended
    if result is not None:
        print(f"pmopt {args.command}: results in {os.fspath(result)}")
    return 0


# how torch's and safetensors' writers describe a full disk inside their own exceptions
_WRAPPED_DISK_FULL = ("No space left on device", "StorageFull", "file write failed", "Disk quota exceeded")


def wrapped_disk_error(exc: BaseException) -> OSError | None:
    """The full-disk OSError a library exception stands for, or None when it is anything else."""
    text = str(exc)
    if not any(marker in text for marker in _WRAPPED_DISK_FULL):
        return None
    import errno

    code = errno.EDQUOT if "quota" in text.lower() else errno.ENOSPC
    return OSError(code, os.strerror(code))


def disk_error(exc: OSError) -> str:
    """One line for a failed write that reached the CLI as an OSError (ENOSPC, EDQUOT, EROFS, EACCES)."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    return (f"{where}could not write: {WRITE_ERRNOS[exc.errno]} ({errno.errorcode[exc.errno]}); the files and "
            "checkpoints written before it are intact: make room and rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
