"""What the PPO loop (and the RLOO path) needs around the math: prompts, rewards, the models (policy,
reference, value), packed batches, log-prob / value recomputation, and the probe evaluation that turns a
policy into curve rows (curves.jsonl / curves.csv).

Batch layout (the sampler's, TRL PPOv2's): queries are left-padded to a common width Q and responses
right-padded to R, so every response starts at column Q. Positions are `cumsum(mask) - 1`, so a padded
query sits at exactly the positions it has unpadded (as in `pmopt.sampling`). The logits at columns
Q-1 .. Q+R-2 predict the response tokens; the value of response token t is read at the same column
(the state before the token is emitted).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pmopt.config import ConfigError
from pmopt.io import PmoptError, append_jsonl, atomic_write_text, read_jsonl, read_metrics
from pmopt.records import validate_prompt
from pmopt.rl.config import PPOConfig
from pmopt.rl.ppo_math import entropy_from_logits, kl_penalty, logprobs_from_logits, masked_sum
from pmopt.text import encode, render_prompt

# Attempts per requested prompt before the world generator is declared unable to supply enough
# prompts that are not probe prompts (a tiny world with few facts).
_PROMPT_ATTEMPTS_PER_PROMPT = 50
# A second-turn training prompt starts from a wrong first answer this often.
_P_WRONG_FIRST = 0.5

# ============================================================================ prompts


def _prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True)


def probe_prompt_keys(world: str | Path) -> set[str]:
    keys = set()
    for path in sorted((Path(world) / "probes").glob("*.jsonl")):
        keys.update(_prompt_key(r["prompt"]) for r in read_jsonl(path, validate_prompt))
    return keys


def world_prompts(world: str | Path, kinds: dict[str, float], n: int, seed: int, exclude: set[str],
                  templates: dict[str, float] | None = None) -> list[dict]:
    """`n` prompt records from the world's own generator (`random_prompt`), probe prompts left out."""
    from pmopt.config import load_config
    from pmopt.world.config import WorldConfig
    from pmopt.world.dialogues import random_prompt
    from pmopt.world.texts import ANSWER_TEMPLATES, all_facts

    config_file = Path(world) / "config.yaml"
    if not config_file.is_file():
        raise PmoptError(f"prompts.world: {world} has no config.yaml (not a `pmopt world` directory)")
    wcfg = load_config(WorldConfig, config_file)
    unknown = sorted(set(templates or {}) - set(ANSWER_TEMPLATES))
    if unknown:
        raise PmoptError(f"prompts.templates: unknown {unknown} (known: {', '.join(ANSWER_TEMPLATES)})")
    facts, max_number = all_facts(wcfg.facts.operand_max), 2 * wcfg.facts.operand_max
    names, weights = list(kinds), list(kinds.values())
    rng, records = random.Random(seed), []
    for _ in range(n * _PROMPT_ATTEMPTS_PER_PROMPT):
        kind = rng.choices(names, weights=weights)[0]
        try:
            messages, meta = random_prompt(rng, kind, rng.choice(facts), max_number,
                                           templates or wcfg.corpus.template_weights, _P_WRONG_FIRST)
        except ValueError as exc:
            raise PmoptError(f"prompts.kinds: {exc}") from None
        if _prompt_key(messages) in exclude:
            continue
        records.append({"id": f"train/{len(records):05d}", "prompt": messages, "meta": meta})
        if len(records) == n:
            return records
    raise PmoptError(f"prompts.world: could not draw {n} prompts outside the probe sets from {world}")


def load_training_prompts(cfg: PPOConfig) -> list[dict]:
    """Validated training prompt records {id, prompt, meta}, before any model is loaded."""
    p = cfg.prompts
    if p.file:
        records = read_jsonl(p.file, validate_prompt)
        if not records:
            raise PmoptError(f"{p.file}: no prompt records")
        return records[: p.n_prompts]
    exclude = probe_prompt_keys(p.world) if p.exclude_probe_prompts else set()
    return world_prompts(p.world, p.kinds, p.n_prompts, cfg.seed, exclude, p.templates)


def step_prompt_indices(n_prompts: int, batch: int, step: int, seed: int) -> list[int]:
    """Prompts of iteration `step` (1-based): consecutive slices of seeded permutations, one per pass
    over the prompts, so a resumed run draws exactly the prompts an uninterrupted one would."""
    out, start, perms = [], (step - 1) * batch, {}
    for position in range(start, start + batch):
        epoch, offset = divmod(position, n_prompts)
        if epoch not in perms:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n_prompts, generator=generator).tolist()
        out.append(perms[epoch][offset])
    return out


# ============================================================================ rewards


class PMReward:
    """PreferenceModel (or ensemble) score of (prompt, response), optionally with the truthfulness prefix."""

    def __init__(self, pm, prefix, batch_size: int, name: str):
        self.pm, self.prefix, self.batch_size, self.name = pm, prefix, batch_size, name
        self.extra: dict[str, float] = {}

    def __call__(self, prompts: Sequence, responses: Sequence[str], metas: Sequence[dict]) -> torch.Tensor:
        scores = self.pm.score(list(prompts), list(responses), prefix=self.prefix, batch_size=self.batch_size)
        members = getattr(self.pm, "member_scores", None)
        self.extra = {} if members is None else {"reward/ensemble_std": float(members.std(0).mean())}
        return scores.float()


class RaterReward:
    """The world's simulated raters as a reward, noise-free: u = w_truth correct + w_agree agrees + w_style
    confident. With w_agree = 0 it is the gold reward (Gao et al. 2022's "gold" RM); with the raters' own
    w_agree it is the ideal proxy, what a PM trained on their labels converges to (an oracle PM)."""

    def __init__(self, raters, name: str = "gold"):
        self.raters, self.name, self.extra = raters, name, {}

    def __call__(self, prompts: Sequence, responses: Sequence[str], metas: Sequence[dict]) -> torch.Tensor:
        from pmopt.world.raters import features, utility

        return torch.tensor([utility(self.raters, features(m, r)) for m, r in zip(metas, responses, strict=True)],
                            dtype=torch.float32)


def gold_reward_fn(raters, name: str = "gold") -> RaterReward:
    from dataclasses import replace

    return RaterReward(replace(raters, w_agree=0.0), name)


def world_raters(world: str | Path):
    from pmopt.config import load_config
    from pmopt.world.config import WorldConfig

    config_file = Path(world) / "config.yaml"
    if not config_file.is_file():
        raise PmoptError(f"{world}: no config.yaml (not a `pmopt world` directory)")
    return load_config(WorldConfig, config_file).raters


def build_reward(cfg: PPOConfig, device):
    """The reward the policy is optimised against (docs/ARCHITECTURE.md §7): a PM / ensemble, or the world's gold."""
    r = cfg.reward
    if r.kind in ("gold", "raters"):
        raters = world_raters(r.world or cfg.prompts.world)
        return gold_reward_fn(raters, cfg.reward_label) if r.kind == "gold" else RaterReward(raters, cfg.reward_label)
    from pmopt.pm.model import NON_SYCOPHANTIC_PREFIX, PreferenceModel

    pm = PreferenceModel.load(r.pm, pm_options(cfg, device), method=r.ensemble_aggregate, lam=r.ensemble_lambda)
    prefix = NON_SYCOPHANTIC_PREFIX if r.prefix == "non_sycophantic" else None
    return PMReward(pm, prefix, r.batch_size, cfg.reward_label)


def pm_options(cfg: PPOConfig, device):
    """`reward.pm_load`, with the policy's trust_remote_code / attn_implementation and the run's device."""
    p = cfg.policy
    return cfg.reward.pm_load.for_run(device, p.trust_remote_code, p.attn_implementation)


def gold_scores(metas: Sequence[dict], responses: Sequence[str], raters) -> list[float] | None:
    """Gold reward of world prompts (None when any prompt is not from the world)."""
    if raters is None or not all(m.get("source") == "world" for m in metas):
        return None
    from pmopt.world.raters import gold_reward

    return [gold_reward(m, r, raters) for m, r in zip(metas, responses, strict=True)]


# ============================================================================ packed batches


@dataclass
class Batch:
    """Left-padded queries + right-padded responses; `response_mask` is 1 on real response tokens."""

    input_ids: torch.Tensor  # (B, Q + R)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) float
    context_len: int  # Q

    def rows(self, index: torch.Tensor) -> Batch:
        return Batch(self.input_ids[index], self.attention_mask[index], self.position_ids[index],
                     self.response_ids[index], self.response_mask[index], self.context_len)


def pack(queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device) -> Batch:
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token")
    width_q, width_r = max(map(len, queries)), max(map(len, responses))
    batch = len(queries)
    ids = torch.full((batch, width_q + width_r), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
        ids[i, width_q - len(q):width_q] = torch.tensor(list(q), dtype=torch.long)
        ids[i, width_q:width_q + len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width_q - len(q):width_q + len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    response_ids = ids[:, width_q:]
    response_mask = mask[:, width_q:].float()
    return Batch(ids.to(device), mask.to(device), positions.to(device), response_ids.to(device),
                 response_mask.to(device), width_q)


def encode_queries(tokenizer, prompts: Sequence, chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """The token ids the sampler conditions on: `encode(render_prompt(prompt))`, with its template kwargs."""
    return [encode(tokenizer, render_prompt(p, tokenizer, chat_template_kwargs=chat_template_kwargs))
            for p in prompts]


def response_slice(full: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Columns Q-1 .. Q+R-2 of a (B, Q+R, ...) output: the predictions of the response tokens."""
    start = batch.context_len - 1
    return full[:, start:start + batch.response_ids.shape[1]]


def policy_outputs(model, batch: Batch, temperature: float, with_entropy: bool = False):
    """(log pi(y_t | ...), entropy or None) of the response tokens under the tempered policy."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False)
    logits = response_slice(out.logits, batch).float() / temperature
    logprobs = logprobs_from_logits(logits, batch.response_ids)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logprobs, entropy


def value_parts(value_model):
    """(backbone, scalar head) of a sequence-classification model, peft-wrapped or not."""
    model = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    head = getattr(model, "score", None)
    if head is None:
        raise PmoptError(f"{type(model).__name__}: the value model needs a `score` head "
                         "(an AutoModelForSequenceClassification of a decoder LM)")
    return getattr(model, model.base_model_prefix), head


def token_values(value_model, batch: Batch) -> torch.Tensor:
    """V(s_t) for every response token: the scalar head on each position's last hidden state."""
    backbone, head = value_parts(value_model)
    hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return response_slice(head(hidden), batch).squeeze(-1).float()


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module: one optimizer, one DDP / DeepSpeed wrapper."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, batch: Batch, temperature: float):
        logprobs, entropy = policy_outputs(self.policy, batch, temperature, with_entropy=True)
        return logprobs, entropy, token_values(self.value_model, batch)


@contextmanager
def reference_of(policy, ref_model):
    """The frozen reference: a separate copy, or (LoRA) the same base with its adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with policy.disable_adapter():
            yield policy


@torch.no_grad()
def sequence_kl(policy, ref_model, batch: Batch, temperature: float, chunk: int) -> dict[str, torch.Tensor]:
    """Per-sequence KL(policy || reference) estimates on sampled responses: sum_t k1 and sum_t k3."""
    k1, k3 = [], []
    for start in range(0, batch.input_ids.shape[0], chunk):
        part = batch.rows(torch.arange(start, min(start + chunk, batch.input_ids.shape[0])))
        logprobs, _ = policy_outputs(policy, part, temperature)
        with reference_of(policy, ref_model) as ref:
            ref_logprobs, _ = policy_outputs(ref, part, temperature)
        k1.append(masked_sum(kl_penalty(logprobs, ref_logprobs, "k1"), part.response_mask, dim=1))
        k3.append(masked_sum(kl_penalty(logprobs, ref_logprobs, "k3"), part.response_mask, dim=1))
    return {"k1": torch.cat(k1), "k3": torch.cat(k3)}


# ============================================================================ models


def disable_dropout(model) -> None:
    """Dropout off: the rollout's log-probs are then exactly those of the first update (ratio = 1)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def lora_config(cfg: PPOConfig, task_type: str):
    from peft import LoraConfig

    lora = cfg.policy.lora
    extra = {"modules_to_save": ["score"]} if task_type == "SEQ_CLS" else {}
    return LoraConfig(task_type=task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, **extra)


def load_policy_and_reference(cfg: PPOConfig, device):
    """(policy, reference or None under LoRA, tokenizer)."""
    from transformers import AutoModelForCausalLM

    from pmopt.policy import attn_kwargs, load_tokenizer

    p = cfg.policy
    tokenizer = load_tokenizer(p.path, p.trust_remote_code)

    def load():
        model = AutoModelForCausalLM.from_pretrained(p.path, dtype=getattr(torch, p.dtype),
                                                     trust_remote_code=p.trust_remote_code,
                                                     **attn_kwargs(p.attn_implementation))
        disable_dropout(model)
        return model

    policy = load()
    if p.lora.enabled:
        from peft import get_peft_model

        return get_peft_model(policy, lora_config(cfg, "CAUSAL_LM")), None, tokenizer
    reference = load().to(device).eval().requires_grad_(False)
    return policy, reference, tokenizer


def load_value_model(cfg: PPOConfig, tokenizer):
    """A sequence classifier over the policy's tokens; its head is read at every position."""
    from pmopt.pm.model import PreferenceModel, load_seq_cls

    source = cfg.value.path or (cfg.policy.path if cfg.value.init == "policy" else cfg.reward.pm)
    if cfg.value.init == "pm" and not cfg.value.path:
        if cfg.reward.kind != "pm":
            raise ConfigError("value.init: 'pm' needs reward.kind 'pm' (or value.path)")
        pm = PreferenceModel.load(source, pm_options(cfg, None), device="cpu", device_map=None)  # trained as a value model
        members = getattr(pm, "members", [pm])  # an ensemble: its first member
        model, pm_tokenizer = members[0].model, members[0].tokenizer
        if pm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"value.init: 'pm': the PM at {source} has another vocabulary than the policy; "
                              "use value.init: policy")
    else:
        model = load_seq_cls(source, getattr(torch, cfg.policy.dtype), cfg.policy.trust_remote_code,
                             cfg.policy.attn_implementation, new_head=True)  # the value head is new
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if cfg.policy.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg, "SEQ_CLS"))
    return model


# ============================================================================ probes along the way


def bootstrap_mean_ci(values: Sequence[float], n_boot: int, seed: int, level: float = 0.95):
    """(mean, low, high): percentile bootstrap over the given units (prompts)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if n_boot <= 0 or x.size == 1:
        return float(x.mean()), math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


class ProbeSchedule:
    """Probes on fixed prompts at chosen steps, written as curve rows against step and measured KL.

    Probe metrics come from `pmopt.probes.run.evaluate`. The KL is measured on the first-turn samples
    of the same probe prompts, drawn with the probes' own seed and keys (so they are the responses the
    probes graded): sum over tokens of k3 (unbiased and >= 0), averaged over samples. The proxy reward
    (the optimised PM) and the gold reward are scored on those samples too.
    """

    def __init__(self, cfg: PPOConfig, tokenizer, reward_fn, rl_method: str = "ppo"):
        from pmopt.probes.run import ProbeRunConfig, check_judge, load_probe_sets

        p = cfg.probes
        sources = {name: p.sources.get(name) or cfg.probe_world for name in p.names}
        missing = [name for name, src in sources.items() if not src]
        if missing:
            raise PmoptError(f"probes.sources: no source for {missing} (set probes.world or prompts.world)")
        self.sets = load_probe_sets(p.names, sources, p.max_prompts)
        self.run_cfg = ProbeRunConfig(probes=list(p.names), sampling=cfg.sampling, n_boot=p.n_boot,
                                      samples_per_prompt=p.samples_per_prompt, seed=p.seed)
        check_judge(self.sets, self.run_cfg.judge)
        self.records = [r for _, records in self.sets.values() for r in records]
        self.cfg, self.tokenizer, self.reward_fn, self.rl_method = cfg, tokenizer, reward_fn, rl_method
        world = cfg.probe_world
        self.raters = world_raters(world) if world and (Path(world) / "config.yaml").is_file() else None

    def due(self, step: int) -> bool:
        every, last = self.cfg.probes.every, self.cfg.train.steps
        return step == 0 or step == last or (every > 0 and step % every == 0)

    @torch.no_grad()
    def evaluate(self, policy, ref_model, step: int) -> tuple[dict, list[dict]]:
        """(metrics for metrics.jsonl, curve rows) of `policy` at `step`."""
        from pmopt.probes.run import evaluate
        from pmopt.sampling import sample

        was_training = policy.training
        policy.eval()
        _, probe_metrics = evaluate(policy, self.tokenizer, self.sets, self.run_cfg)
        p, device = self.cfg.probes, next(policy.parameters()).device
        gens = sample(policy, self.tokenizer, [r["prompt"] for r in self.records], p.samples_per_prompt,
                      self.cfg.sampling, p.seed, keys=[r["id"] for r in self.records])
        flat = [(r, g) for r, row in zip(self.records, gens, strict=True) for g in row]
        batch = pack(encode_queries(self.tokenizer, [r["prompt"] for r, _ in flat],
                                    self.cfg.sampling.chat_template_kwargs),
                     [g.token_ids or [self.tokenizer.eos_token_id] for _, g in flat], self.tokenizer.pad_token_id,
                     device)
        kl = sequence_kl(policy, ref_model, batch, self.cfg.sampling.temperature, self.cfg.reward.batch_size)
        policy.train(was_training)
        measured = {"probe/kl": float(kl["k3"].mean()), "probe/kl_k1": float(kl["k1"].mean())}
        values = {k: (row["value"], row["ci_low"], row["ci_high"]) for k, row in probe_metrics.items()}
        values.update(self._rewards(flat))
        return self._rows(step, measured, values)

    def _rewards(self, flat) -> dict[str, tuple]:
        """Proxy and gold reward of the probe samples: per-prompt means, bootstrap CI over prompts."""
        prompts, responses = [r["prompt"] for r, _ in flat], [g.response for _, g in flat]
        metas = [r.get("meta", {}) for r, _ in flat]
        columns = {"pm/score": self.reward_fn(prompts, responses, metas).tolist()}
        gold = gold_scores(metas, responses, self.raters)
        if gold is not None:
            columns["gold/reward"] = gold
        groups: dict[str, list[int]] = {}
        for i, (record, _) in enumerate(flat):
            groups.setdefault(record["id"], []).append(i)
        out = {}
        for name, column in columns.items():
            means = [sum(column[i] for i in group) / len(group) for group in groups.values()]
            out[name] = bootstrap_mean_ci(means, self.cfg.probes.n_boot, self.cfg.probes.seed)
        return out

    def _rows(self, step: int, measured: dict, values: dict) -> tuple[dict, list[dict]]:
        metrics = {"step": step, **measured}
        rows = []
        for metric, (value, low, high) in values.items():
            metrics[metric] = _finite_or_none(value)
            if metrics[metric] is None:
                continue  # an undefined metric (no prompt of that kind) has no point on the curve
            rows.append({"method": "ppo", "rl_method": self.rl_method, "pm": self.cfg.reward_label,
                         "step": step, "kl": measured["probe/kl"], "kl_kind": "measured", "kl_source": "probe",
                         "metric": metric, "value": value, "ci_low": _finite_or_none(low),
                         "ci_high": _finite_or_none(high)})
        return metrics, rows


# ============================================================================ curve files

CURVE_FIELDS = ("method", "rl_method", "pm", "step", "kl", "kl_kind", "kl_source", "metric", "value", "ci_low",
                "ci_high")


def write_probes(out: Path, result: tuple[dict, list[dict]], accelerator=None) -> None:
    metrics, rows = result
    append_jsonl(out / "metrics.jsonl", metrics)
    for row in rows:
        append_jsonl(out / "curves.jsonl", row)
    if accelerator is not None:
        accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])


def write_curves_csv(out: Path) -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CURVE_FIELDS), extrasaction="ignore")
    writer.writeheader()
    for row in read_metrics(out / "curves.jsonl"):
        writer.writerow(row)
    return atomic_write_text(out / "curves.csv", buffer.getvalue())


def _finite_or_none(x):
    return x if x is not None and math.isfinite(x) else None


__all__ = ["Batch", "pack", "load_policy_and_reference", "load_value_model", "disable_dropout", "lora_config",
           "write_probes", "write_curves_csv", "CURVE_FIELDS", "encode_queries", "policy_outputs", "token_values", "PolicyAndValue", "reference_of",
           "sequence_kl", "load_training_prompts", "step_prompt_indices", "build_reward", "PMReward", "RaterReward", "gold_reward_fn",
           "ProbeSchedule", "bootstrap_mean_ci", "gold_scores", "world_raters"]
