"""What pmopt prints, in one place: the console policy every command follows.

- stdout carries pmopt's own lines: one line when a stage starts and one when it ends (with its time),
  results (tables, statistics) and the CLI's final `results in DIR` line.
- stderr carries progress: ONE tqdm bar per long step (pretraining, each PM's training, sampling, scoring
  with each PM, PPO steps), named by its work and carrying the metric that matters (loss, held-out
  accuracy, reward, KL). Trainer logs go to the run's metrics.jsonl, never to the console.
- third-party output (transformers / huggingface_hub / datasets logs and their "Loading weights" /
  "Writing model shards" / "Map" bars) is off unless `-v`; warnings raised by third-party code are still
  shown, so a deprecation that pmopt's own calls trigger is seen and fixed rather than hidden.

Levels: `quiet` (-q: only errors and the CLI's final line), `normal`, `verbose` (-v: plus third-party logs
and bars). Library callers that never call `configure` get `normal` pmopt output and untouched third-party
settings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

LEVELS = ("quiet", "normal", "verbose")
_level = "normal"


def configure(level: str) -> None:
    """Set the console level for pmopt's lines and bars and for the third-party libraries' output."""
    global _level
    if level not in LEVELS:
        raise ValueError(f"console level must be one of {LEVELS}, got {level!r}")
    _level = level
    _configure_third_party(verbose=level == "verbose")


def level() -> str:
    return _level


def _configure_third_party(verbose: bool) -> None:
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tf_logging

    if verbose:  # the libraries' own defaults: their warnings and bars (info logs would bury pmopt's lines)
        tf_logging.set_verbosity_warning()
        tf_logging.enable_progress_bar()
        hub_utils.enable_progress_bars()
        datasets.enable_progress_bars()
        datasets.logging.set_verbosity_warning()
    else:
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def info(message: str) -> None:
    """One of pmopt's own lines (progress of stages, results); hidden by -q."""
    if _level != "quiet":
        print(message, flush=True)


def result(message: str) -> None:
    """Output that is the command's answer (`pmopt config show`): printed at every level."""
    print(message, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """`name ...` when a stage starts and `name done in T s` when it ends: one line each."""
    info(f"{name} ...")
    start = time.perf_counter()
    yield
    info(f"{name} done in {time.perf_counter() - start:.1f} s")


@contextmanager
def logged_to(path) -> Iterator[None]:
    """Everything printed inside (pmopt's lines, bars, third-party output) appended to the file `path` instead
    of the console: one seed's or cell's output while the console gets one line for it."""
    with open(path, "a", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        yield


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
        position: int | None = None, initial: int = 0):
    """pmopt's progress bar (tqdm on stderr): one per long step, off under -q. Put the step's metric on it
    with `set_postfix`; it refreshes at most every 0.5 s, so it costs nothing next to a training step."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, position=position, file=sys.stderr, initial=initial,
                disable=_level == "quiet", mininterval=0.5, dynamic_ncols=True, leave=True)


def trainer_bar(desc: str, postfix: dict[str, str]):
    """A transformers `TrainerCallback` drawing one pmopt bar over a Trainer's steps, its postfix the logged
    metrics named in `postfix` (log key -> label). Use with `quiet_trainer`, which removes the Trainer's own
    printer (the `{'loss': ...}` dicts) and progress bars."""
    from transformers import TrainerCallback

    class TrainerBar(TrainerCallback):
        def __init__(self):
            self.bar = None
            self.shown: dict[str, str] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = bar(total=state.max_steps, desc=desc, unit="step")
                self.bar.update(state.global_step)  # a resumed run starts where it stopped

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            self.shown.update({label: f"{logs[key]:.3g}" for key, label in postfix.items()
                               if isinstance(logs.get(key), (int, float))})
            self.bar.set_postfix(self.shown, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainerBar()


def quiet_trainer(trainer, desc: str, postfix: dict[str, str]) -> None:
    """Replace a Trainer's console output (PrinterCallback's log dicts, ProgressCallback's bars) by one
    pmopt bar; the logs themselves still reach every other callback (pmopt's metrics.jsonl writers)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(trainer_bar(desc, postfix))


__all__ = ["configure", "level", "info", "result", "stage", "logged_to", "bar", "trainer_bar", "quiet_trainer"]
