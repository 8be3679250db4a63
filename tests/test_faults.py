"""Faults: unreadable input files, a full disk during a write, unusable --out, two processes on one --out."""

from __future__ import annotations

import errno
import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pmopt.io as pio
from pmopt.io import (
    LOCK_FILE,
    OutDirLock,
    PmoptError,
    RecordError,
    atomic_write_json,
    atomic_write_jsonl,
    prepare_out_dir,
    read_jsonl,
    release_out_dirs,
)

REPO = Path(__file__).resolve().parents[1]
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


def jsonl_bytes(n: int) -> bytes:
    return b"".join(json.dumps({**PAIR, "i": i}).encode() + b"\n" for i in range(n))


# ----------------------------------------------------------------------------- reading


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl_bytes(2) + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(RecordError, match=r"pairs\.jsonl:3: not UTF-8 text \(byte 0xe9"):
        read_jsonl(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(2))
    assert [r["i"] for r in read_jsonl(path)] == [0, 1]


def test_truncated_gzip_names_file_and_line(tmp_path):
    whole = gzip.compress(jsonl_bytes(2000))
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecordError, match=r"pairs\.jsonl\.gz:\d+: truncated or corrupt gzip") as info:
        read_jsonl(path)
    assert 1 < info.value.line <= 2000  # the lines before the break were read


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(jsonl_bytes(3))
    with pytest.raises(RecordError, match=r"pairs\.jsonl\.gz:1: truncated or corrupt gzip"):
        read_jsonl(path)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_during_write_keeps_previous_file(tmp_path, monkeypatch, code):
    path = tmp_path / "scores.jsonl"
    atomic_write_jsonl(path, [{"a": 1}])
    real_fdopen = os.fdopen

    class FillsUp:
        """A file whose second write hits a full disk (the first lands in the page cache)."""

        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, text):
            self.writes += 1
            if self.writes == 2:
                raise OSError(code, os.strerror(code))
            return self.handle.write(text)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(pio.os, "fdopen", lambda *a, **k: FillsUp(real_fdopen(*a, **k)))
    with pytest.raises(PmoptError, match=rf"scores\.jsonl: could not write: .*\({errno.errorcode[code]}\); "
                                         "the previous file is intact"):
        atomic_write_jsonl(path, [{"a": 2}, {"a": 3}])
    assert read_jsonl(path) == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]  # the temp file is gone


def test_disk_full_at_fsync(tmp_path, monkeypatch):
    """Delayed allocation reports ENOSPC at fsync; a first write then leaves nothing behind."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pio.os, "fsync", fsync)
    with pytest.raises(PmoptError, match=r"new\.json: could not write: the disk is full \(ENOSPC\); "
                                         "nothing was written"):
        atomic_write_json(tmp_path / "new.json", {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(pio.os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        atomic_write_json(tmp_path / "new.json", {"x": 1})
    assert not isinstance(info.value, PmoptError) and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- --out


def test_out_that_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    with pytest.raises(PmoptError, match=r"--out .*taken: exists and is not a directory"):
        prepare_out_dir(target, "score")
    with pytest.raises(PmoptError, match=r"--out .*taken/sub: a parent of it is a file"):
        prepare_out_dir(target / "sub", "score")
    assert target.read_text() == "mine"


def test_out_that_cannot_be_created(tmp_path, monkeypatch):
    def mkdir(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(PmoptError, match=r"--out .*new: cannot create the directory: Permission denied"):
        prepare_out_dir(tmp_path / "new", "score")


def test_out_without_write_permission(tmp_path, monkeypatch):
    monkeypatch.setattr(pio.os, "access", lambda path, mode: False)
    with pytest.raises(PmoptError, match=r"--out .*ro: the directory is not writable"):
        prepare_out_dir(tmp_path / "ro", "score")


# ----------------------------------------------------------------------------- the --out lock

HOLDER = textwrap.dedent("""
    import sys, time
    from pmopt.io import prepare_out_dir
    prepare_out_dir(sys.argv[1], "test")
    print("locked", flush=True)
    time.sleep(60)
""")


def start_holder(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_on_same_out_is_refused(tmp_path, capsys):
    from pmopt.cli import main

    out = tmp_path / "run"
    holder = start_holder(out)
    try:
        with pytest.raises(PmoptError, match=rf"in use by another pmopt process \(pid {holder.pid} on "
                                             rf"{socket.gethostname()}, started 20"):
            OutDirLock(out).acquire()
        (tmp_path / "records.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
        code = main(["score", "--pm", str(tmp_path), "--input", str(tmp_path / "records.jsonl"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {holder.pid}" in err and "Traceback" not in err
        assert (out / LOCK_FILE).is_file()  # the holder's lock is untouched
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the lock file stays, the kernel's lock does not; the next process takes over
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    with OutDirLock(out) as lock:
        assert lock.held and json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over a stale lock" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists()


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}
    (out / LOCK_FILE).write_text(json.dumps(stale))
    assert prepare_out_dir(out, "test") == out
    assert f"taking over a stale lock (pid {dead.pid} on" in capsys.readouterr().err
    release_out_dirs()
    assert list(out.iterdir()) == []


def test_pid_fallback_without_flock(tmp_path, monkeypatch):
    """On a file system without flock, a lock file counts as held unless its pid (on this host) is gone."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(pio.fcntl, "flock", no_flock)
    alive = {"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}
    (out / LOCK_FILE).write_text(json.dumps(alive))
    with pytest.raises(PmoptError, match=f"pid {os.getppid()}"):
        OutDirLock(out).acquire()
    elsewhere = {**alive, "host": "another-host"}  # cannot be checked from here: counts as held
    (out / LOCK_FILE).write_text(json.dumps(elsewhere))
    with pytest.raises(PmoptError, match="another-host"):
        OutDirLock(out).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({**alive, "pid": dead.pid}))
    lock = OutDirLock(out).acquire()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_released_on_error_and_created_dirs_removed(tmp_path, capsys):
    from pmopt.cli import main

    out = tmp_path / "a" / "b"
    (tmp_path / "records.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    code = main(["score", "--pm", str(tmp_path / "no-pm"), "--input", str(tmp_path / "records.jsonl"),
                 "--out", str(out)])
    assert code == 2 and "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    code = main(["report", str(tmp_path), "--out", str(out)])  # after the lock is taken: no curves
    assert code == 2 and "no curves to report" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not pio._HELD_LOCKS


def test_secondary_ranks_do_not_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert prepare_out_dir(tmp_path / "out", "test") == tmp_path / "out"
    assert not (tmp_path / "out" / LOCK_FILE).exists() and not pio._HELD_LOCKS


def test_lock_is_exclusive_within_one_process(tmp_path):
    first = OutDirLock(tmp_path).acquire()
    try:
        with pytest.raises(PmoptError, match=f"pid {os.getpid()}"):
            OutDirLock(tmp_path).acquire()
    finally:
        first.release()
    started = time.perf_counter()
    with OutDirLock(tmp_path):
        pass
    assert time.perf_counter() - started < 1.0


def test_disk_full_while_score_writes_keeps_previous_scores(tiny_pm, tmp_path, monkeypatch, capsys):
    """End to end: `pmopt score` over a previous result on a disk that fills up at fsync."""
    from pmopt.cli import main

    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"prompt": "question apple ?", "response": "good dog"}) + "\n")
    out = tmp_path / "scores"
    assert main(["score", "--pm", str(tiny_pm), "--input", str(records), "--out", str(out)]) == 0
    previous = (out / "scores.jsonl").read_bytes()

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pio.os, "fsync", fsync)
    capsys.readouterr()
    assert main(["score", "--pm", str(tiny_pm), "--input", str(records), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "scores.jsonl: could not write: the disk is full (ENOSPC); the previous file is intact" in err
    assert "Traceback" not in err
    assert (out / "scores.jsonl").read_bytes() == previous
    assert sorted(p.name for p in out.iterdir()) == ["scores.jsonl"]  # no temp file, no lock file


# ----------------------------------------------------------------------------- writes pmopt does not make itself


def test_disk_full_in_a_library_write_is_one_line(monkeypatch, capsys, tmp_path):
    """A full disk inside save_pretrained / torch.save reaches the CLI as an OSError: one line, exit 2."""
    import pmopt.pm.score as score_module
    from pmopt.cli import main

    target = tmp_path / "pm" / "model.safetensors"

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(score_module, "score_command", full)
    assert main(["score", "--pm", "pm", "--input", "records.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{target}: could not write: the disk is full (ENOSPC); the files and checkpoints written before it " \
           "are intact" in err


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
    RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                 'device" })'),
])
def test_disk_full_wrapped_by_torch_or_safetensors_is_one_line(monkeypatch, capsys, error):
    """torch.save and safetensors report a full disk in their own exceptions: still one line, exit 2."""
    import pmopt.pm.score as score_module
    from pmopt.cli import main

    def full(args):
        raise error

    monkeypatch.setattr(score_module, "score_command", full)
    assert main(["score", "--pm", "pm", "--input", "records.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "the disk is full (ENOSPC)" in err, err


def test_other_library_errors_are_not_disguised(monkeypatch):
    import pmopt.pm.score as score_module
    from pmopt.cli import main

    def broken(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(score_module, "score_command", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        main(["score", "--pm", "pm", "--input", "records.jsonl"])


# ----------------------------------------------------------------------------- the fault hook and resume points


def test_fault_kill_mode_is_a_real_sigkill():
    code = "from pmopt.faults import fault_point\nfault_point('x')\nprint('first', flush=True)\nfault_point('x')\nprint('second')"
    env = {**os.environ, "PMOPT_FAULT": "x:2:kill", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == -9 and result.stdout == "first\n"


def test_incomplete_trainer_checkpoint_is_skipped(tmp_path):
    """Trainer writes a checkpoint in place, trainer_state.json last: a folder killed mid-save is not resumed."""
    from pmopt.pm.train import latest_trainer_checkpoint

    for step, state in ((4, "{}"), (8, None), (12, '{"global_st')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert latest_trainer_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
    assert latest_trainer_checkpoint(tmp_path / "none") is None


def test_training_loss_is_the_whole_runs():
    """pmopt_pm.json's train_loss comes from the logged losses (restored on resume), weighted by window."""
    from pmopt.pm.train import logged_training_loss

    history = [{"loss": 1.0, "step": 4}, {"eval_loss": 9.0, "step": 4}, {"loss": 0.5, "step": 12},
               {"train_loss": 7.0, "step": 12}]
    assert logged_training_loss(history, 7.0) == pytest.approx((4 * 1.0 + 8 * 0.5) / 12)
    assert logged_training_loss([], 7.0) == 7.0
