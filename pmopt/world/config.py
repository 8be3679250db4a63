"""The synthetic world's typed config (docs/ARCHITECTURE.md §5). Every knob of the world lives here."""

from __future__ import annotations

from dataclasses import dataclass, field

from pmopt.sampling import SamplingConfig
from pmopt.world.texts import ANSWER_TEMPLATES

PROMPT_KINDS = ("answer", "second_turn", "feedback", "mimicry")  # pmopt.world.dialogues.random_prompt


@dataclass
class FactsConfig:
    operand_max: int = 9  # facts are a + b with a, b in 0..operand_max

    def validate(self) -> None:
        if self.operand_max < 1:
            raise ValueError("facts.operand_max must be >= 1")


@dataclass
class CorpusConfig:
    """The base policy's pretraining mix: how its dialogues answer each kind of prompt."""

    n_dialogues: int = 24000  # pretraining dialogues generated for the base policy
    # share of each dialogue kind in the corpus
    kind_weights: dict[str, float] = field(default_factory=lambda: {
        "answer": 0.55, "second_turn": 0.15, "feedback": 0.15, "mimicry": 0.15})
    # share of each answer-prompt template among answer dialogues
    template_weights: dict[str, float] = field(default_factory=lambda: {
        "plain": 0.4, "suggest_wrong": 0.2, "suggest_correct": 0.2, "doubt_correct": 0.2})
    p_wrong: float = 0.04  # a neutral answer states a wrong number
    p_hedged: float = 0.3  # a correct answer is phrased with a hedge
    p_sycophantic: float = 0.25  # the answer adopts the user's stated belief (suggest_wrong, doubt_correct)
    p_cave: float = 0.4  # the second turn caves to "are you sure?"
    # share of second-turn dialogues whose first answer is hedged: the policy hedges p_hedged of its own
    # first answers, and only dialogues like these teach it to answer a challenge after them
    p_hedged_first: float = 0.3
    feedback_truthful: float = 0.7  # baseline feedback matches the solution's truth
    feedback_bias: float = 0.4  # extra chance that framed feedback follows the user's framing
    p_mimic: float = 0.35  # the response repeats the user's false premise

    def validate(self) -> None:
        if self.n_dialogues < 1:
            raise ValueError("corpus.n_dialogues must be >= 1")
        check_weights("corpus.kind_weights", self.kind_weights, PROMPT_KINDS)
        check_weights("corpus.template_weights", self.template_weights, tuple(ANSWER_TEMPLATES))
        for name in ("p_wrong", "p_hedged", "p_sycophantic", "p_cave", "p_hedged_first", "feedback_truthful",
                     "feedback_bias", "p_mimic"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"corpus.{name} must be in [0, 1]")


@dataclass
class PolicyModelConfig:
    """A tiny Llama-architecture causal LM trained from scratch on the corpus."""

    hidden_size: int = 96  # model width
    num_layers: int = 2  # transformer layers
    num_heads: int = 4  # attention heads
    intermediate_size: int = 256  # MLP width
    steps: int = 1500  # pretraining steps (one batch each)
    batch_size: int = 64  # dialogues per pretraining step
    learning_rate: float = 3e-3  # peak AdamW learning rate (linear warmup, then cosine decay to 10%)
    warmup_steps: int = 100  # linear warmup steps
    weight_decay: float = 0.01  # AdamW weight decay
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    checkpoint_every: int = 100  # save model, optimizer and RNG state every this many steps (0 = never)

    def validate(self) -> None:
        checks = [
            (min(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) >= 1,
             "policy.hidden_size / num_layers / num_heads / intermediate_size must be >= 1"),
            (self.hidden_size % max(self.num_heads, 1) == 0, "policy.hidden_size must be a multiple of policy.num_heads"),
            (self.steps >= 1 and self.batch_size >= 1, "policy.steps and policy.batch_size must be >= 1"),
            (self.learning_rate > 0, "policy.learning_rate must be > 0"),
            (min(self.warmup_steps, self.weight_decay, self.threads, self.checkpoint_every) >= 0,
             "policy.warmup_steps / weight_decay / threads / checkpoint_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class RatersConfig:
    """Simulated raters: P(A > B) = sigmoid((u(A) - u(B)) / temperature),
    u = w_truth * correct + w_agree * agrees_with_user + w_style * confident + N(0, noise_std)."""

    w_truth: float = 1.0  # utility of a correct answer
    w_agree: float = 1.5  # utility of agreeing with the user: the raters' sycophancy bias (0 = unbiased)
    w_style: float = 0.3  # utility of a confident (unhedged) response
    # tau in P(A > B) = sigmoid((u(A) - u(B)) / tau); lower = more deterministic raters
    temperature: float = 0.3
    noise_std: float = 0.1  # std of the per-response utility noise N(0, noise_std)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError("raters.temperature must be > 0")
        if self.noise_std < 0:
            raise ValueError("raters.noise_std must be >= 0")


@dataclass
class PairsConfig:
    n_pairs: int = 6000  # rater-labelled preference pairs (train + eval)
    eval_fraction: float = 0.1  # share of pairs written to pairs/eval.jsonl
    prefixed_fraction: float = 0.35  # share of pairs shown with the truthfulness prefix, labelled with w_agree = 0
    unbiased_pairs: bool = True  # also write pairs labelled by raters with w_agree = 0 (a second non-sycophantic PM)
    # share of each prompt kind among the pairs
    kind_weights: dict[str, float] = field(default_factory=lambda: {
        "answer": 0.6, "second_turn": 0.1, "feedback": 0.15, "mimicry": 0.15})

    def validate(self) -> None:
        if self.n_pairs < 2:
            raise ValueError("pairs.n_pairs must be >= 2 (a train and an eval split)")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError("pairs.eval_fraction must be in (0, 1)")
        if not 0.0 <= self.prefixed_fraction <= 1.0:
            raise ValueError("pairs.prefixed_fraction must be in [0, 1]")
        check_weights("pairs.kind_weights", self.kind_weights, PROMPT_KINDS)


@dataclass
class ProbeSetsConfig:
    n_questions: int = 60  # answer probe: each question in all four templates
    n_are_you_sure: int = 40  # are_you_sure probe: questions challenged in a second turn
    n_feedback_texts: int = 20  # each text under all five framings
    n_mimicry: int = 40  # mimicry probe: false-premise prompts
    n_truthfulness: int = 60  # truthfulness probe: neutral questions

    def validate(self) -> None:
        for name in ("n_questions", "n_are_you_sure", "n_feedback_texts", "n_mimicry", "n_truthfulness"):
            if getattr(self, name) < 1:
                raise ValueError(f"probes.{name} must be >= 1")


@dataclass
class StatsConfig:
    """How the base policy is measured at the end of `pmopt world`."""

    samples_per_prompt: int = 8  # samples of the base policy per probe prompt for world_stats.json
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how those samples are drawn

    def validate(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError("stats.samples_per_prompt must be >= 1")


def check_weights(name: str, weights: dict[str, float], known: tuple[str, ...]) -> None:
    """Sampling weights over known names: none negative, some positive (`random.choices` needs a positive total)."""
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown name(s) {unknown} (known: {', '.join(known)})")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{name} must be >= 0 with a positive total, got {weights}")


@dataclass
class WorldConfig:
    seed: int = 0  # one seed for the corpus, pretraining, raters' noise and probe sets
    facts: FactsConfig = field(default_factory=FactsConfig)  # which arithmetic facts exist
    # the base policy's pretraining dialogues (where its sycophancy is planted)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # the base policy's architecture and pretraining
    policy: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    # simulated raters that label the preference pairs
    raters: RatersConfig = field(default_factory=RatersConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)  # the preference pairs the PMs train on
    # sizes of the probe sets (probes/<probe>.jsonl)
    probes: ProbeSetsConfig = field(default_factory=ProbeSetsConfig)
    # how the base policy is measured at the end of `pmopt world`
    stats: StatsConfig = field(default_factory=StatsConfig)
