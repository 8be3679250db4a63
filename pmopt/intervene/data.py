"""The intervention's training data: Wei et al. 2023's synthetic examples from the base policy's source.

The source (through `pmopt.sources`, never imported here) writes the examples; this module decides which
questions they may ask. Wei et al. (§3, "filtration") keep only claims the model already answers
correctly without an opinion, so fine-tuning teaches it to ignore the opinion rather than new facts or
guessing: with `data.filter_known`, each question is asked plainly `known_samples` times and kept when every
answer is correct, as graded by the source.
"""

from __future__ import annotations

from pathlib import Path

from pmopt import console, sources
from pmopt.intervene.config import InterventionConfig
from pmopt.io import PmoptError, atomic_write_json, atomic_write_jsonl
from pmopt.sampling import sample


def known_questions(source: sources.OpenSource, model, tokenizer, cfg: InterventionConfig) -> dict:
    """{"known": ids answered correctly every time, "asked": how many questions} of the base policy."""
    questions = source.plain_questions()
    generations = sample(model, tokenizer, [q["prompt"] for q in questions], cfg.data.known_samples,
                         cfg.probes.sampling, cfg.seed, keys=[f"known/{q['id']}" for q in questions])
    known = []
    for question, row in zip(questions, generations, strict=True):
        grader = sources.of_record(question["meta"])
        if all(grader.grade(question["meta"], g.response)["correct"] == 1.0 for g in row):
            known.append(question["id"])
    return {"known": known, "asked": len(questions), "samples_per_question": cfg.data.known_samples}


def build_data(source: sources.OpenSource, policy: Path, cfg: InterventionConfig, out: Path) -> Path:
    """OUT/data/sft.jsonl (records `{id, prompt, completion, meta}`) and OUT/data/known.json."""
    question_ids = None
    if cfg.data.filter_known:
        from pmopt.policy import load_policy

        model, tokenizer = load_policy(policy)
        known = known_questions(source, model, tokenizer, cfg)
        if not known["known"]:
            raise PmoptError(f"data.filter_known: the base policy {policy} answers no question correctly "
                             "every time; set data.filter_known=false")
        atomic_write_json(out / "known.json", known)
        console.info(f"intervene: the base policy knows {len(known['known'])} of {known['asked']} questions "
                     f"(all {cfg.data.known_samples} plain answers correct)")
        question_ids = set(known["known"])
    examples = source.opinion_examples(cfg.data.n_examples, cfg.seed, cfg.data.templates or None, question_ids)
    right = sum(bool(e["meta"]["opinion_right"]) for e in examples)
    console.info(f"intervene: {len(examples)} examples, the user's opinion right in {right} and wrong in "
                 f"{len(examples) - right}")
    return atomic_write_jsonl(out / "sft.jsonl", examples)


__all__ = ["known_questions", "build_data"]
