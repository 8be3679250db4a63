"""Probes along an RL run: at fixed steps the policy is probed on fixed prompts and the results become
curve rows against step and measured KL (curves.jsonl / curves.csv) and rows of metrics.jsonl."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pmopt import records, stats
from pmopt.io import PmoptError, append_jsonl
from pmopt.rewards import Reward
from pmopt.rl.batches import encode_queries, pack, sequence_kl
from pmopt.rl.config import PPOConfig


class ProbeSchedule:
    """Probes on fixed prompts at chosen steps, written as curve rows against step and measured KL.

    Probe metrics come from `pmopt.probes.run.evaluate`. The KL is measured on first-turn samples of the
    same probe prompts, drawn with the probes' own seed and keys (so the first `samples_per_prompt` of them
    are the responses the probes graded; `kl_samples_per_prompt` may draw more): KL(pi_T || ref_T) of the
    policy's and the reference's softmax at `sampling.temperature` (the distribution PPO samples and
    optimises), estimated per response by the exact per-position KL over the vocabulary summed over the
    response (Rao-Blackwellised: no per-token sampling noise, `ppo_math.kl_from_logits`) and averaged over
    responses, with the 95% cluster bootstrap over the probes' prompt clusters (`pmopt.stats`). The k1 and
    k3 sums of the sampled tokens (TRL's `kl_estimator`s) are logged beside it. The proxy reward (the
    optimised reward, `reward_fn`) and the gold reward (`gold_fn`, when given and defined on every probe
    record) are scored on those samples too.
    """

    def __init__(self, cfg: PPOConfig, tokenizer, reward_fn, gold_fn: Reward | None = None, rl_method: str = "ppo"):
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
        self.records = [r for _, probe_records in self.sets.values() for r in probe_records]
        # the bootstrap's clusters: a probe's own (a question's templates), never split across resamples
        self.clusters = [f"{name}/{probe.cluster(r)}" for name, (probe, probe_records) in self.sets.items()
                         for r in probe_records]
        self.cfg, self.tokenizer, self.rl_method = cfg, tokenizer, rl_method
        self.reward_fn, self.gold_fn = reward_fn, gold_fn

    def due(self, step: int) -> bool:
        return self.cfg.probes.due(step, self.cfg.train.steps)

    @torch.no_grad()
    def evaluate(self, policy, ref_model, step: int) -> tuple[dict, list[dict]]:
        """(metrics for metrics.jsonl, curve rows) of `policy` at `step`."""
        from pmopt.probes.run import evaluate
        from pmopt.sampling import sample

        was_training = policy.training
        policy.eval()
        _, probe_metrics = evaluate(policy, self.tokenizer, self.sets, self.run_cfg)
        p, device = self.cfg.probes, next(policy.parameters()).device
        gens = sample(policy, self.tokenizer, [r["prompt"] for r in self.records], p.kl_samples,
                      self.cfg.sampling, p.seed, keys=[r["id"] for r in self.records])
        flat = [(r, g) for r, row in zip(self.records, gens, strict=True) for g in row]
        batch = pack(encode_queries(self.tokenizer, [r["prompt"] for r, _ in flat],
                                    self.cfg.sampling.chat_template_kwargs),
                     [g.token_ids or [self.tokenizer.eos_token_id] for _, g in flat], self.tokenizer.pad_token_id,
                     device)
        kl = sequence_kl(policy, ref_model, batch, self.cfg.sampling.temperature, self.cfg.reward.batch_size)
        policy.train(was_training)
        measured = self._kl(kl, [c for c, row in zip(self.clusters, gens, strict=True) for _ in row])
        values = {k: (row["value"], row["ci_low"], row["ci_high"]) for k, row in probe_metrics.items()}
        values.update(self._rewards(flat))
        return self._rows(step, measured, values)

    def _kl(self, kl: dict[str, torch.Tensor], clusters: list[str]) -> dict[str, float]:
        """probe/kl (the Rao-Blackwellised mean over responses) with its 95% interval, resampling the probes'
        prompt clusters (the mean is a ratio of per-cluster sums: KL sum / responses), and the k1 / k3 means."""
        index = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
        sums = np.zeros((len(index), 2))
        np.add.at(sums, [index[c] for c in clusters], np.stack([kl["rb"].double().cpu().numpy(),
                                                               np.ones(len(clusters))], axis=1))
        low = high = math.nan
        if self.cfg.probes.n_boot > 0 and len(index) > 1:
            low, high = stats.statistic_intervals(sums, ["kl", "n"], lambda t: {"kl": t["kl"] / t["n"]},
                                                  self.cfg.probes.n_boot, self.cfg.probes.seed)["kl"]
        return {"probe/kl": float(kl["rb"].double().mean()), "probe/kl_ci_low": low, "probe/kl_ci_high": high,
                "probe/kl_k1": float(kl["k1"].double().mean()), "probe/kl_k3": float(kl["k3"].double().mean())}

    def _rewards(self, flat) -> dict[str, tuple]:
        """Proxy and gold reward of the probe samples: per-prompt means, bootstrap CI over prompts."""
        prompts, responses = [r["prompt"] for r, _ in flat], [g.response for _, g in flat]
        metas = [r.get("meta", {}) for r, _ in flat]
        columns = {"pm/score": self.reward_fn(prompts, responses, metas).float().tolist()}
        if self.gold_fn is not None:
            gold = self.gold_fn(prompts, responses, metas)
            if bool(torch.isfinite(gold).all()):  # every probe record is the gold reward's source's
                columns["gold/reward"] = gold.tolist()
        groups: dict[str, list[int]] = {}
        for i, (record, _) in enumerate(flat):
            groups.setdefault(record["id"], []).append(i)
        out = {}
        for name, column in columns.items():
            means = [sum(column[i] for i in group) / len(group) for group in groups.values()]
            out[name] = stats.mean_interval(means, self.cfg.probes.n_boot, self.cfg.probes.seed)
        return out

    def _rows(self, step: int, measured: dict, values: dict) -> tuple[dict, list[dict]]:
        metrics = {"step": step, **measured}
        rows = []
        for metric, (value, low, high) in values.items():
            metrics[metric] = _finite_or_none(value)
            if metrics[metric] is None:
                continue  # an undefined metric (no prompt of that kind) has no point on the curve
            rows.append(records.rl_curve_row(self.rl_method, self.cfg.reward_label, step, measured["probe/kl"], metric,
                                             value, low, high, measured["probe/kl_ci_low"],
                                             measured["probe/kl_ci_high"]))
        return metrics, rows


def write_probes(out: Path, result: tuple[dict, list[dict]], accelerator=None) -> None:
    """A probe evaluation's metrics row (metrics.jsonl) and curve rows (curves.jsonl); trackers get the metrics."""
    metrics, rows = result
    append_jsonl(out / "metrics.jsonl", metrics)
    records.append_curves(out, rows)
    if accelerator is not None:
        accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])


def _finite_or_none(x):
    return x if x is not None and math.isfinite(x) else None


__all__ = ["ProbeSchedule", "write_probes"]
