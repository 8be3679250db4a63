"""`PPOConfig`: the typed config of `pmopt ppo` (TRL style: one dataclass beside the trainer).

The same dataclass drives both RL methods (`method: ppo` runs pmopt's own loop, `method: rloo` TRL's
RLOOTrainer) and embeds in the experiment config of `pmopt run` as its `rl:` section. Defaults follow
the PPO-for-RLHF literature: gamma = 1, lambda = 0.95 (Ziegler et al. 2019; Stiennon et al. 2020),
clip 0.2 for ratio and value, k1 KL penalty in the reward, an EOS penalty for truncated responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pmopt.config import LoraSection
from pmopt.pm.loading import PMLoadOptions
from pmopt.policy import AttnImplementation
from pmopt.sampling import SamplingConfig


@dataclass
class PolicySection:
    path: str = ""  # a causal-LM directory with its tokenizer (a world's policy/), or a hub id
    # weights dtype of policy, reference and value model
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False  # allow the model repo's own Python code
    attn_implementation: AttnImplementation | None = None  # policy, reference, value model and PM
    # LoRA on policy and value model instead of full training; the reference is then the base with adapters
    # disabled. dropout 0 keeps the rollout's and the first update's log-probs identical
    lora: LoraSection = field(default_factory=lambda: LoraSection(dropout=0.0))


@dataclass
class ValueSection:
    """The value model: a scalar head on a transformer, per token (TRL's PPOv2 layout)."""

    init: Literal["policy", "pm"] = "policy"  # copy the policy's backbone (new head) or the PM (its head)
    path: str | None = None  # explicit source instead of `init`


@dataclass
class RewardSection:
    """What the policy is optimised against: the fields of `pmopt.rewards.RewardSpec` (kind, path, prefix,
    aggregate, lam, batch_size) plus the PM's loading options, the EOS penalty and, for a source's reward,
    the source directory (`world`)."""

    # pm (a PM or ensemble dir), a kind added with pmopt.rewards.register_kind, or a data source's own
    # reward without a model: on the world "gold" (raters' utility with w_agree = 0) or "raters" (their
    # utility with their own bias: the oracle the PM approximates)
    kind: str = "pm"
    path: str = ""  # PM directory for kind pm: full, LoRA or ensemble (`pmopt train-pm` output)
    name: str | None = None  # label in curve rows; default: the PM dir name (+ "-nonsyc" with the prefix), as BoN's
    # Sharma et al. 2023 §4.2: the truthfulness prefix prepended at scoring time (null / "none": no prefix)
    prefix: Literal["none", "non_sycophantic"] | None = "none"
    aggregate: Literal["mean", "worst", "uwo"] | None = None  # ensemble aggregate; default: what ensemble.json says
    lam: float | None = None  # uwo's lambda (mean - lam * variance); default: what ensemble.json says
    batch_size: int = 64  # PM scoring batch
    pm_load: PMLoadOptions = field(default_factory=PMLoadOptions)  # how the PM loads; device: the run's
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of responses cut at max_new_tokens
    world: str | None = None  # source dir (a world) for kind gold / raters; default: prompts.world
    # old key -> its current name; old keys still load (with a notice) for one release
    RENAMED: ClassVar[dict[str, str]] = {"pm": "path", "ensemble_aggregate": "aggregate", "ensemble_lambda": "lam"}


@dataclass
class KLSection:
    estimator: Literal["k1", "k3"] = "k1"  # per-token estimator in the reward (Schulman 2020)
    beta: float = 0.05  # initial (adaptive) or fixed coefficient
    adaptive: bool = False  # Ziegler et al. 2019 §2.2 proportional controller
    target: float = 6.0  # target KL per sequence (nats) for the adaptive controller
    horizon: float = 10000.0  # the adaptive controller's horizon in episodes (larger = slower beta updates)


@dataclass
class PromptsSection:
    """Training prompts: drawn from the world's prompt generator (probe prompts held out) or a file."""

    world: str = ""  # a `pmopt world` directory
    file: str | None = None  # JSONL prompt records {id, prompt, probe, meta}; replaces the world's generator
    # share of each world prompt kind among the training prompts
    kinds: dict[str, float] = field(default_factory=lambda: {"answer": 1.0})
    templates: dict[str, float] | None = None  # answer-template weights; default: the world corpus's mix
    n_prompts: int = 1024  # training prompts generated (or read from `file`)
    exclude_probe_prompts: bool = True  # drop generated prompts whose text is a probe prompt's


@dataclass
class TrainSection:
    steps: int = 100  # PPO iterations (rollout + update)
    rollout_batch_size: int = 64  # prompts per iteration, across all processes
    minibatch_size: int = 16  # sequences per optimizer update, across all processes
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch (per process)
    ppo_epochs: int = 4  # passes over each rollout batch
    target_kl: float | None = None  # stop an iteration's epochs once a minibatch's approx_kl exceeds it (cleanrl)
    learning_rate: float = 1e-5  # peak AdamW learning rate (policy and value model)
    lr_schedule: Literal["constant", "linear"] = "constant"  # linear: decay to 0 over all updates
    warmup_steps: int = 0  # optimizer updates of linear warmup (transformers' name)
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping norm
    clip_range: float = 0.2  # PPO ratio clip epsilon
    clip_range_value: float = 0.2  # value-prediction clip around the rollout's values
    vf_coef: float = 0.1  # weight of the value loss in the total loss
    gamma: float = 1.0  # discount (1 = none, the RLHF convention)
    lam: float = 0.95  # GAE lambda
    whiten_rewards: bool = False  # scale-only whitening of the per-token rewards (lm-human-preferences)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast precision (bf16 / fp16 need a GPU)
    RENAMED: ClassVar[dict[str, str]] = {"warmup_updates": "warmup_steps"}  # old key -> its current name


@dataclass
class ProbesSection:
    """Probes on fixed probe prompts at steps 0, 1, ..., `dense_steps`, then every `every` steps, and at the
    last step: curves against step and measured KL, dense early where a run's metrics move most."""

    every: int = 10  # 0: only before training, at the dense steps and at the end
    dense_steps: int = 0  # probe every step up to this one too (0: none), where the metrics move most
    names: list[str] = field(default_factory=lambda: ["answer"])  # probe sets run at each evaluation
    world: str | None = None  # source of every probe set; default: prompts.world
    sources: dict[str, str] = field(default_factory=dict)  # probe -> file or dir, overriding `world`
    samples_per_prompt: int = 2  # responses per probe prompt at each evaluation
    # responses per probe prompt for the KL and the rewards (the first samples_per_prompt are the graded ones);
    # 0: samples_per_prompt. More narrow the KL's interval (the probe prompts are few)
    kl_samples_per_prompt: int = 0
    max_prompts: int = 0  # per probe, whole clusters; 0 = all
    n_boot: int = 200  # bootstrap resamples for the 95% intervals
    seed: int = 1234  # fixed across evaluations: the same random streams at every step

    @property
    def kl_samples(self) -> int:
        """Responses per probe prompt on which the KL and the rewards are measured."""
        return self.kl_samples_per_prompt or self.samples_per_prompt

    def due(self, step: int, last: int) -> bool:
        """Whether a run of `last` steps probes at `step`."""
        periodic = self.every > 0 and step % self.every == 0
        return step == 0 or step <= self.dense_steps or periodic or step == last

    def steps(self, last: int) -> list[int]:
        """Every step a run of `last` steps probes at, in order."""
        return [step for step in range(last + 1) if self.due(step, last)]


@dataclass
class CheckpointSection:
    every: int = 10  # steps; the last step is always saved
    keep: int = 2  # newest complete checkpoints kept


@dataclass
class RLOOSection:
    num_generations: int = 4  # completions per prompt (the leave-one-out group)


@dataclass
class PPOConfig:
    method: Literal["ppo", "rloo"] = "ppo"  # ppo: pmopt's own loop; rloo: TRL's RLOOTrainer
    seed: int = 0  # seed of sampling, minibatch order and initialisation
    # the policy trained (and its frozen copy, the reference)
    policy: PolicySection = field(default_factory=PolicySection)
    value: ValueSection = field(default_factory=ValueSection)  # the value model (ppo only)
    reward: RewardSection = field(default_factory=RewardSection)  # what the policy is optimised against
    kl: KLSection = field(default_factory=KLSection)  # the KL penalty to the reference policy in the reward
    prompts: PromptsSection = field(default_factory=PromptsSection)  # the training prompts
    # how rollouts are sampled (full softmax: top_k 0, top_p 1)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # rollout and update sizes, optimizer and PPO losses
    train: TrainSection = field(default_factory=TrainSection)
    # probe evaluations during training (curves against KL)
    probes: ProbesSection = field(default_factory=ProbesSection)
    # checkpoint frequency and retention
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    rloo: RLOOSection = field(default_factory=RLOOSection)  # settings used when method is rloo
    # also log to tensorboard, wandb and/or trackio (metrics.jsonl is always written)
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = field(default_factory=list)
    threads: int = 0  # torch CPU threads during the run (restored after); 0 leaves torch's setting

    def validate(self) -> None:
        t = self.train
        checks = [
            (bool(self.policy.path), "policy.path: required (a causal-LM directory, e.g. WORLD/policy)"),
            (self.reward.kind != "pm" or bool(self.reward.path), "reward.path: required when reward.kind is 'pm'"),
            (bool(self.prompts.world or self.prompts.file), "prompts.world or prompts.file: one is required"),
            (self.prompts.n_prompts >= 1, "prompts.n_prompts: must be >= 1"),
            (t.steps >= 1, "train.steps: must be >= 1"),
            (t.rollout_batch_size >= 1 and t.minibatch_size >= 1, "train.rollout_batch_size / minibatch_size: >= 1"),
            (t.rollout_batch_size % t.minibatch_size == 0,
             f"train.rollout_batch_size ({t.rollout_batch_size}) must be a multiple of train.minibatch_size "
             f"({t.minibatch_size})"),
            (t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps: must be >= 1"),
            (t.ppo_epochs >= 1, "train.ppo_epochs: must be >= 1"),
            (t.target_kl is None or t.target_kl > 0, "train.target_kl: must be > 0 (or null: no early stop)"),
            (t.learning_rate > 0, "train.learning_rate: must be > 0"),
            (t.clip_range > 0 and t.clip_range_value > 0, "train.clip_range / clip_range_value: must be > 0"),
            (0.0 <= t.gamma <= 1.0 and 0.0 <= t.lam <= 1.0, "train.gamma / train.lam: must be in [0, 1]"),
            (t.max_grad_norm > 0, "train.max_grad_norm: must be > 0"),
            (self.kl.beta >= 0, "kl.beta: must be >= 0"),
            (self.kl.target > 0 and self.kl.horizon > 0, "kl.target / kl.horizon: must be > 0"),
            # PPO's ratio needs the sampling distribution to be the policy's (tempered) softmax.
            (self.sampling.top_k == 0 and self.sampling.top_p == 1.0,
             "sampling.top_k / sampling.top_p: PPO samples from the full softmax (top_k: 0, top_p: 1.0)"),
            (self.probes.every >= 0 and self.probes.dense_steps >= 0 and self.probes.samples_per_prompt >= 1,
             "probes.every and probes.dense_steps must be >= 0 and probes.samples_per_prompt >= 1"),
            (self.probes.kl_samples_per_prompt >= 0, "probes.kl_samples_per_prompt: must be >= 0 (0: samples_per_prompt)"),
            (self.checkpoint.every >= 1 and self.checkpoint.keep >= 1, "checkpoint.every / keep: must be >= 1"),
            (self.rloo.num_generations >= 2, "rloo.num_generations: must be >= 2 (a leave-one-out baseline)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.sampling.validate()
        self.reward.pm_load.validate("reward.pm_load")

    @property
    def probe_world(self) -> str | None:
        return self.probes.world or self.prompts.world or None

    def pm_options(self, device):
        """`reward.pm_load`, with the policy's trust_remote_code / attn_implementation and the run's device."""
        p = self.policy
        return self.reward.pm_load.for_run(device, p.trust_remote_code, p.attn_implementation)

    @property
    def reward_label(self) -> str:
        """The `pm` field of curve rows: which reward the policy was optimised against."""
        from pathlib import Path

        if self.reward.name:
            return self.reward.name
        base = self.reward.kind if self.reward.kind != "pm" else Path(self.reward.path).name or "pm"
        return base + ("-nonsyc" if self.reward.prefix == "non_sycophantic" else "")


__all__ = ["PPOConfig", "PolicySection", "ValueSection", "RewardSection", "KLSection", "PromptsSection",
           "TrainSection", "ProbesSection", "CheckpointSection", "RLOOSection"]
