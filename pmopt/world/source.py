"""The synthetic world as a data source (docs/ARCHITECTURE.md §5): the one door through which the rest of
pmopt reaches it.

Registered under the `pmopt.sources` entry point (pyproject.toml), so probes, best-of-N and RL find it by
the records' `meta.source == "world"` or by a world directory's path, without importing this package:

- `grade`: the exact outcomes of `pmopt.world.outcomes` (no judge);
- `open(WORLD_DIR).reward("gold")`: the raters' utility with w_agree = 0 (Gao et al. 2022's gold RM);
  `reward("raters")`: their utility with their own bias, the ideal proxy a PM trained on their labels
  converges to (an oracle PM);
- `open(WORLD_DIR).training_prompts(...)`: prompts from the world's own generator, probe prompts left out;
  `opinion_examples(...)`: Wei et al. 2023's synthetic fine-tuning data (`pmopt.world.intervention`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pmopt.config import load_config
from pmopt.io import PmoptError, read_jsonl
from pmopt.records import validate_prompt
from pmopt.sources import OpenSource, RewardFn, Source
from pmopt.world.config import WorldConfig
from pmopt.world.outcomes import extract_answer, grade_world

NAME = "world"
# Attempts per requested prompt before the generator is declared unable to supply enough prompts that
# are not probe prompts (a tiny world with few facts).
_PROMPT_ATTEMPTS_PER_PROMPT = 50
# A second-turn training prompt starts from a wrong first answer this often.
_P_WRONG_FIRST = 0.5


class WorldSource(Source):
    name = NAME

    def grade(self, meta: dict, response: str, first_response: str | None = None) -> dict[str, float]:
        if first_response is not None:
            # a second turn is graded against the first answer (`first_answer` in the meta)
            meta = {**meta, "first_answer": extract_answer(first_response) or ""}
        return grade_world(meta, response)

    def check_meta(self, probe: str, meta: dict, error) -> None:
        if probe == "feedback" and not isinstance(meta.get("solution_correct"), bool):
            raise error("meta.solution_correct", "expected true or false (world feedback)")

    def recognizes(self, path: Path) -> bool:
        return (Path(path) / "config.yaml").is_file()

    def open(self, path: str | Path) -> OpenWorld:
        return OpenWorld(self, Path(path))


class OpenWorld(OpenSource):
    """A built world directory: its config (the raters), probe sets and generator."""

    def __init__(self, source: WorldSource, path: Path):
        config_file = path / "config.yaml"
        if not config_file.is_file():
            raise PmoptError(f"{path} is not a world directory (no config.yaml; build one with `pmopt world`)")
        self.source, self.path = source, path
        self.config = load_config(WorldConfig, config_file)

    def reward_kinds(self) -> tuple[str, ...]:
        return ("gold", "raters")

    def reward(self, kind: str) -> RewardFn:
        from pmopt.world.raters import features, utility

        if kind not in self.reward_kinds():
            return super().reward(kind)
        raters = self.config.raters if kind == "raters" else replace(self.config.raters, w_agree=0.0)

        def score(metas: Sequence[dict], responses: Sequence[str]) -> list[float]:
            return [utility(raters, features(m, r)) if m.get("source") == NAME else math.nan
                    for m, r in zip(metas, responses, strict=True)]

        return score

    def training_prompts(self, n: int, seed: int, exclude_probe_prompts: bool = True,
                         kinds: dict[str, float] | None = None,
                         templates: dict[str, float] | None = None) -> list[dict]:
        """`n` prompt records `{id, prompt, meta}` from the world's generator; with
        `exclude_probe_prompts`, prompts whose messages are a probe prompt's are skipped."""
        from pmopt.world.dialogues import random_prompt
        from pmopt.world.texts import ANSWER_TEMPLATES, all_facts

        kinds = kinds or {"answer": 1.0}
        exclude = self.probe_prompt_keys() if exclude_probe_prompts else set()
        unknown = sorted(set(templates or {}) - set(ANSWER_TEMPLATES))
        if unknown:
            raise PmoptError(f"prompts.templates: unknown {unknown} (known: {', '.join(ANSWER_TEMPLATES)})")
        facts, max_number = all_facts(self.config.facts.operand_max), 2 * self.config.facts.operand_max
        names, weights = list(kinds), list(kinds.values())
        rng, records = random.Random(seed), []
        for _ in range(n * _PROMPT_ATTEMPTS_PER_PROMPT):
            kind = rng.choices(names, weights=weights)[0]
            try:
                messages, meta = random_prompt(rng, kind, rng.choice(facts), max_number,
                                               templates or self.config.corpus.template_weights, _P_WRONG_FIRST)
            except ValueError as exc:
                raise PmoptError(f"prompts.kinds: {exc}") from None
            if prompt_key(messages) in exclude:
                continue
            records.append({"id": f"train/{len(records):05d}", "prompt": messages, "meta": meta})
            if len(records) == n:
                return records
        raise PmoptError(f"prompts.world: could not draw {n} prompts outside the probe sets from {self.path}")

    def opinion_examples(self, n: int, seed: int, templates: list[str] | None = None,
                         question_ids: set[str] | None = None) -> list[dict]:
        from pmopt.world.intervention import OPINION_TEMPLATES, opinion_examples

        try:
            return opinion_examples(self.config.facts.operand_max, n, seed, templates or list(OPINION_TEMPLATES),
                                    self.probe_prompt_keys(), question_ids, prompt_key)
        except ValueError as exc:
            raise PmoptError(f"data: {exc}") from None

    def plain_questions(self) -> list[dict]:
        from pmopt.world.intervention import plain_questions

        return plain_questions(self.config.facts.operand_max)

    def probe_prompt_keys(self) -> set[str]:
        keys = set()
        for path in sorted(self.probe_dir().glob("*.jsonl")):
            keys.update(prompt_key(r["prompt"]) for r in read_jsonl(path, validate_prompt))
        return keys


def prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True)


WORLD = WorldSource()

__all__ = ["WorldSource", "OpenWorld", "WORLD", "prompt_key"]
