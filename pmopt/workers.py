"""Worker processes of one pmopt command (a `--seeds` run's seeds, a sweep's cells): started like their parent,
and ended with it.

`pool(n)` is a spawn-context `ProcessPoolExecutor` whose workers, before their first task:

- print as the parent does (`console.configure` with the parent's level): without it a worker keeps the
  libraries' default logging, and their warnings reach the terminal past the worker's log file;
- mark their `--out` locks as a worker's (`pmopt.io.set_worker_of`), so a second command that meets one says
  whose worker holds it and how to stop it;
- end when the parent ends, however it ends (`kill -9` included). A worker left behind would keep working
  for nobody, then wait forever for the next task, holding its `--out` locks so that every rerun of the
  command fails. On the parent's death the worker releases its locks and exits at once (`os._exit`): what it
  leaves is what a `kill -9` leaves, which every stage resumes from (docs/ARCHITECTURE.md §9).

Two ways to notice the death, whichever comes first:

- Linux's parent-death signal (prctl(2) `PR_SET_PDEATHSIG`): the kernel sends a signal the moment the parent
  dies; a real-time one that nothing else sends, so that the worker knows why it stops (the kernel may send it
  before the worker's parent pid changes). It fires when the *thread* that started the worker ends, so the
  pool must be used from a thread that outlives it: `ProcessPoolExecutor` (spawn context, Python >= 3.9)
  starts its workers in `submit`, in the caller's thread, and `multiseed.run_cells` submits every cell up
  front and waits in the same thread.
- everywhere: a daemon thread polls `os.getppid()` every `POLL_SECONDS`; an orphan is re-parented (to init or
  a subreaper), so its parent pid changes.

SIGTERM (`kill PID`, or the pool ending a broken worker) also releases the locks before the worker exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from pmopt import console
from pmopt.io import release_out_dirs, set_worker_of

POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# the parent-death signal: a real-time signal above those glibc keeps for itself (Python's SIGRTMIN is past them)
PARENT_DIED = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else None
EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
_ending = threading.Lock()


def pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes that print like this one and die with it."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=start_worker,
                               initargs=(os.getpid(), console.level()))


def start_worker(parent_pid: int, level: str) -> None:
    """A pool worker's start-up (runs in its main thread, before its first task)."""
    console.configure(level)
    set_worker_of(parent_pid)
    watch_parent(parent_pid)


def watch_parent(parent_pid: int) -> None:
    """End this process (`stop`) when process `parent_pid`, its parent now, ends. Call from the main thread."""
    orphaned = f"its parent pmopt process {parent_pid} has exited"
    signal.signal(signal.SIGTERM, lambda signum, frame: stop("SIGTERM"))
    if PARENT_DIED is not None:
        signal.signal(PARENT_DIED, lambda signum, frame: stop(orphaned))
        parent_death_signal(PARENT_DIED)
    if os.getppid() != parent_pid:  # it died before the signal was armed
        stop(orphaned)
    threading.Thread(target=_poll_parent, args=(parent_pid, orphaned), name="pmopt-parent-watch",
                     daemon=True).start()


def parent_death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` to this process when its parent (thread) dies; False where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid: int, why: str) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    stop(why)


def stop(why: str) -> None:
    """Release this worker's `--out` locks and exit now, saying why in the worker's log (its stderr)."""
    if not _ending.acquire(blocking=False):  # the signal and the poller both came: one of them ends it
        return
    with contextlib.suppress(OSError, ValueError):  # a closed or full log: the exit matters more than the line
        print(f"pmopt: worker {os.getpid()}: stopping ({why}); rerun the command to resume", file=sys.stderr,
              flush=True)
    release_out_dirs()
    os._exit(EXIT_CODE)


__all__ = ["pool", "start_worker", "watch_parent", "parent_death_signal", "stop", "POLL_SECONDS"]
