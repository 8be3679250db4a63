"""The world's probe prompt sets (docs/ARCHITECTURE.md §4 prompt records), one JSONL file per probe."""

from __future__ import annotations

import random

from pmopt.world.config import ProbeSetsConfig
from pmopt.world.dialogues import answer_prompt, feedback_prompt, mimicry_prompt, wrong_number
from pmopt.world.texts import ANSWER_TEMPLATES, CHALLENGE, FEEDBACK_FRAMINGS, Fact


def _pick(rng: random.Random, facts: list[Fact], n: int) -> list[Fact]:
    """n facts, without repeats until every fact has been used once."""
    out: list[Fact] = []
    while len(out) < n:
        out += rng.sample(facts, min(len(facts), n - len(out)))
    return out


def _record(probe: str, rid: str, messages: list[dict], meta: dict) -> dict:
    return {"id": f"{probe}/{rid}", "probe": probe, "prompt": messages, "meta": meta}


def answer_set(rng, facts, max_number, n) -> list[dict]:
    out = []
    for q, fact in enumerate(_pick(rng, facts, n)):
        wrong = wrong_number(rng, fact.answer, max_number)
        for template in ANSWER_TEMPLATES:
            messages, meta = answer_prompt(fact, template, wrong)
            out.append(_record("answer", f"{q:04d}-{fact.id}/{template}", messages, meta))
    return out


def are_you_sure_set(rng, facts, max_number, n) -> list[dict]:
    out = []
    for q, fact in enumerate(_pick(rng, facts, n)):
        messages, meta = answer_prompt(fact, "plain", wrong_number(rng, fact.answer, max_number))
        out.append(_record("are_you_sure", f"{q:04d}-{fact.id}", messages, {**meta, "challenge": CHALLENGE}))
    return out


def feedback_set(rng, facts, max_number, n) -> list[dict]:
    out = []
    for q, fact in enumerate(_pick(rng, facts, n)):
        solution = fact.answer if q % 2 == 0 else wrong_number(rng, fact.answer, max_number)
        for framing in FEEDBACK_FRAMINGS:
            messages, meta = feedback_prompt(fact, solution, framing)
            out.append(_record("feedback", f"{q:04d}-{meta['text_id']}/{framing or 'base'}", messages, meta))
    return out


def mimicry_set(rng, facts, max_number, n) -> list[dict]:
    out = []
    for q, fact in enumerate(_pick(rng, facts, n)):
        messages, meta = mimicry_prompt(fact, wrong_number(rng, fact.answer, max_number))
        out.append(_record("mimicry", f"{q:04d}-{fact.id}", messages, meta))
    return out


def truthfulness_set(rng, facts, max_number, n) -> list[dict]:
    out = []
    for q, fact in enumerate(_pick(rng, facts, n)):
        messages, meta = answer_prompt(fact, "plain", wrong_number(rng, fact.answer, max_number))
        out.append(_record("truthfulness", f"{q:04d}-{fact.id}", messages, meta))
    return out


def build_probe_sets(rng: random.Random, facts: list[Fact], max_number: int, cfg: ProbeSetsConfig) -> dict:
    return {
        "answer": answer_set(rng, facts, max_number, cfg.n_questions),
        "are_you_sure": are_you_sure_set(rng, facts, max_number, cfg.n_are_you_sure),
        "feedback": feedback_set(rng, facts, max_number, cfg.n_feedback_texts),
        "mimicry": mimicry_set(rng, facts, max_number, cfg.n_mimicry),
        "truthfulness": truthfulness_set(rng, facts, max_number, cfg.n_truthfulness),
    }


def sycophancy_choices(operand_max: int) -> dict[str, list]:
    """Every suggest_wrong prompt the world can pose (each fact with each wrong number: 200 on the tiny world,
    1,800 on the default one) with its sycophantic and its truthful answer, for measuring how often a PM
    prefers the first (Sharma et al. 2023 §4.1's "PM prefers sycophantic over baseline truthful responses").

    Returns {"prompts", "sycophantic", "truthful", "clusters"}: a fact's prompts share a cluster (its id),
    so intervals resample facts, not prompts that differ only in the wrong number."""
    from pmopt.world.texts import ANSWER_RESPONSES, all_facts

    out: dict[str, list] = {"prompts": [], "sycophantic": [], "truthful": [], "clusters": []}
    for fact in all_facts(operand_max):
        for wrong in range(2 * operand_max + 1):
            if wrong == fact.answer:
                continue
            messages, _ = answer_prompt(fact, "suggest_wrong", wrong)
            out["prompts"].append(messages)
            out["sycophantic"].append(ANSWER_RESPONSES["agree"].format(x=wrong))
            out["truthful"].append(ANSWER_RESPONSES["disagree"].format(x=fact.answer))
            out["clusters"].append(fact.id)
    return out
