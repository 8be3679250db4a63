"""Data sources that know the truth about their own records (docs/ARCHITECTURE.md §5).

A prompt record may name its source in `meta.source`. A registered `Source` of that name then supplies,
through this one interface, what only it can know:

- `grade(meta, response, first_response=None)`: exact outcomes of a response (floats, booleans as
  0/1), used by the probes instead of a judge;
- `check_meta(probe, meta, error)`: the metadata its grader needs, checked when records are loaded;
- once opened at a location (`Source.open(path)`, e.g. a synthetic-world directory): named rewards
  without a model (`reward(kind)`, e.g. the gold reward of Gao et al. 2022) and generated training
  prompts (`training_prompts`), and supervised examples whose user opinion is independent of the
  truth (`opinion_examples`, Wei et al. 2023).

Probes, PMs, best-of-N and RL see sources only through this module, so none of them imports a
particular source: the synthetic world (`pmopt.world.source`) is one plug-in among any others. Sources
are found by name in this registry, which `register` fills in-process and the `pmopt.sources`
entry-point group fills for installed packages (pmopt's own world is registered that way in
`pyproject.toml`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from pmopt.io import PmoptError

ENTRY_POINT_GROUP = "pmopt.sources"
# pmopt's own sources, as its entry points declare them: loaded from here too when the package runs
# without installed metadata (a checkout on PYTHONPATH), so world records never fall through to a judge.
BUILTIN = {"world": "pmopt.world.source:WORLD"}

RewardFn = Callable[[Sequence[dict], Sequence[str]], list[float]]


class Source(ABC):
    """One data source: its name (the records' `meta.source`) and what it knows about its records."""

    name: str = ""

    @abstractmethod
    def grade(self, meta: dict, response: str, first_response: str | None = None) -> dict[str, float]:
        """Exact outcomes of `response` to the record described by `meta`; with `first_response`, of a
        second turn that answers a challenge to that first response.

        The keys are the probes' outcome names: `correct` and `agrees_with_user` for every record,
        `sycophantic` and `hedged`; `answer_given` and `admits_mistake` for answers (the are-you-sure
        probe reads them), `positivity` (-1, 0, +1) for feedback, `repeats_premise` and `corrects` for
        mimicry."""

    def check_meta(self, probe: str, meta: dict, error) -> None:
        """Raise error('meta.<field>', ...) when the metadata `grade` needs for `probe` is missing."""
        return None

    def recognizes(self, path: Path) -> bool:
        """True when `path` is a location this source can open."""
        return False

    def open(self, path: str | Path) -> OpenSource:
        raise PmoptError(f"{path}: source '{self.name}' has no location to open")


class OpenSource(ABC):
    """A source at one location: named rewards and generated training prompts."""

    source: Source
    path: Path

    def reward_kinds(self) -> tuple[str, ...]:
        return ()

    def reward(self, kind: str) -> RewardFn:
        """`fn(metas, responses) -> scores` of this source's own records (NaN for others' records)."""
        raise PmoptError(f"{self.path}: source '{self.source.name}' has no reward '{kind}' "
                         f"(it has: {', '.join(self.reward_kinds()) or 'none'})")

    def training_prompts(self, n: int, seed: int, exclude_probe_prompts: bool = True, **options) -> list[dict]:
        raise PmoptError(f"{self.path}: source '{self.source.name}' does not generate training prompts "
                         "(give prompts.file)")

    def opinion_examples(self, n: int, seed: int, templates: list[str] | None = None,
                         question_ids: set[str] | None = None) -> list[dict]:
        """`n` supervised records `{id, prompt, completion, meta}` in which the user's stated opinion is right
        or wrong at random, independently of the truth, and the completion is the truthful answer (Wei et
        al. 2023's synthetic intervention data); no probe prompt among them. `question_ids` restricts the
        questions (ids of `plain_questions`)."""
        raise PmoptError(f"{self.path}: source '{self.source.name}' does not generate opinion examples")

    def plain_questions(self) -> list[dict]:
        """Each of its questions asked with no opinion, as answer-probe records `{id, prompt, meta}`."""
        raise PmoptError(f"{self.path}: source '{self.source.name}' has no plain questions")

    def probe_dir(self) -> Path:
        """Where its probe sets are (`<probe>.jsonl`)."""
        return self.path / "probes"


_SOURCES: dict[str, Source] = {}
_entry_points_loaded = False


def register(source: Source) -> Source:
    """Add a source; its name must be unique (the same object may be registered twice)."""
    if not source.name:
        raise ValueError(f"{type(source).__name__}: a source needs a name")
    if source.name in _SOURCES and _SOURCES[source.name] is not source:
        raise ValueError(f"a source named '{source.name}' is already registered")
    _SOURCES[source.name] = source
    return source


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in _SOURCES:
            register(point.load())
    for name, target in BUILTIN.items():
        if name not in _SOURCES:
            module, _, attribute = target.partition(":")
            register(getattr(importlib.import_module(module), attribute))


def registered() -> dict[str, Source]:
    _load_entry_points()
    return dict(_SOURCES)


def get(name: str) -> Source:
    sources = registered()
    if name not in sources:
        raise PmoptError(f"unknown source '{name}' (known: {', '.join(sorted(sources)) or 'none'})")
    return sources[name]


def of_record(meta: dict) -> Source | None:
    """The registered source that grades this record exactly, or None (graded by a judge instead)."""
    name = meta.get("source")
    if not isinstance(name, str):
        return None
    _load_entry_points()  # once; this runs for every graded sample, so no copy of the registry here
    return _SOURCES.get(name)


def open_path(path: str | Path, what: str = "source") -> OpenSource:
    """The source at `path` (e.g. a synthetic-world directory); `what` names the config field in errors."""
    path = Path(path)
    for source in registered().values():
        if source.recognizes(path):
            return source.open(path)
    names = ", ".join(sorted(registered())) or "none registered"
    raise PmoptError(f"{what}: {path} is not a source directory (known sources: {names}; a synthetic world "
                     "is built with `pmopt world`)")


def is_source_dir(path: str | Path) -> bool:
    return any(source.recognizes(Path(path)) for source in registered().values())


__all__ = ["Source", "OpenSource", "RewardFn", "register", "registered", "get", "of_record", "open_path",
           "is_source_dir", "ENTRY_POINT_GROUP"]
