"""Worker processes of a multi-seed run or a sweep (`pmopt.workers`): they print as their parent does, they end
when their parent is killed (SIGKILL: no cleanup in the parent), releasing their `--out` locks, and a lock a
live worker still holds names the command it belongs to and how to stop it.

The parent-death tests run a real parent process whose spawned worker takes a real `--out` lock, then
`kill -9` the parent; once through Linux's parent-death signal alone, once through the portable poll alone.
tests/test_chaos.py kills real `pmopt run --seeds` and sweep parents mid-stage and resumes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pmopt import console, workers
from pmopt.io import LOCK_FILE, OutDirLock, PmoptError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def normal_console():
    yield
    console.configure("normal")


def library_warning() -> None:
    """In a worker: the warning transformers' Trainer logs when it sorts checkpoints written within a second
    (`transformers.trainer_utils.sort_checkpoints`), which a newcomer saw on a multi-seed run's console. Its
    logger, not the Trainer: importing torch would triple the test's time."""
    from transformers.utils import logging

    logging.get_logger("transformers.trainer_utils").warning_once(
        "mtime may not be reliable on this filesystem, falling back to numerical ordering")


@pytest.mark.parametrize("level", ["normal", "verbose"])
def test_workers_print_like_their_parent(level, capfd):
    console.configure(level)
    with workers.pool(1) as pool:
        pool.submit(library_warning).result()
    err = capfd.readouterr().err
    if level == "normal":
        assert err == ""  # the library's warning stays off the console, as in the parent
    else:
        assert "mtime may not be reliable on this filesystem" in err  # -v shows the libraries' output


PARENT = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pmopt import workers
    from pmopt.io import prepare_out_dir


    def hold_a_lock(out):
        prepare_out_dir(out, "test")
        print("locked", os.getpid(), flush=True)
        time.sleep(120)  # a stage's work, for longer than the test waits


    def start_with(way, parent_pid, level):
        if way == "prctl":  # the parent-death signal alone: the poll would wake too late
            workers.POLL_SECONDS = 3600
        elif way == "poll":  # as on a system without prctl: the poll alone
            workers.parent_death_signal = lambda signum: False
        workers.start_worker(parent_pid, level)


    if __name__ == "__main__":
        pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=start_with,
                                   initargs=(sys.argv[2], os.getpid(), "normal"))
        pool.submit(hold_a_lock, sys.argv[1])
        time.sleep(120)
""")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def seconds_until_gone(pid: int, limit: float) -> float:
    start = time.monotonic()
    while alive(pid) and time.monotonic() - start < limit:
        time.sleep(0.05)
    return time.monotonic() - start


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing of it is left
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["prctl", "poll", "kill-worker"])
def test_a_worker_ends_with_its_killed_parent_and_releases_its_lock(how, tmp_path):
    """kill-worker: `kill PID` of the worker itself (what a lock's error suggests) also releases its lock."""
    script, out = tmp_path / "parent.py", tmp_path / "out"
    script.write_text(PARENT)
    out.mkdir()  # a run's folder, as a seed's probes folder is: it stays when the lock goes
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    with open(tmp_path / "stderr.txt", "w") as err:
        parent = subprocess.Popen([sys.executable, str(script), str(out), how], stdout=subprocess.PIPE, stderr=err,
                                  text=True, env=env, start_new_session=True)
        try:
            word, worker = parent.stdout.readline().split()
            assert word == "locked" and json.loads((out / LOCK_FILE).read_text())["worker_of"] == parent.pid
            if how == "kill-worker":
                os.kill(int(worker), signal.SIGTERM)
            else:
                parent.send_signal(signal.SIGKILL)
                parent.wait()
            waited = seconds_until_gone(int(worker), limit=10)
        finally:
            kill_group(parent.pid)  # anything left of it, whatever the test found
    assert waited < 5.0, f"the worker outlived its parent by {waited:.1f} s"
    assert not (out / LOCK_FILE).exists()  # released (removed), not left for the next run to take over
    why = "SIGTERM" if how == "kill-worker" else f"its parent pmopt process {parent.pid} has exited"
    assert (f"pmopt: worker {worker}: stopping ({why}); rerun the command to resume"
            in (tmp_path / "stderr.txt").read_text())
    OutDirLock(out).acquire().release()


HOLDER = textwrap.dedent("""
    import sys, time
    from pmopt.io import prepare_out_dir, set_worker_of
    out, parent = sys.argv[1], int(sys.argv[2])
    set_worker_of(parent)
    sys.argv = ["/venv/bin/pmopt", "run", "configs/experiments/tiny.yaml", "--seeds", "0,1"]  # as the worker has it
    prepare_out_dir(out, "test")
    print("locked", flush=True)
    time.sleep(60)
""")


def start_holder(out: Path, worker_of: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(worker_of)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


@pytest.mark.parametrize("parent", ["exited", "running"])
def test_a_lock_held_by_a_live_worker_names_its_command_and_how_to_stop_it(parent, tmp_path):
    out = tmp_path / "seed-1" / "probes"
    parent_pid = dead_pid() if parent == "exited" else os.getpid()
    holder = start_holder(out, parent_pid)
    try:
        with pytest.raises(PmoptError) as caught:
            OutDirLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert message.startswith(f"{out}: in use by another pmopt process (pid {holder.pid} on {socket.gethostname()}, "
                              "started 20")
    assert "`pmopt run configs/experiments/tiny.yaml --seeds 0,1`" in message
    if parent == "exited":
        assert f"a worker of pid {parent_pid}, which has exited); stop it with `kill {holder.pid}`" in message
    else:  # stopping the parent stops its workers
        assert f"a worker of pid {parent_pid}); stop it with `kill {parent_pid}` (its parent" in message
    assert message.endswith("or wait for it to finish, or use another --out")


def test_release_out_dirs_releases_locks_held_with_a_with_block_too(tmp_path):
    """What a worker releases before it exits: every lock it holds, however it took it."""
    from pmopt.io import _HELD_LOCKS, prepare_out_dir, release_out_dirs

    cell, stage = tmp_path / "seed-0", tmp_path / "seed-0" / "probes"
    cell.mkdir()
    with OutDirLock(cell):
        prepare_out_dir(stage, "probe")
        assert (cell / LOCK_FILE).exists() and (stage / LOCK_FILE).exists()
        release_out_dirs()
        assert not (cell / LOCK_FILE).exists() and not (stage / LOCK_FILE).exists() and not _HELD_LOCKS
    with OutDirLock(cell) as lock:  # leaving the block releases it and forgets it
        assert list(_HELD_LOCKS) == [lock]
    assert not _HELD_LOCKS
