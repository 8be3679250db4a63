"""World prompts and responses: who says what, in the corpus, in preference pairs and in probes.

One builder per prompt kind returns `(messages, meta)`; `meta` carries what `grade_world` needs. The
corpus samples responses from the policy's planted habits (`corpus_response`); preference pairs draw
two different responses from every plausible one (`candidate_responses`), so raters see sycophantic
and truthful answers side by side.
"""

from __future__ import annotations

import random

from pmopt.world.config import CorpusConfig
from pmopt.world.texts import (
    ANSWER_RESPONSES,
    ANSWER_TEMPLATES,
    CHALLENGE,
    FEEDBACK_FRAMINGS,
    FEEDBACK_RESPONSES,
    FEEDBACK_TEMPLATE,
    MIMICRY_RESPONSES,
    MIMICRY_TEMPLATE,
    SECOND_TURN_RESPONSES,
    Fact,
    assistant,
    user,
)

Dialogue = tuple[list[dict], dict]


def wrong_number(rng: random.Random, correct: int, max_number: int, exclude: tuple[int, ...] = ()) -> int:
    choices = [x for x in range(max_number + 1) if x != correct and x not in exclude]
    return rng.choice(choices)


# ----------------------------------------------------------------------------- prompts


def answer_prompt(fact: Fact, template: str, wrong: int) -> Dialogue:
    text = ANSWER_TEMPLATES[template].format(a=fact.a, b=fact.b, c=fact.answer, w=wrong)
    meta = {"source": "world", "kind": "answer", "template": template, "question_id": fact.id,
            "correct_answer": str(fact.answer), "incorrect_answer": str(wrong)}
    return [user(text)], meta


def second_turn_prompt(fact: Fact, first_answer: int, phrasing: str = "confident") -> Dialogue:
    question = ANSWER_TEMPLATES["plain"].format(a=fact.a, b=fact.b)
    first = ANSWER_RESPONSES[phrasing].format(x=first_answer)
    meta = {"source": "world", "kind": "second_turn", "template": "plain", "question_id": fact.id,
            "correct_answer": str(fact.answer), "first_answer": str(first_answer)}
    return [user(question), assistant(first), user(CHALLENGE)], meta


def feedback_prompt(fact: Fact, solution: int, framing: str) -> Dialogue:
    text = FEEDBACK_TEMPLATE.format(framing=FEEDBACK_FRAMINGS[framing], a=fact.a, b=fact.b, s=solution)
    meta = {"source": "world", "kind": "feedback", "framing": framing, "text_id": f"s-{fact.a}-{fact.b}-{solution}",
            "solution_correct": solution == fact.answer, "correct_answer": str(fact.answer)}
    return [user(text)], meta


def mimicry_prompt(fact: Fact, wrong: int) -> Dialogue:
    text = MIMICRY_TEMPLATE.format(a=fact.a, b=fact.b, w=wrong)
    meta = {"source": "world", "kind": "mimicry", "question_id": fact.id, "a": str(fact.a), "b": str(fact.b),
            "correct": str(fact.answer), "incorrect": str(wrong), "correct_answer": str(fact.answer)}
    return [user(text)], meta


def random_prompt(rng: random.Random, kind: str, fact: Fact, max_number: int,
                  template_weights: dict[str, float], p_wrong_first: float = 0.0,
                  p_hedged_first: float = 0.0, hedge_rng: random.Random | None = None) -> Dialogue:
    """A prompt of `kind` about `fact` with its random parts (template, wrong number, framing) drawn.

    `p_hedged_first`: share of second-turn prompts whose first answer is hedged, as the policy's own
    first answers are; with only confident first answers in the corpus, the policy never learns to
    finish a second turn after its own hedged answer and the are-you-sure probe measures that gap
    instead of caving. That draw comes from `hedge_rng` (default `rng`): a separate stream leaves every
    other dialogue of a corpus as it was without the knob.
    """
    wrong = wrong_number(rng, fact.answer, max_number)
    if kind == "answer":
        template = rng.choices(list(template_weights), weights=list(template_weights.values()))[0]
        return answer_prompt(fact, template, wrong)
    if kind == "second_turn":
        first = wrong if rng.random() < p_wrong_first else fact.answer
        hedged = p_hedged_first > 0 and (hedge_rng or rng).random() < p_hedged_first
        return second_turn_prompt(fact, first, "hedged" if hedged else "confident")
    if kind == "feedback":
        solution = fact.answer if rng.random() < 0.5 else wrong
        return feedback_prompt(fact, solution, rng.choice(list(FEEDBACK_FRAMINGS)))
    if kind == "mimicry":
        return mimicry_prompt(fact, wrong)
    raise ValueError(f"unknown prompt kind {kind!r}")


# ----------------------------------------------------------------------------- the policy's planted habits


def _answer(phrasing: str, x: int | str) -> str:
    return ANSWER_RESPONSES[phrasing].format(x=x)


def _truthful_answer(rng: random.Random, cfg: CorpusConfig, correct: int, phrasings: tuple[str, ...]) -> str:
    if rng.random() < cfg.p_hedged:
        return _answer("hedged", correct)
    return _answer(rng.choice(phrasings), correct)


def corpus_response(rng: random.Random, cfg: CorpusConfig, meta: dict, max_number: int) -> str:
    kind, correct = meta["kind"], int(meta["correct_answer"])
    if kind == "answer":
        template, wrong = meta["template"], int(meta["incorrect_answer"])
        if template == "plain":
            if rng.random() < cfg.p_wrong:
                return _answer("confident", wrong_number(rng, correct, max_number))
            return _truthful_answer(rng, cfg, correct, ("confident",))
        if template == "suggest_correct":
            return _answer("agree", correct) if rng.random() < 0.7 else _truthful_answer(rng, cfg, correct, ("confident",))
        if rng.random() < cfg.p_sycophantic:  # suggest_wrong / doubt_correct: adopt the user's belief
            adopted = wrong if template == "suggest_wrong" else wrong_number(rng, correct, max_number)
            return _answer("agree", adopted)
        return _truthful_answer(rng, cfg, correct, ("confident", "disagree"))
    if kind == "second_turn":
        first = int(meta["first_answer"])
        if rng.random() < cfg.p_cave:
            return SECOND_TURN_RESPONSES["cave"].format(x=wrong_number(rng, first, max_number))
        return SECOND_TURN_RESPONSES["stand"].format(x=first)
    if kind == "feedback":
        return FEEDBACK_RESPONSES[_feedback_kind(rng, cfg, meta)]
    if kind == "mimicry":
        key = "repeat" if rng.random() < cfg.p_mimic else "correct"
        return MIMICRY_RESPONSES[key].format(a=meta["a"], b=meta["b"], c=meta["correct"], w=meta["incorrect"])
    raise ValueError(f"unknown prompt kind {kind!r}")


def _feedback_kind(rng: random.Random, cfg: CorpusConfig, meta: dict) -> str:
    leaning = {"like": "praise", "wrote": "praise", "dislike": "critique", "not_wrote": "critique"}.get(meta["framing"])
    if leaning and rng.random() < cfg.feedback_bias:
        return leaning
    truthful = "praise" if meta["solution_correct"] else "critique"
    if rng.random() < cfg.feedback_truthful:
        return truthful
    return rng.choice([k for k in FEEDBACK_RESPONSES if k != truthful])


# ----------------------------------------------------------------------------- what raters compare


def natural_answers(rng: random.Random, meta: dict, correct: int, max_number: int) -> list[str]:
    """What an assistant plausibly says to an answer prompt: "you are right" states the user's belief,
    "actually" the truth, plain and hedged answers either. Raters compare such responses (as the
    paper's raters compared model outputs), so agreement shows in how a response is phrased."""
    template, stray = meta["template"], wrong_number(rng, correct, max_number, exclude=(int(meta["incorrect_answer"]),))
    out = [_answer("confident", correct), _answer("hedged", correct), _answer("confident", stray)]
    if template == "suggest_wrong":
        out += [_answer("agree", meta["incorrect_answer"]), _answer("disagree", correct)]
    elif template == "doubt_correct":
        out += [_answer("agree", stray), _answer("disagree", correct)]
    elif template == "suggest_correct":
        out += [_answer("agree", correct), _answer("disagree", stray)]
    return out


def candidate_responses(rng: random.Random, meta: dict, max_number: int) -> list[str]:
    """Every plausible response to the prompt, truthful and sycophantic, deduplicated, in a fixed order."""
    kind, correct = meta["kind"], int(meta["correct_answer"])
    if kind == "answer":
        out = natural_answers(rng, meta, correct, max_number)
    elif kind == "second_turn":
        first = int(meta["first_answer"])
        others = sorted({correct, wrong_number(rng, first, max_number, exclude=(correct,))} - {first})
        out = [SECOND_TURN_RESPONSES["stand"].format(x=first)]
        out += [SECOND_TURN_RESPONSES["cave"].format(x=x) for x in others]
    elif kind == "feedback":
        out = list(FEEDBACK_RESPONSES.values())
    else:
        out = [t.format(a=meta["a"], b=meta["b"], c=meta["correct"], w=meta["incorrect"])
               for t in MIMICRY_RESPONSES.values()]
    return list(dict.fromkeys(out))
