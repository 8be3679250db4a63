"""The driver of benchmarks/gpu_device.sh: every GPU figure of docs/gpu.md in one bounded run.

    benchmarks/gpu_device.sh                      # on a lent GPU: real sizes, bf16, figures under $OUT
    benchmarks/gpu_device.sh --sizes tiny --cpu   # the dry run here: the same steps, tiny models, CPU

Steps, each its own process with its log, run in this order and stopped at their share of `--budget-s`
(the whole run's limit; a step past it is killed with its process group, and what it wrote stays):

1. env: the GPU, driver and clocks (nvidia-smi), torch's view of the device, the version and origin of every
   package the run rests on, the requirements of the carried wheels that the image does not meet, and
   whether trl, datasets and pmopt's trainer import;
2. gpu-0.5b / gpu-1.5b (or gpu-tiny): benchmarks/gpu.py, which writes its JSON after every section;
3. walkthrough: benchmarks/gpu_walkthrough.py, train-pm -> bon -> probe -> report at the walkthrough's real
   sizes (or tiny ones).

Under `--out` (default $OUT) it leaves at most 8 files, none in a subfolder: summary.json (every step's exit
code and time, every figure), one JSON per step and logs.tar.gz (every log).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from gpu_walkthrough import REPO, run_logged

# Per size: gpu.py's arguments. Sized so the whole run ends in ~5 min on an H100 (docs/gpu.md gives the
# estimate per step); the 1.5B model trains 4 pairs a step and PPO takes 32 rollouts so that float32
# master weights, AdamW state and activations fit in 80 GB.
COMMON = ["--seq-len", "1024", "--steps", "5", "--warmup", "2", "--prompts", "8", "--loop-prompts", "2",
          "--prompt-len", "128", "--max-new-tokens", "64", "--n-values", "16,64,256",
          "--sample-batch-sizes", "256,1024", "--decode-batches", "1,64,256", "--decode-steps", "32"]
GPU_ARGS = {
    "0.5b": ["--device", "cuda", "--dtype", "bfloat16", "--sizes", "0.5b", "--batch-size", "8", "--ppo-batch", "64",
             *COMMON],
    "1.5b": ["--device", "cuda", "--dtype", "bfloat16", "--sizes", "1.5b", "--batch-size", "4", "--ppo-batch", "32",
             *COMMON],
    "tiny": ["--sizes", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "2", "--warmup", "1",
             "--prompts", "2", "--loop-prompts", "1", "--prompt-len", "8", "--max-new-tokens", "6",
             "--n-values", "2,4", "--sample-batch-sizes", "4,8", "--decode-batches", "1,4", "--decode-steps", "3",
             "--ppo-batch", "3", "--matmul-size", "128", "--copy-mib", "16"],
}
# step -> the most it may take, as a share of --budget-s (of 480 s: 60, 150, 180, 180, 120 s); then the
# budget left decides. A slow CPU dry run gets more time from a larger --budget-s.
CAPS = {"env": 0.125, "gpu-0.5b": 0.3125, "walkthrough": 0.375, "gpu-1.5b": 0.375, "gpu-tiny": 0.25}
PACKAGES = ["torch", "transformers", "accelerate", "peft", "trl", "datasets", "dill", "multiprocess", "pyarrow",
            "fsspec", "pandas", "numpy", "tokenizers", "safetensors", "huggingface-hub", "pyyaml", "tqdm",
            "matplotlib", "jinja2", "psutil", "setuptools", "pmopt"]
CARRIED = ["trl", "datasets", "dill", "multiprocess", "pmopt"]  # whose requirements the image must meet
BUDGET = "{budget_s}"  # in a step's argv: the seconds it is given, less 10 to write its JSON and stop cleanly


def steps(sizes: str, cpu: bool, data: Path, work: Path) -> list[tuple[str, list[str]]]:
    py, bench = sys.executable, REPO / "benchmarks"
    device = ["--device", "cpu", "--dtype", "float32", "--threads", "1"] if cpu else []
    walk = ["--size", sizes, "--device", "cpu" if cpu else "cuda", "--data", str(data), "--budget-s", BUDGET,
            "--work", str(work / "walkthrough"), "--out", str(work / "walkthrough.json")]
    gpu = [(f"gpu-{size}", [py, str(bench / "gpu.py"), *GPU_ARGS[size], *device, "--out", str(work / f"gpu-{size}.json")])
           for size in (["tiny"] if sizes == "tiny" else ["0.5b", "1.5b"])]
    walkthrough = ("walkthrough", [py, str(bench / "gpu_walkthrough.py"), *walk])
    env = ("env", [py, str(bench / "gpu_device.py"), "--env", str(work / "env.json")])
    # the first size's figures, then the end-to-end check, then the largest (riskiest) model
    return [env, gpu[0], walkthrough, *gpu[1:]]


# ----------------------------------------------------------------------------- 1. env


def environment() -> dict:
    """What the figures rest on: device, driver, clocks, package versions and where each was imported from,
    and every requirement of a carried package (installed with --no-deps) that the image does not meet."""
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
            versions[name] = {"version": dist.version, "at": str(dist.locate_file(""))}
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version, "executable": sys.executable, "packages": versions, "unmet": unmet_requirements(),
            "imports": _imports(), "torch": _torch_device(), "nvidia_smi": _nvidia_smi()}


def _imports() -> dict:
    """Whether the carried packages import against the image's (a version mismatch shows here first)."""
    import importlib

    result = {}
    for module in ("trl", "datasets", "peft", "pmopt.pm.train", "pmopt.bon.sweep"):
        try:
            importlib.import_module(module)
            result[module] = "ok"
        except Exception as error:  # noqa: BLE001 - any failure is the finding to report
            result[module] = f"{type(error).__name__}: {error}"
    return result


def unmet_requirements(names: list[str] = CARRIED) -> list[str]:
    from importlib import metadata

    from packaging.requirements import Requirement

    unmet = []
    for name in names:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            unmet.append(f"{name}: not installed")
            continue
        for req in map(Requirement, requires):
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra's or another platform's requirement
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                have = None
            if have is None or not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{name} needs {req}; found {have}")
    return unmet


def _torch_device() -> dict:
    import torch

    info = {"version": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available()}
    if info["available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", flash_sdp=torch.backends.cuda.flash_sdp_enabled())
    return info


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


# ----------------------------------------------------------------------------- run and bundle


def run_steps(plan: list[tuple[str, list[str]]], deadline: float, logs: Path, budget_s: float) -> dict:
    done = {}
    for name, argv in plan:
        left = deadline - time.monotonic()
        if left < 5:
            done[name] = {"rc": "skipped: time budget spent", "s": 0.0}
            continue
        timeout = min(CAPS[name] * budget_s, left)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: up to {timeout:.0f} s", flush=True)
        begin = time.perf_counter()
        argv = [arg.replace(BUDGET, f"{timeout - 10:.0f}") for arg in argv]
        rc = run_logged(argv, logs / f"{name}.log", timeout)
        done[name] = {"rc": rc, "s": time.perf_counter() - begin, "timeout_s": timeout, "argv": argv[1:]}
        print(f"[{time.strftime('%H:%M:%S')}] {name}: rc={rc} in {done[name]['s']:.1f} s", flush=True)
    return done


def bundle(work: Path, out: Path, summary: dict) -> list[str]:
    """summary.json, each step's JSON and logs.tar.gz: flat files under `out`, 8 at most."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(work.glob("*.json")):
        shutil.copyfile(path, out / path.name)
        written.append(path.name)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*.log")):
            tar.add(path, arcname=str(path.relative_to(work)))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    written += ["logs.tar.gz", "summary.json"]
    there = sorted(path.name for path in out.iterdir())  # a console log tee'd there counts too
    if len(there) > 8:
        raise RuntimeError(f"{len(there)} files under {out} ({', '.join(there)}); the device returns 8 at most")
    return written


def headline(work: Path, summary: dict) -> str:
    """The tables to read first: the reply of a device run holds only the end of the output."""
    import gpu

    lines = []
    for name, step in summary["steps"].items():
        lines.append(f"{name:<12} rc={step['rc']}  {step['s']:6.1f} s")
    for path in sorted(work.glob("gpu-*.json")):
        res = json.loads(path.read_text())
        try:
            lines += ["", gpu.table(res)]
        except KeyError as missing:  # a section cut short by the budget
            lines += ["", f"{path.name}: incomplete ({missing} missing); sections done: {list(res.get('sizes', {}))}"]
    walk = work / "walkthrough.json"
    if walk.exists():
        res = json.loads(walk.read_text())
        stages = ", ".join(f"{k} {v['s']:.1f} s (rc={v['rc']})" for k, v in res["stages"].items())
        lines += ["", f"walkthrough ({res['size']}, {res['device']}): build {res.get('build_s', 0):.1f} s, {stages}; "
                      f"checks {res.get('checks')}"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=["real", "tiny"], default="real",
                        help="real: Qwen2 0.5B and 1.5B, the walkthrough's own sizes; tiny: a dry run in seconds")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gpu.py in float32): the dry run")
    parser.add_argument("--only", default=None, help="comma-separated steps to run (env always runs): gpu-0.5b, "
                        "walkthrough, gpu-1.5b (or gpu-tiny); a rerun after a fix")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run's limit, install included")
    parser.add_argument("--data", type=Path, default=None, help="walkthrough data: ../shared/data's layout "
                        "(default .whl/data, where benchmarks/gpu_wheels.sh copies it, else ../shared/data)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="where the files go (default $OUT)")
    parser.add_argument("--env", type=Path, default=None, help=argparse.SUPPRESS)  # step 1, in its own process
    args = parser.parse_args(argv)
    if args.env is None and args.out is None:
        parser.error("--out is required where $OUT is not set")
    if args.only is not None:
        args.only = [name for name in args.only.split(",") if name]
        unknown = sorted(set(args.only) - set(CAPS))
        if unknown:
            parser.error(f"--only: unknown steps {unknown}; choose from {', '.join(CAPS)}")
    if args.data is None:
        carried, beside = REPO / ".whl" / "data", REPO.parent / "shared" / "data"
        args.data = carried if carried.is_dir() else beside
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.env is not None:
        args.env.write_text(json.dumps(environment(), indent=2) + "\n")
        return 0
    started = float(os.environ.get("PMOPT_DEVICE_T0", time.time()))  # gpu_device.sh's start: installs count
    deadline = time.monotonic() + args.budget_s - (time.time() - started)
    work = Path(tempfile.mkdtemp(prefix="pmopt-gpu-"))
    logs = work / "logs"
    logs.mkdir()
    plan = [(name, argv) for name, argv in steps(args.sizes, args.cpu, args.data, work)
            if args.only is None or name == "env" or name in args.only]
    summary = {"sizes": args.sizes, "cpu": args.cpu, "budget_s": args.budget_s, "install_s": time.time() - started,
               "steps": run_steps(plan, deadline, logs, args.budget_s)}
    summary["results"] = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
    summary["total_s"] = time.time() - started
    bundle(work, args.out, summary)
    print(headline(work, summary))
    there = sorted(path.name for path in args.out.iterdir())
    print(f"\n{len(there)} files in {args.out}: {', '.join(there)}; {summary['total_s']:.0f} s in all")
    shutil.rmtree(work, ignore_errors=True)
    walkthrough_ok = "walkthrough" not in summary["steps"] or summary["results"].get("walkthrough", {}).get("ok")
    ok = all(step["rc"] == 0 for step in summary["steps"].values()) and walkthrough_ok is True
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
