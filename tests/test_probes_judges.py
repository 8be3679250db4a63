"""The LM judge and log-likelihood scoring against brute force on a tiny random causal LM."""

from __future__ import annotations

import pytest
import torch

from pmopt.io import PmoptError
from pmopt.probes import judges
from pmopt.probes.judges import (
    AdmitQuery,
    CorrectnessQuery,
    LMJudge,
    PositivityQuery,
    continuation_logprobs,
    grade_batched,
    option_logprobs,
)
from pmopt.text import encode, render_prompt
from pmopt.world.models import save_tiny_causal_lm, tiny_llama_config, word_tokenizer

TEXTS = [judges.CORRECTNESS_PROMPT, judges.ADMIT_PROMPT, judges.POSITIVITY_PROMPT, judges.POSITIVITY_PREFILL,
         "User: Assistant: A B y n CORRECT INCORRECT Answer: what is the capital of france ? paris lyon "
         "the poem is lovely . it is dull . i apologize , you are right . yes i am sure"]


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import AutoModelForCausalLM

    tokenizer = word_tokenizer(TEXTS, split_punctuation=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(tokenizer, max_position_embeddings=512)).eval()
    return model, tokenizer


def brute_logprob(model, tokenizer, context: str, continuation: str) -> float:
    ctx, cont = encode(tokenizer, context), encode(tokenizer, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(ctx) + k - 1, tok].item() for k, tok in enumerate(cont))


def test_continuation_logprobs_batched_equals_one_by_one(tiny_lm):
    model, tok = tiny_lm
    contexts = ["what is the capital of france ?", "the poem", "what is", "it is dull . the poem is lovely ."]
    conts = [" paris", " is lovely .", " the capital of france ? paris", " yes"]
    batched = continuation_logprobs(model, tok, contexts, conts, batch_size=3)
    for got, ctx, cont in zip(batched, contexts, conts, strict=True):
        assert got == pytest.approx(brute_logprob(model, tok, ctx, cont), abs=1e-4)


def test_option_logprobs_join_and_prefill(tiny_lm):
    model, tok = tiny_lm
    question = [{"role": "user", "content": "what is the capital of france ?"}]
    prefilled = question + [{"role": "assistant", "content": "the"}]
    (plain,), (pre,) = (option_logprobs(model, tok, [p], [["paris", "lyon"]]) for p in (question, prefilled))
    text = render_prompt(question, tok)  # ends with "Assistant:"; the reply is joined with one space
    assert plain == pytest.approx([brute_logprob(model, tok, text, " paris"), brute_logprob(model, tok, text, " lyon")],
                                  abs=1e-4)
    text = render_prompt(prefilled, tok)  # ends with the prefill; the option continues it verbatim
    assert pre == pytest.approx([brute_logprob(model, tok, text, " paris"), brute_logprob(model, tok, text, " lyon")],
                                abs=1e-4)


def test_lm_judge_verdicts_are_the_argmax_option(tiny_lm):
    model, tok = tiny_lm
    judge = LMJudge(model, tok, batch_size=2)
    queries = [CorrectnessQuery("what is the capital of france ?", r, ("paris",)) for r in ("paris", "lyon", "it is")]
    for query, verdict in zip(queries, judge.correct(queries), strict=True):
        text = render_prompt([{"role": "user", "content": judges.CORRECTNESS_PROMPT.format(
            question=query.question, response=query.response, answer="paris")}], tok)
        yes, no = (brute_logprob(model, tok, text, f" {o}") for o in ("CORRECT", "INCORRECT"))
        assert verdict == (1.0 if yes > no else 0.0)
    admit = AdmitQuery("what is", "paris", "are you sure ?", "i apologize , you are right .")
    (verdict,) = judge.admits_mistake([admit])
    text = render_prompt([{"role": "user", "content": judges.ADMIT_PROMPT.format(
        question=admit.question, first=admit.first, challenge=admit.challenge, second=admit.second)},
        {"role": "assistant", "content": "Answer:"}], tok)
    y, n = brute_logprob(model, tok, text, " y"), brute_logprob(model, tok, text, " n")
    assert verdict == (1.0 if y > n else 0.0)


def test_positivity_averages_both_orders(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    judge = LMJudge(model, tok)
    # a judge that always answers "A" has a pure position bias: both orders cancel it to 1/2
    monkeypatch.setattr(judge, "choose", lambda prompts, options: [[1.0, 0.0] for _ in prompts])
    assert judge.more_positive([PositivityQuery("a poem", "it is lovely .", "it is dull .")]) == [0.5]
    # a judge that prefers "it is lovely" whichever slot it is in
    def prefers_lovely(prompts, options):
        return [[1.0, 0.0] if 'Comment (A): "it is lovely' in p[0]["content"] else [0.0, 1.0] for p in prompts]

    monkeypatch.setattr(judge, "choose", prefers_lovely)
    assert judge.more_positive([PositivityQuery("a poem", "it is lovely .", "it is dull ."),
                                PositivityQuery("a poem", "it is dull .", "it is lovely .")]) == [1.0, 0.0]
    monkeypatch.undo()
    (value,) = judge.more_positive([PositivityQuery("a poem", "it is lovely .", "it is dull .")])
    assert value in (0.0, 0.5, 1.0)


class CountingJudge:
    name, batched = "counting", True

    def __init__(self):
        self.calls = []

    def correct(self, queries):
        self.calls.append(list(queries))
        return [float(len(q.response) % 2) for q in queries]

    def admits_mistake(self, queries):
        return [0.0 for _ in queries]

    def more_positive(self, queries):
        return [0.5 for _ in queries]


def test_grade_batched_asks_once_and_matches_unbatched():
    responses = ["a", "bb", "a", "ccc"]
    calls = [lambda j, r=r: {"c": j.correct([CorrectnessQuery("q", r, ("x",))])[0]} for r in responses]
    judge = CountingJudge()
    batched = grade_batched(calls, judge)
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 3  # one batch of the unique queries
    judge.batched = False
    assert batched == [call(judge) for call in calls] == [{"c": 1.0}, {"c": 0.0}, {"c": 1.0}, {"c": 1.0}]


def test_lm_judge_directory_without_tokenizer(tmp_path, tiny_lm):
    _, tok = tiny_lm
    save_tiny_causal_lm(tmp_path / "judge", tok)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "judge" / name).unlink(missing_ok=True)
    with pytest.raises(PmoptError, match="no tokenizer"):
        LMJudge.load(str(tmp_path / "judge"))
