"""Run directories, validated JSONL, atomic writes and manifests (docs/ARCHITECTURE.md §9).

Every file pmopt writes goes through `atomic_write_*`: the bytes land in a temporary file in the same
directory, are fsynced, then renamed over the target, so a killed process never leaves a half-written
file behind, and a disk that fills up mid-write leaves the previous file as it was. Every JSONL read
goes through `read_jsonl`, whose errors name the file, the line and the field (bad JSON, bytes that are
not UTF-8, a truncated gzip stream). Every command's output directory goes through `prepare_out_dir`,
which refuses a path that is a file or not writable and locks the directory (`OutDirLock`) so that two
processes never write one `--out`.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import errno
import fcntl
import gzip
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class PmoptError(Exception):
    """An error caused by the user's input: shown as one line, exit code 2, no traceback."""


class RecordError(PmoptError):
    """A bad record: names the file, the line and the field."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = f"{self.path}:{line}" if line is not None else self.path
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


# ----------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary sibling of `path`; on clean exit fsync and rename it over `path`."""
    path = Path(path)
    binary = "b" in mode
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_error(path, exc) from None
        raise


# errno -> what it means for the user. A full disk (ENOSPC) or quota (EDQUOT) can surface at write(),
# at fsync() (delayed allocation) or at close(); each leaves the target untouched and the temp removed.
WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_error(path: Path, exc: OSError) -> Exception:
    """A one-line PmoptError for a failed write (other OS errors are not the user's input: re-raised)."""
    reason = WRITE_ERRNOS.get(exc.errno)
    if reason is None:
        return exc
    kept = "the previous file is intact" if path.exists() else "nothing was written"
    return PmoptError(f"{path}: could not write: {reason} ({errno.errorcode[exc.errno]}); {kept}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, default=_json_default) + "\n")
    return Path(path)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one line (metrics logs). A torn last line is skipped on read by `read_metrics`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
            handle.flush()
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise write_error(path, exc) from None
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- JSONL reading

Validator = Callable[[dict, Callable[[str | None, str], RecordError]], None]


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file (gzip when the name ends in .gz; a leading BOM is dropped).

    Lines are decoded one at a time, so bytes that are not UTF-8 are an error naming their line, and a
    truncated or corrupt gzip stream is an error naming the line it broke off at.
    """
    number = 0
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                yield number, decode_line(path, number, raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise RecordError(path, number + 1, None, f"truncated or corrupt gzip file ({exc})") from None


def decode_line(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(path, number, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte "
                                              f"{exc.start + 1} of the line)") from None


def read_json_file(path: str | os.PathLike) -> Any:
    """A whole JSON file; malformed JSON or bytes that are not UTF-8 are one-line errors naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PmoptError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def iter_jsonl(path: str | os.PathLike, validate: Validator | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record); blank lines are skipped; gzip is read when the name ends in .gz.

    `validate(record, error)` may raise `error(field, message)` to reject a record.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, None, "file not found")
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(path, number, None, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise RecordError(path, number, None, f"expected a JSON object, got {type(record).__name__}")
        if validate is not None:
            validate(record, lambda field, msg, _n=number: RecordError(path, _n, field, msg))
        yield number, record


def read_jsonl(path: str | os.PathLike, validate: Validator | None = None) -> list[dict]:
    """Read and validate a whole JSONL file before anything uses it (errors before heavy work)."""
    return [record for _, record in iter_jsonl(path, validate)]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read an append-only metrics log, tolerating a torn final line from a killed process."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def require_fields(record: dict, error, fields: dict[str, type | tuple[type, ...]]) -> None:
    """Raise `error(field, ...)` for the first missing or mistyped field."""
    for field, kind in fields.items():
        if field not in record:
            raise error(field, "missing")
        if not isinstance(record[field], kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise error(field, f"expected {names}, got {type(record[field]).__name__}")


# ----------------------------------------------------------------------------- run directories


def default_out_dir(command: str, root: str | os.PathLike = "checkpoints") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{command}-{stamp}"


def agreed_out_dir(out: str | os.PathLike | None, command: str, process_state=None) -> Path:
    """`--out`, or checkpoints/<command>-<time> chosen by rank 0 and sent to every process of a
    distributed launch (each process would otherwise stamp its own time). `process_state` is a zero-argument
    callable giving the command's accelerate state; it is called only when `--out` is not given."""
    if out is not None:
        return Path(out)
    chosen = [str(default_out_dir(command))]
    if process_state is not None and process_state().num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def prepare_out_dir(out: str | os.PathLike | None, command: str) -> Path:
    """Create and lock a command's output directory; call it before any heavy work.

    `--out` that is a file, or cannot be created or written, is a one-line error. The lock is held until
    `release_out_dirs()` (the CLI calls it when the command ends, however it ends) or process exit.
    Under a distributed launch only rank 0 locks: every rank of one job shares its `--out`.
    """
    path = Path(out) if out is not None else default_out_dir(command)
    created = make_out_dir(path)
    if _distributed_rank() != 0:
        return path
    lock = OutDirLock(path, created=created)
    try:
        lock.acquire()
    except BaseException:
        lock.remove_created_dirs()
        raise
    return path


def make_out_dir(path: Path) -> Path | None:
    """mkdir -p `path`; returns the top-most directory this call created (None if `path` existed)."""
    if path.exists() and not path.is_dir():
        raise PmoptError(f"--out {path}: exists and is not a directory")
    top = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        top = candidate
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PmoptError(f"--out {path}: a parent of it is a file, not a directory") from None
    except OSError as exc:
        raise PmoptError(f"--out {path}: cannot create the directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PmoptError(f"--out {path}: the directory is not writable")
    return top


def _distributed_rank() -> int:
    """This process's global rank under torchrun / accelerate launch (0 when not distributed)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


LOCK_FILE = ".pmopt.lock"
_HELD_LOCKS: list[OutDirLock] = []  # every OutDirLock this process holds, oldest first (release_out_dirs)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing), waiting while another process holds it. The kernel
    releases it when its holder dies, so a killed process never leaves it held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class OutDirLock:
    """An exclusive lock on an output directory: one pmopt process writes a given `--out` at a time.

    The lock is flock(2) on OUT/.pmopt.lock. The kernel drops it when its holder exits however it exits
    (kill -9 included), so a lock file left by a dead process is stale: the next process takes it over
    and says whose it was. The file records the holder (pid, host, start time, command) for the error a
    second process gets. Where the file system has no flock, a lock file counts as held unless its pid
    is on this host and not running. The file is removed on release.
    """

    def __init__(self, directory: str | os.PathLike, created: Path | None = None):
        self.directory, self.created = Path(directory), created
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutDirLock:
        # A holder may remove the file between our open() and flock(); we would then hold a lock on an
        # unlinked inode, so check that the path still names our file and otherwise try again.
        for _ in range(5):
            fd = self._open()
            if not self._lock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise PmoptError(f"{self.directory}: in use by another pmopt process ({describe_holder(holder)}); "
                                 f"{how_to_stop(holder)}wait for it to finish, or use another --out")
            if _names_same_file(fd, self.path):
                self._take(fd)
                return self
            os.close(fd)
        raise PmoptError(f"{self.path}: the lock file kept changing under us; try again")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self in _HELD_LOCKS:
            _HELD_LOCKS.remove(self)
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can take the old inode for ours
        finally:
            os.close(fd)  # closing the last descriptor drops the flock
        self.remove_created_dirs()

    def remove_created_dirs(self) -> None:
        """Remove the directories `prepare_out_dir` created, if they are still empty (a failed command
        leaves no empty --out behind)."""
        if self.created is None:
            return
        for directory in (self.directory, *self.directory.parents):
            try:
                directory.rmdir()
            except OSError:
                return
            if directory == self.created:
                return

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PmoptError(f"--out {self.directory}: cannot create its lock file: {exc.strerror}") from None

    def _lock(self, fd: int) -> bool:
        """True if we got the lock; False if a live process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # no flock on this file system: fall back to the holder's pid
            holder = _read_holder(fd)
            return holder is None or not holder_alive(holder)

    def _take(self, fd: int) -> None:
        stale = _read_holder(fd)
        if stale is not None and stale.get("pid") != os.getpid():
            print(f"pmopt: {self.directory}: taking over a stale lock ({describe_holder(stale)}; not running)",
                  file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now().isoformat(timespec="seconds"), "command": command_line()}
        if _worker_of is not None:
            info["worker_of"] = _worker_of
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        _HELD_LOCKS.append(self)


def _read_holder(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    if not raw.strip():
        return None
    try:
        holder = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return {"pid": None, "host": None, "started": None}
    return holder if isinstance(holder, dict) else {"pid": None, "host": None, "started": None}


def _names_same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def holder_alive(holder: dict) -> bool:
    """Whether a lock's holder may still run: a pid on another host cannot be checked, so it counts."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def describe_holder(holder: dict | None) -> str:
    """Who holds a lock: pid, host, start, and the command it runs (a worker: whose worker it is)."""
    if not holder:
        return "holder unknown"
    text = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    if holder.get("command"):
        text += f": `{holder['command']}`"
    parent = holder.get("worker_of")
    if isinstance(parent, int):
        alive = holder_alive({**holder, "pid": parent})
        text += f", a worker of pid {parent}{'' if alive else ', which has exited'}"
    return text


def how_to_stop(holder: dict | None) -> str:
    """'stop it with `kill PID`, or ' for a holder on this host (a worker's live parent: kill the parent, whose
    workers end with it, pmopt.workers); '' where it cannot be told."""
    if (not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int)
            or holder["pid"] == os.getpid()):
        return ""
    pid, parent = holder["pid"], holder.get("worker_of")
    if isinstance(parent, int) and holder_alive({**holder, "pid": parent}):
        return f"stop it with `kill {parent}` (its parent; a rerun resumes), or "
    return f"stop it with `kill {pid}` (a rerun resumes), or "


def command_line() -> str:
    """This process's command line as a person typed it (the program's name without its path), for lock files."""
    argv = [os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]] if sys.argv else ["python"]
    return shlex.join(argv)[:300]


_worker_of: int | None = None  # the parent pid, in a worker process of a pmopt command (pmopt.workers)


def set_worker_of(parent_pid: int | None) -> None:
    """Mark this process as a worker of pmopt process `parent_pid`: its locks say so, and whom to stop."""
    global _worker_of
    _worker_of = parent_pid


def release_out_dirs() -> None:
    """Release every output-directory lock this process holds (newest first): those `prepare_out_dir` took and
    those held with `with OutDirLock(...)`, so a worker that must exit at once (pmopt.workers) leaves none."""
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().release()


atexit.register(release_out_dirs)


def git_hash() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def cpu_model() -> str:
    """The CPU's model: its name plus the family / model / stepping numbers (results move with float round-off,
    which differs between CPU models). The numbers matter because virtual machines often report a bare name
    ("AMD EPYC") for several generations of one line, each with its own vector units."""
    import platform

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not key and fields:
                break  # the first processor's block is enough
            fields.setdefault(key, value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    numbers = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"),
                                                            ("stepping", "stepping")) if fields.get(key)]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def environment() -> dict[str, Any]:
    """What a run's numbers depend on besides its config: CPU model, thread counts, versions, python."""
    import platform

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pmopt", "torch", "transformers", "trl", "accelerate", "peft", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


MANIFEST_LOCK = ".manifest.lock"  # held while a shared manifest is re-read and marked


class Manifest:
    """`manifest.json` of a run: versions, seeds, git hash and the status of each stage.

    A stage is marked done only after its outputs are complete, so a resumed run skips exactly the
    stages whose files can be trusted.

    `shared=True` is for a manifest that other processes mark at the same time (a cluster's array tasks,
    one per cell, each marking its cell done): every mark then re-reads the file under an exclusive lock and
    changes only its own stage, so no process writes back another's mark as it was before.
    """

    def __init__(self, run_dir: str | os.PathLike, shared: bool = False):
        self.path = Path(run_dir) / "manifest.json"
        self.shared = shared
        if self.path.exists():
            self.data = self._read()
        else:
            self.data = {"created": _dt.datetime.now().isoformat(timespec="seconds"),
                         "git": git_hash(), "versions": package_versions(), "environment": environment(),
                         "stages": {}}

    def is_done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def _read(self) -> dict:
        data = read_json_file(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise PmoptError(f"{self.path}: not a pmopt manifest (expected an object with 'stages')")
        return data

    def mark(self, stage: str, status: str, **info: Any) -> None:
        if not self.shared:
            self._mark(stage, status, info)
            return
        with exclusive_lock(self.path.with_name(MANIFEST_LOCK)):
            if self.path.exists():
                self.data["stages"] = self._read()["stages"]
            self._mark(stage, status, info)

    def _mark(self, stage: str, status: str, info: dict) -> None:
        entry = self.data["stages"].setdefault(stage, {})
        entry.update(status=status, time=_dt.datetime.now().isoformat(timespec="seconds"), **info)
        self.save()

    def run_stage(self, stage: str, label: str, work: Callable[[], Any]) -> float | None:
        """`work()` as `stage`, unless it is done: marked running, then done with its seconds once `work`
        returns (a killed stage stays running and runs again); `label` names it on the console ("run: stage
        pms"). Returns the seconds, or None when the stage was done earlier and skipped."""
        from pmopt import console

        if self.is_done(stage):
            console.info(f"{label}: done earlier, skipped")
            return None
        start = time.perf_counter()
        self.mark(stage, "running")
        with console.stage(label):
            work()
        seconds = round(time.perf_counter() - start, 1)
        self.mark(stage, "done", seconds=seconds)
        return seconds

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
