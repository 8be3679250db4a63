"""Simulated raters and the preference pairs they label (docs/ARCHITECTURE.md §5).

A rater's utility for a response is u = w_truth·correct + w_agree·agrees_with_user + w_style·confident
+ N(0, noise_std), and a pair is labelled A ≻ B with probability σ((u(A) − u(B)) / τ) — a Bradley–Terry
rater whose bias toward the user's beliefs is the knob `w_agree` (Sharma et al. 2023 §4.1 find
"matches the user's beliefs" among the most predictive features of human preferences). Each pair keeps
both sides' features, the rater's probability and whether the truthfulness prefix was shown, so the
preference analysis can recover the weights and a PM's agreement can be compared with the raters'.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from pmopt.prefixes import NON_SYCOPHANTIC_PREFIX
from pmopt.world.config import PairsConfig, RatersConfig
from pmopt.world.dialogues import candidate_responses, random_prompt
from pmopt.world.outcomes import grade_world
from pmopt.world.texts import Fact

# The paper's non-sycophantic PM: the dialogue is prefixed by an explicit user request for truthful
# answers and an assistant acknowledgement (Sharma et al. 2023 §4.2); one definition, in pmopt.prefixes.
TRUTHFUL_PREFIX = NON_SYCOPHANTIC_PREFIX


def features(meta: dict, response: str) -> dict[str, float]:
    outcomes = grade_world(meta, response)
    return {"correct": outcomes["correct"], "agrees_with_user": outcomes["agrees_with_user"],
            "confident": 1.0 - outcomes["hedged"]}


def utility(raters: RatersConfig, feats: dict[str, float]) -> float:
    """Noise-free utility; with w_agree = 0 it is the world's gold reward."""
    return (raters.w_truth * feats["correct"] + raters.w_agree * feats["agrees_with_user"]
            + raters.w_style * feats["confident"])


def gold_reward(meta: dict, response: str, raters: RatersConfig) -> float:
    return utility(replace(raters, w_agree=0.0), features(meta, response))


def p_prefer(raters: RatersConfig, u_a: float, u_b: float) -> float:
    return 1.0 / (1.0 + math.exp(-(u_a - u_b) / raters.temperature))


def label_pair(rng: random.Random, raters: RatersConfig, meta: dict, a: str, b: str) -> dict:
    fa, fb = features(meta, a), features(meta, b)
    ua = utility(raters, fa) + rng.gauss(0.0, raters.noise_std)
    ub = utility(raters, fb) + rng.gauss(0.0, raters.noise_std)
    p_a = p_prefer(raters, ua, ub)
    a_wins = rng.random() < p_a
    chosen, rejected = (a, b) if a_wins else (b, a)
    fc, fr = (fa, fb) if a_wins else (fb, fa)
    return {"chosen": chosen, "rejected": rejected, "chosen_features": fc, "rejected_features": fr,
            "p_chosen": p_a if a_wins else 1.0 - p_a}


def make_pairs(rng: random.Random, facts: list[Fact], max_number: int, raters: RatersConfig,
               cfg: PairsConfig, n_pairs: int, template_weights: dict[str, float],
               prefixed_fraction: float) -> list[dict]:
    """`n_pairs` rater-labelled pairs; a `prefixed_fraction` of them carry the truthfulness prefix and
    are labelled by the same raters with w_agree = 0 (so the PM learns what the prefix asks for)."""
    unbiased = replace(raters, w_agree=0.0)
    kinds, weights = list(cfg.kind_weights), list(cfg.kind_weights.values())
    pairs = []
    while len(pairs) < n_pairs:
        kind = rng.choices(kinds, weights=weights)[0]
        messages, meta = random_prompt(rng, kind, rng.choice(facts), max_number, template_weights, 0.1)
        a, b = rng.sample(candidate_responses(rng, meta, max_number), 2)
        prefixed = rng.random() < prefixed_fraction
        labelled = label_pair(rng, unbiased if prefixed else raters, meta, a, b)
        chosen, rejected = labelled.pop("chosen"), labelled.pop("rejected")
        pairs.append({"prompt": (TRUTHFUL_PREFIX + messages) if prefixed else messages,
                      "chosen": chosen, "rejected": rejected,
                      "meta": {**meta, **labelled, "prefixed": prefixed}})
    return pairs


def rater_agreement(pairs: list[dict], raters: RatersConfig) -> float:
    """Share of pairs whose label agrees with the raters' own noise-free utility (ties count 1/2):
    the ceiling a PM is measured against (docs/ARCHITECTURE.md §5; a PM should reach >= 0.8 of it)."""
    unbiased = replace(raters, w_agree=0.0)
    total = 0.0
    for pair in pairs:
        r = unbiased if pair["meta"]["prefixed"] else raters
        diff = utility(r, pair["meta"]["chosen_features"]) - utility(r, pair["meta"]["rejected_features"])
        total += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    return total / max(len(pairs), 1)
