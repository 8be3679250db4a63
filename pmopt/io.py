"""Run directories, validated JSONL, atomic writes and manifests (DESIGN §9).

Every file pmopt writes goes through `atomic_write_*`: the bytes land in a temporary file in the same
directory, are fsynced, then renamed over the target, so a killed process never leaves a half-written
file behind. Every JSONL read goes through `read_jsonl`, whose errors name the file, the line and the
field.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import subprocess
import tempfile
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
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=_json_default) + "\n")
        handle.flush()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- JSONL reading

Validator = Callable[[dict, Callable[[str | None, str], RecordError]], None]


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | os.PathLike, validate: Validator | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record); blank lines are skipped; gzip is read when the name ends in .gz.

    `validate(record, error)` may raise `error(field, message)` to reject a record.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, None, "file not found")
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
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
    for line in path.read_text(encoding="utf-8").splitlines():
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


def prepare_out_dir(out: str | os.PathLike | None, command: str) -> Path:
    path = Path(out) if out is not None else default_out_dir(command)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """The CPU's model name (results move with float round-off, which differs between CPU models)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


class Manifest:
    """`manifest.json` of a run: versions, seeds, git hash and the status of each stage.

    A stage is marked done only after its outputs are complete, so a resumed run skips exactly the
    stages whose files can be trusted.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / "manifest.json"
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
        else:
            self.data = {"created": _dt.datetime.now().isoformat(timespec="seconds"),
                         "git": git_hash(), "versions": package_versions(), "environment": environment(),
                         "stages": {}}

    def is_done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def mark(self, stage: str, status: str, **info: Any) -> None:
        entry = self.data["stages"].setdefault(stage, {})
        entry.update(status=status, time=_dt.datetime.now().isoformat(timespec="seconds"), **info)
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
