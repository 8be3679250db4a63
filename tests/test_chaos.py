"""Chaos: `pmopt run` (with the RL stage), `pmopt bon` and `pmopt ppo` killed with SIGKILL again and again,
in every stage, and restarted each time on the same --out, must end with the same bytes as a run never stopped.

Kills are real SIGKILLs of the child process, of two kinds:
  * at an exact point, by the fault hook `PMOPT_FAULT=<site>:<count>:kill` (pmopt.faults): the child kills
    itself there, mid-stage (after a checkpoint, inside a checkpoint write, between two files);
  * at a moment chosen by watching the run's files: when a checkpoint or shard appears (or the manifest
    shows a stage running), wait a random delay from a fixed seed, then kill the process group.
The stage each kill hit is read from the manifest at that moment. Compared byte for byte with the
uninterrupted run: the world's policy, every PM's weights and record, best-of-N samples / scores / grades /
curves, the probe metrics, PPO curves and policies, and the report's data (fits.json, claims.json,
summary.csv). Paths of the run directory are normalised; world_stats.json's wall-clock `seconds` is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmopt.io import LOCK_FILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = 13  # the random kill delays

# The tiny experiment (configs/experiments/tiny.yaml) made smaller still, with frequent checkpoints in every
# stage so that each kill lands after one: world pretraining every 40 of 120 steps, PMs every 4 of 12 steps,
# best-of-N in 7 shards, PPO every step of 4.
EXPERIMENT = f"""
seed: 0
world:
  facts: {{operand_max: 4}}
  corpus: {{n_dialogues: 1000, p_hedged_first: 0.0}}
  policy: {{hidden_size: 32, intermediate_size: 64, steps: 120, batch_size: 16, warmup_steps: 10, checkpoint_every: 40}}
  raters: {{w_agree: 3.0}}
  pairs: {{n_pairs: 400}}
  probes: {{n_questions: 20, n_are_you_sure: 6, n_feedback_texts: 4, n_mimicry: 6, n_truthfulness: 10}}
  stats: {{samples_per_prompt: 2}}
pm:
  train: {{epochs: 1.0, learning_rate: 0.002, batch_size: 32, warmup_ratio: 0.05, save_steps: 4, logging_steps: 4}}
  unbiased: true
  ensemble_size: 0
bon:
  n_max: 8
  probes: [answer, mimicry]
  shard_size: 16
  n_boot: 50
probes:
  enabled: true
  probes: [answer, are_you_sure]
  samples_per_prompt: 2
  n_boot: 50
ppo:
  enabled: true
  config: {REPO / 'configs' / 'ppo' / 'tiny_claim.yaml'}
  pms: [proxy, proxy-nonsyc]
  overrides: [train.steps=4, train.rollout_batch_size=16, train.minibatch_size=8, train.ppo_epochs=2,
              checkpoint.every=1, probes.every=2, prompts.n_prompts=64]
"""

# what must be identical, as globs under the run directory
COMPARED = ("world/policy/model.safetensors", "world/world_stats.json",
            "pms/*/model.safetensors", "pms/*/pmopt_pm.json",
            "bon/samples/shard-*.jsonl", "bon/grades.jsonl", "bon/scores/*.jsonl", "bon/curves.jsonl", "bon/curves.csv",
            "probes/metrics.json", "probes/grades.jsonl",
            "ppo/curves.jsonl", "ppo/*/curves.jsonl", "ppo/*/policy/model.safetensors",
            "fits.json", "claims.json", "report/summary.csv",
            "curves.jsonl", "curves.csv", "grades.jsonl", "scores/*.jsonl", "samples/shard-*.jsonl", "policy/model.safetensors")
TOP_STAGES = ("world", "pms", "bon", "probes", "ppo", "report")


# ----------------------------------------------------------------------------- running and killing


def child_env(fault: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PMOPT_FAULT"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if fault:
        env["PMOPT_FAULT"] = fault
    return env


def running_stage(out: Path) -> str:
    """The stage the manifest shows running ('world', 'pms (pm/proxy)', ...), or '-' when none."""
    try:
        stages = json.loads((out / "manifest.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return "-"
    running = [name for name, entry in stages.items() if entry.get("status") == "running"]
    top = [name for name in running if name in TOP_STAGES] or running or ["-"]
    sub = [name for name in running if "/" in name]
    return top[0] + (f" ({sub[0]})" if sub else "")


class Launcher:
    """Runs one pmopt process at a time on `out`, logging each to out/../<name>.log, and records the kills."""

    def __init__(self, out: Path, args: list[str], stage_dir: Path | None = None):
        self.out, self.args = out, args
        self.stage_dir = stage_dir or out  # where the manifest with the running stage is
        self.log = out.parent / f"{out.name}.log"
        self.kills: list[tuple[str, str]] = []  # (how, stage)

    def run(self, fault: str | None = None, kill_when=None, delay: float = 0.0, timeout: float = 300) -> int:
        cmd = [sys.executable, "-c", "import sys; from pmopt.cli import main; sys.exit(main())", *self.args]
        with open(self.log, "a") as log:
            log.write(f"\n===== {' '.join(self.args)}  fault={fault} watch={kill_when is not None}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(fault), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            deadline = time.monotonic() + timeout
            try:
                while proc.poll() is None:
                    if kill_when is not None and kill_when(self.out):
                        time.sleep(delay)
                        stage = running_stage(self.stage_dir)
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        self.kills.append((f"watch +{delay:.2f}s", stage))
                        return proc.returncode
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.args}: still running after {timeout} s")
                    time.sleep(0.01)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if fault and proc.returncode == -signal.SIGKILL:
            self.kills.append((fault, running_stage(self.stage_dir)))
        return proc.returncode

    def kill(self, fault: str | None = None, kill_when=None, delay: float = 0.0) -> None:
        """One run that must die by SIGKILL (a fault site not reached, or a watch that never fires, fails)."""
        rc = self.run(fault, kill_when, delay)
        assert rc == -signal.SIGKILL, f"{fault or 'watch'}: expected a kill, exit code {rc}; see {self.log}"

    def finish(self) -> None:
        rc = self.run()
        assert rc == 0, f"the final run failed (exit {rc}); see {self.log}"

    def per_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, stage in self.kills:
            top = stage.split(" ")[0]
            counts[top] = counts.get(top, 0) + 1
        return counts


def exists(*parts: str):
    return lambda out: out.joinpath(*parts).exists()


# ----------------------------------------------------------------------------- comparing


def snapshot(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for pattern in COMPARED:
        for path in sorted(root.glob(pattern)):
            data = path.read_bytes()
            if path.name == "world_stats.json":  # wall-clock seconds are not a result
                stats = json.loads(data)
                stats.pop("seconds", None)
                data = json.dumps(stats, sort_keys=True).encode()
            if path.suffix in (".json", ".jsonl", ".csv"):
                data = data.replace(str(root).encode(), b"RUN")
            files[str(path.relative_to(root))] = data
    return files


def assert_identical(chaos: Path, straight: Path) -> int:
    got, want = snapshot(chaos), snapshot(straight)
    assert sorted(got) == sorted(want), f"different files: {sorted(set(got) ^ set(want))}"
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"{chaos} differs from the uninterrupted run in {differ}"
    return len(want)


def report(name: str, launcher: Launcher, n_files: int, seconds: float) -> None:
    print(f"\nchaos {name}: {len(launcher.kills)} kills survived, per stage {launcher.per_stage()}; "
          f"{n_files} files identical; {seconds:.0f} s")
    for how, stage in launcher.kills:
        print(f"  kill {how:28s} in {stage}")


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One uninterrupted `pmopt run` of the experiment (the reference; also the inputs of bon / ppo alone)."""
    root = tmp_path_factory.mktemp("chaos")
    config = root / "experiment.yaml"
    config.write_text(EXPERIMENT)
    launcher = Launcher(root / "straight", ["run", str(config), "--out", str(root / "straight")])
    launcher.finish()
    return root / "straight"


def test_run_killed_in_every_stage_resumes_to_identical_results(straight, tmp_path):
    rng = random.Random(SEED)
    out = tmp_path / "run"
    launcher = Launcher(out, ["run", str(straight.parent / "experiment.yaml"), "--out", str(out)])
    started = time.perf_counter()
    # world: pretraining killed after its checkpoint at step 40; again at a random moment after the one at 80
    launcher.kill("pretrain.step:70:kill")
    launcher.kill(kill_when=exists("world", "policy_checkpoints", "step-000080"), delay=rng.uniform(0.0, 0.3))
    # PMs: proxy killed inside writing its second checkpoint (resumes from the first, at step 4); the unbiased
    # PM at step 6, after its first checkpoint; then at a random moment after its second
    launcher.kill("pm.save:2:kill")
    launcher.kill("pm.step:14:kill")
    launcher.kill(kill_when=exists("pms", "unbiased", "checkpoints", "checkpoint-8"), delay=rng.uniform(0.0, 0.5))
    # best-of-N: after the second sample shard, after the second score file (a random moment: the bon test)
    launcher.kill("bon.shard:2:kill")
    launcher.kill("bon.score:2:kill")
    # probes: between their two files
    launcher.kill("probe.write:1:kill")
    # PPO: proxy inside writing its second checkpoint (resumes from step 1); proxy-nonsyc at a random moment
    # after its second checkpoint (the ppo test kills at a step's start too)
    launcher.kill("ppo.save:2:kill")
    launcher.kill(kill_when=exists("ppo", "proxy-nonsyc", "checkpoints", "step-000002"), delay=rng.uniform(0.0, 0.5))
    # report: after fits.json, before the page
    launcher.kill("report.write:1:kill")
    launcher.finish()
    n_files = assert_identical(out, straight)
    report("pmopt run", launcher, n_files, time.perf_counter() - started)
    assert set(launcher.per_stage()) >= set(TOP_STAGES), launcher.kills


def dump_stage_config(straight: Path, stage: str, path: Path) -> Path:
    """The config the run gave its stage `stage` (bon, or ppo of the proxy PM), as `pmopt bon`/`ppo` take it."""
    from pmopt.config import dump_yaml, load_config
    from pmopt.pipeline import ExperimentConfig, bon_config, ppo_configs

    cfg = load_config(ExperimentConfig, straight / "config.yaml")
    stage_cfg = bon_config(cfg, straight) if stage == "bon" else ppo_configs(cfg, straight)["proxy"]
    path.write_text(dump_yaml(stage_cfg))
    return path


def test_bon_alone_killed_and_resumed_is_identical(straight, tmp_path):
    rng = random.Random(SEED + 1)
    config = dump_stage_config(straight, "bon", tmp_path / "bon.yaml")
    out = tmp_path / "bon"
    launcher = Launcher(out, ["bon", str(config), "--out", str(out)])
    started = time.perf_counter()
    launcher.kill("bon.shard:1:kill")
    launcher.kill(kill_when=exists("samples", "shard-00003.jsonl"), delay=rng.uniform(0.0, 0.2))
    launcher.kill("bon.score:3:kill")
    launcher.finish()
    n_files = assert_identical(out, straight / "bon")
    report("pmopt bon", launcher, n_files, time.perf_counter() - started)


def test_ppo_alone_killed_and_resumed_is_identical(straight, tmp_path):
    rng = random.Random(SEED + 2)
    config = dump_stage_config(straight, "ppo", tmp_path / "ppo.yaml")
    out = tmp_path / "ppo"
    launcher = Launcher(out, ["ppo", str(config), "--out", str(out)])
    started = time.perf_counter()
    launcher.kill("ppo.step:2:kill")
    launcher.kill("ppo.save:2:kill")
    launcher.kill(kill_when=exists("checkpoints", "step-000003"), delay=rng.uniform(0.0, 0.3))
    launcher.finish()
    n_files = assert_identical(out, straight / "ppo" / "proxy")
    report("pmopt ppo", launcher, n_files, time.perf_counter() - started)


# ----------------------------------------------------------------------------- the parent of worker processes
# `pmopt run --seeds` and a sweep run their seeds / cells in spawned worker processes (pmopt.workers). Here only
# the parent is killed (SIGKILL, no cleanup): its workers must end within seconds, releasing their `--out` locks,
# and an immediate rerun must resume to the files of a run never stopped. One two-seed run is the reference for
# both: a sweep over the one value the experiment already has (world.raters.w_agree = 3.0) runs the same two
# cells, each in RUN/w_agree-3/seed-<k>/, through the sweep's own path (cells, the shared policy cache).

# The experiment above made as small as the kills allow (PM checkpoints every 4 steps, a probes stage), without
# PPO: the workers' handling is tested here, not the stages.
SEEDS_EXPERIMENT = """
seed: 0
world:
  facts: {operand_max: 4}
  corpus: {n_dialogues: 600, p_hedged_first: 0.0}
  policy: {hidden_size: 32, intermediate_size: 64, steps: 80, batch_size: 16, warmup_steps: 10}
  raters: {w_agree: 3.0}
  pairs: {n_pairs: 300}
  probes: {n_questions: 8, n_are_you_sure: 4, n_feedback_texts: 2, n_mimicry: 4, n_truthfulness: 4}
  stats: {samples_per_prompt: 1}
pm:
  train: {epochs: 1.0, learning_rate: 0.002, batch_size: 32, warmup_ratio: 0.05, save_steps: 4, logging_steps: 4}
  unbiased: false
  ensemble_size: 0
bon:
  n_max: 4
  probes: [answer]
  n_boot: 50
probes:
  enabled: true
  probes: [answer]
  samples_per_prompt: 1
  n_boot: 50
"""
SEED_RUN = ["--seeds", "0,1", "--set", "parallel_seeds=2"]
SWEEP_RUN = ["--seeds", "0,1", "--set", "parallel_seeds=2", "--set", "sweep={key: world.raters.w_agree, values: [3.0]}"]
WORKER_GRACE = 5.0  # seconds a worker may outlive its killed parent


def pmopt_process(args: list[str], log: Path, err: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from pmopt.cli import main; sys.exit(main())", *args]
    with open(log, "a") as out, open(err, "w") as errors:
        return subprocess.Popen(cmd, cwd=REPO, env=child_env(None), stdout=out, stderr=errors, start_new_session=True)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...), read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_parent_when(args: list[str], out: Path, ready, timeout: float = 600) -> tuple[set[int], float, str]:
    """Run `pmopt run ARGS`, SIGKILL its parent process alone once `ready(out)`; returns (its workers, seconds
    the last of them outlived it, the stage the manifest of seed 1 showed running)."""
    proc = pmopt_process(args, out.parent / f"{out.name}.log", out.parent / f"{out.name}.killed.err")
    try:
        deadline = time.monotonic() + timeout
        while not ready(out):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the kill"
            assert time.monotonic() < deadline, f"{args}: the kill's moment never came"
            time.sleep(0.01)
        workers = descendants(proc.pid)
        stage = running_stage(next(out.glob("**/seed-1"), out))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while any(running(pid) for pid in workers) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        return workers, time.monotonic() - killed, stage
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left, so a failure leaves no process behind
            os.killpg(proc.pid, signal.SIGKILL)


def finish(args: list[str], out: Path) -> str:
    """Run `pmopt run ARGS` to the end; returns its stderr."""
    err = out.parent / f"{out.name}.err"
    proc = pmopt_process(args, out.parent / f"{out.name}.log", err)
    try:
        assert proc.wait(timeout=900) == 0, f"the run failed (exit {proc.returncode}); see {err}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return err.read_text()


def own_lines_only(err: str) -> None:
    """The console's stderr under `pmopt run --seeds`: the seeds' bars and third-party output go to their
    log.txt, so the parent's stderr holds nothing but pmopt's own notes (pmopt.console)."""
    foreign = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("pmopt")]
    assert not foreign, f"not pmopt's own lines on stderr: {foreign[:5]}"


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Path:
    """The reference: a two-seed run never stopped."""
    root = tmp_path_factory.mktemp("chaos_seeds")
    (root / "experiment.yaml").write_text(SEEDS_EXPERIMENT)
    out = root / "straight"
    err = finish(["run", str(root / "experiment.yaml"), *SEED_RUN, "--out", str(out)], out)
    assert err == "", f"a run never stopped printed this on stderr: {err[:500]}"
    return out


def assert_same_where_both(chaos: Path, straight: Path) -> int:
    """The files a sweep's value folder shares with a multi-seed run (its aggregate; the report is the sweep's)."""
    got, want = snapshot(chaos), snapshot(straight)
    assert got and set(got) <= set(want), sorted(set(got) - set(want))
    differ = [name for name in got if got[name] != want[name]]
    assert not differ, f"{chaos} differs from the uninterrupted run in {differ}"
    return len(got)


def assert_workers_ended(workers: set[int], outlived: float, out: Path) -> None:
    assert len(workers) >= 2, f"expected two seed workers below the parent, found {workers}"
    assert outlived < WORKER_GRACE, f"workers outlived their killed parent by {outlived:.1f} s"
    left = [p for p in out.rglob(LOCK_FILE) if p.parent != out]  # the parent's own lock stays (kill -9)
    assert not left, f"workers left their locks: {left}"
    stopped = [log for log in out.glob("**/seed-*/log.txt") if "its parent pmopt process" in log.read_text()]
    assert stopped, "no worker said in its log why it stopped"


def test_seed_workers_die_with_their_killed_parent_and_the_run_resumes(two_seeds, tmp_path):
    started = time.perf_counter()
    out = tmp_path / "run"
    args = ["run", str(two_seeds.parent / "experiment.yaml"), *SEED_RUN, "--out", str(out)]
    # both seeds are training their PMs (seed 1's proxy has written its first checkpoint)
    workers, outlived, stage = kill_parent_when(args, out, exists("seed-1", "pms", "proxy", "checkpoints",
                                                                  "checkpoint-4"))
    assert_workers_ended(workers, outlived, out)
    own_lines_only(finish(args, out))  # at once: no worker left holds a lock
    n_files = sum(assert_identical(out / f"seed-{k}", two_seeds / f"seed-{k}") for k in (0, 1))
    n_files += assert_identical(out, two_seeds)  # the aggregate over seeds
    print(f"\nchaos seeds: parent killed in seed 1's {stage}; {len(workers)} workers gone {outlived:.2f} s after it; "
          f"{n_files} files identical; {time.perf_counter() - started:.0f} s")


def test_sweep_workers_die_with_their_killed_parent_and_the_sweep_resumes(two_seeds, tmp_path):
    started = time.perf_counter()
    out = tmp_path / "sweep"
    args = ["run", str(two_seeds.parent / "experiment.yaml"), *SWEEP_RUN, "--out", str(out)]
    # a cell is in its probes stage, holding the probes folder's --out lock (the lock a newcomer's restarts hit)
    workers, outlived, stage = kill_parent_when(args, out, lambda o: any(o.glob(f"w_agree-3/seed-*/probes/{LOCK_FILE}")))
    assert_workers_ended(workers, outlived, out)
    own_lines_only(finish(args, out))
    n_files = sum(assert_identical(out / "w_agree-3" / f"seed-{k}", two_seeds / f"seed-{k}") for k in (0, 1))
    n_files += assert_same_where_both(out / "w_agree-3", two_seeds)  # the value's aggregate over seeds
    print(f"\nchaos sweep: parent killed in seed 1's {stage}; {len(workers)} workers gone {outlived:.2f} s after it; "
          f"{n_files} files identical; {time.perf_counter() - started:.0f} s")
