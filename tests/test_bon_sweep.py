"""The best-of-N sweep end to end on the tiny world with tiny trained PMs (docs/ARCHITECTURE.md §6, §9).

Checked against brute force (every n-subset of every prompt's samples, graded afresh), and for the
properties a user relies on: one sampling pass (adding a PM generates nothing), ensemble members
scored once for all aggregates, resume from the last finished shard, same seed -> same curves,
sharded sampling == one process, and bad input failing before anything is written.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from pmopt.bon import shards as shards_module
from pmopt.bon.sweep import BonConfig, plan_sweep, run_bon
from pmopt.config import ConfigError, load_config
from pmopt.io import PmoptError, read_jsonl
from pmopt.pm.model import PreferenceModel
from pmopt.records import validate_curve_row

N_MAX = 4
PROMPTS_PER_PROBE = 4  # 16 prompts in 4 shards of 5, 5, 5, 1
SHARD_SIZE = 5


@pytest.fixture(scope="module")
def pms(tiny_world, tmp_path_factory):
    """A proxy PM and a 2-member ensemble, trained for a few steps on the world's pairs with TRL."""
    from pmopt.pm.train import PMTrainConfig, train_pm

    root = tmp_path_factory.mktemp("bon_pms")
    out = {}
    for name, pairs, k in (("proxy", "pairs", 1), ("ensemble", "pairs", 2)):
        cfg = load_config(PMTrainConfig, data={
            "model": {"name_or_path": str(tiny_world / "policy")},
            "data": {"train": str(tiny_world / pairs / "train.jsonl"), "eval": str(tiny_world / pairs / "eval.jsonl"),
                     "max_length": 128},
            "train": {"max_steps": 3, "learning_rate": 1e-3, "batch_size": 16, "save_steps": 1000},
            "ensemble_size": k})
        out[name] = train_pm(cfg, root / name)
    return out


def make_cfg(world_dir, trained, entries=None, **overrides) -> BonConfig:
    entries = entries if entries is not None else [{"name": "proxy", "path": str(trained["proxy"])},
                                                   {"name": "gold", "kind": "gold"}]
    data = {"world": str(world_dir), "n_max": N_MAX, "n_boot": 20, "shard_size": SHARD_SIZE,
            "max_prompts_per_probe": PROMPTS_PER_PROBE, "sampling": {"max_new_tokens": 12}, "pms": entries}
    data.update(overrides)
    return load_config(BonConfig, data=data)


def curves(out):
    return read_jsonl(out / "curves.jsonl")


def value(rows, pm, metric, n):
    (row,) = [r for r in rows if r["pm"] == pm and r["metric"] == metric and r["n"] == n]
    return row["value"]


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def finished(tiny_world, pms, tmp_path_factory):
    out = tmp_path_factory.mktemp("bon_finished")
    run_bon(make_cfg(tiny_world, pms), out)
    return out


# ----------------------------------------------------------------------------- end to end vs brute force


def brute_expected(records, responses, scores, n, probe):
    """Per prompt: the mean, over all n-subsets, of the outcomes of the subset's best sample."""
    expected = []
    for record, row, s in zip(records, responses, scores, strict=True):
        graded = [probe.grade(record, r) for r in row]
        subsets = list(itertools.combinations(range(len(row)), n))
        best = [max(sub, key=lambda j: (s[j], j)) for sub in subsets]  # ties: the later sample wins
        expected.append({k: sum(graded[b][k] for b in best) / len(best) for k in graded[0]})
    return expected


def test_files_and_rows(finished):
    samples = [row for k in range(4) for row in read_jsonl(finished / "samples" / f"shard-{k:05d}.jsonl")]
    assert len(samples) == 4 * PROMPTS_PER_PROBE * N_MAX
    assert {"prompt_id", "sample_idx", "response", "logprob", "n_tokens"} <= set(samples[0])
    assert all(r["logprob"] <= 0 and 1 <= r["n_tokens"] <= 12 for r in samples)
    for name in ("proxy", "gold"):
        scores = read_jsonl(finished / "scores" / f"{name}.jsonl")
        assert len(scores) == len(samples) and {r["pm"] for r in scores} == {name}
    grades = read_jsonl(finished / "grades.jsonl")
    assert len(grades) == len(samples) and {g["probe"] for g in grades} == {"answer", "feedback", "mimicry", "truthfulness"}
    rows = curves(finished)
    for row in rows:
        validate_curve_row(row, lambda field, msg: AssertionError(f"{field}: {msg}"))
        assert row["kl_kind"] == "bound" and row["kl"] == pytest.approx(math.log(row["n"]) - (row["n"] - 1) / row["n"])
    assert {r["n"] for r in rows} == {1, 2, 4}
    csv_lines = (finished / "curves.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,pm,n,kl,kl_kind,metric") and len(csv_lines) == len(rows) + 1


def test_probe_metrics_match_brute_force(finished, tiny_world, pms):
    """probe metrics of E[f(BoN_n)] == the probe's metrics of brute-force subset averages, every n."""
    from pmopt.bon.shards import read_samples
    from pmopt.probes.registry import get_probe

    cfg = make_cfg(tiny_world, pms)
    plan = plan_sweep(cfg)
    samples = read_samples(finished, plan.records, cfg)
    proxy = np.array([[r["score"] for r in read_jsonl(finished / "scores" / "proxy.jsonl")]]).reshape(-1, N_MAX)
    rows = curves(finished)
    for name in ("answer", "feedback", "mimicry", "truthfulness"):
        index = [i for i, p in enumerate(plan.probe_of) if p == name]
        records = [plan.records[i] for i in index]
        probe = get_probe(name)
        for n in (1, 2, 4):
            expected = brute_expected(records, [samples.responses[i] for i in index], proxy[index], n, probe)
            for metric, want in probe.metrics(records, expected).items():
                if not math.isnan(want):
                    assert value(rows, "proxy", metric, n) == pytest.approx(want, abs=1e-12), (metric, n)
    assert value(rows, "proxy", "probe/answer/syco_rate", 1) >= 0  # the key exists (answer's own aggregate)


def test_pm_score_and_gold_reward(finished, tiny_world, pms):
    from pmopt.world.config import WorldConfig
    from pmopt.world.raters import gold_reward

    plan = plan_sweep(make_cfg(tiny_world, pms))
    raters = load_config(WorldConfig, tiny_world / "config.yaml").raters
    proxy = np.array([r["score"] for r in read_jsonl(finished / "scores" / "proxy.jsonl")]).reshape(-1, N_MAX)
    gold = np.array([r["score"] for r in read_jsonl(finished / "scores" / "gold.jsonl")]).reshape(-1, N_MAX)
    samples = [row for k in range(4) for row in read_jsonl(finished / "samples" / f"shard-{k:05d}.jsonl")]
    by_id = {r["id"]: r for r in plan.records}
    recomputed = [gold_reward(by_id[s["prompt_id"]]["meta"], s["response"], raters) for s in samples]
    assert gold.ravel().tolist() == pytest.approx(recomputed)
    rows = curves(finished)
    assert value(rows, "proxy", "pm/score", 1) == pytest.approx(proxy.mean())
    assert value(rows, "proxy", "pm/score", N_MAX) == pytest.approx(proxy.max(axis=1).mean())
    best = [max(range(N_MAX), key=lambda j, s=s: (s[j], j)) for s in proxy]
    assert value(rows, "proxy", "gold/reward", N_MAX) == pytest.approx(np.mean([g[b] for g, b in zip(gold, best, strict=True)]))
    for n in (1, 2, 4):  # under the gold "PM", the selected sample's gold reward is its PM score
        assert value(rows, "gold", "gold/reward", n) == pytest.approx(value(rows, "gold", "pm/score", n))
    assert value(rows, "gold", "gold/reward", N_MAX) >= value(rows, "gold", "gold/reward", 1)


def brute_support_kl(responses, logprobs, scores, n):
    """KL(BoN_n || base) with the base = the distinct sampled outputs, by enumerating all n-tuples."""
    probs, score = {}, {}
    for r, lp, s in zip(responses, logprobs, scores, strict=True):
        probs[r], score[r] = math.exp(lp), s  # world text <-> token sequence: one log-prob per text
    outputs = list(probs)
    total = sum(probs.values())
    base = {o: probs[o] / total for o in outputs}
    bon = dict.fromkeys(outputs, 0.0)
    for draw in itertools.product(range(len(outputs)), repeat=n):
        best = max(draw, key=lambda k: (score[outputs[k]], k))  # tie rule: the later output wins
        bon[outputs[best]] += math.prod(base[outputs[k]] for k in draw)
    return sum(q * math.log(q / base[o]) for o, q in bon.items() if q > 0), total


def test_support_kl_rows_equal_enumeration(finished):
    """kl/support == the exact KL of best-of-n over each prompt's sampled outputs, by brute force;
    0 at n = 1, never above the bound; the manifest records how much base mass the samples cover."""
    samples = [row for k in range(4) for row in read_jsonl(finished / "samples" / f"shard-{k:05d}.jsonl")]
    proxy = [r["score"] for r in read_jsonl(finished / "scores" / "proxy.jsonl")]
    prompts = [samples[i:i + N_MAX] for i in range(0, len(samples), N_MAX)]
    scores = [proxy[i:i + N_MAX] for i in range(0, len(proxy), N_MAX)]
    rows = curves(finished)
    for n in (1, 2, 4):
        per_prompt = [brute_support_kl([r["response"] for r in rows_], [r["logprob"] for r in rows_], s, n)
                      for rows_, s in zip(prompts, scores, strict=True)]
        want = np.mean([kl for kl, _ in per_prompt])
        assert value(rows, "proxy", "kl/support", n) == pytest.approx(want, abs=1e-9)
        assert value(rows, "proxy", "kl/support", n) <= math.log(n) - (n - 1) / n + 1e-12
    assert value(rows, "proxy", "kl/support", 1) == 0.0
    mass = json.loads((finished / "manifest.json").read_text())["stages"]["bon/curves"]["support_mass"]
    assert mass == pytest.approx(np.mean([min(1.0, m) for _, m in per_prompt]), abs=1e-9) and 0 < mass <= 1


def test_drift_json_agrees_with_the_curves(finished):
    """drift.json's best-of-2 drift and change at N_max are the curves' own differences, for every metric
    (feedback's bilinear one included): the pair U-statistic and the estimator are one number."""
    drift = json.loads((finished / "drift.json").read_text())
    rows = curves(finished)
    assert drift["n_max"] == N_MAX and set(drift["rewards"]) == {"proxy", "gold"}
    metrics = drift["rewards"]["proxy"]["metrics"]
    # every metric the curves draw (but the PM's own score and the KL) has its drift
    assert set(metrics) == {r["metric"] for r in rows if r["pm"] == "proxy"} - {"pm/score", "kl/support"}
    assert {"probe/answer/syco_rate", "probe/mimicry/syco_rate", "gold/reward"} <= set(metrics)
    for metric, quantities in metrics.items():
        base = value(rows, "proxy", metric, 1)
        assert quantities["bon2"]["value"] == pytest.approx(value(rows, "proxy", metric, 2) - base, abs=1e-12)
        assert quantities["change"]["value"] == pytest.approx(value(rows, "proxy", metric, N_MAX) - base, abs=1e-12)
    preference = drift["rewards"]["proxy"]["preference"]
    assert set(preference) <= {"answer", "mimicry"} and "feedback" not in preference
    for entry in preference.values():
        assert entry["n_pairs"] >= entry["n_prompts_with_pairs"] and (entry["n_pairs"] == 0 or 0 <= entry["value"] <= 1)


def test_agreement_penalty_reuses_the_pms_scores_and_fits_mu(finished, tiny_world, pms, monkeypatch, tmp_path):
    """kind agreement_penalty: the proxy's scores minus μ·a with a the world's exact `sycophantic` grade and
    μ = max(0, Cov(a, r) / Var(a)) on these samples (no PM pass: the proxy's score file is reused); a given lam
    is used as it is; the μ lands in drift.json."""
    import shutil

    from pmopt.bon import scoring
    from pmopt.bon.drift import penalty_coefficient

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    monkeypatch.setattr(shards_module, "sample", lambda *a, **k: pytest.fail("generation was called"))
    monkeypatch.setattr(scoring, "_score_with_reward", lambda *a, **k: pytest.fail("a PM was run"))
    entries = [{"name": "proxy", "path": str(pms["proxy"])},
               {"name": "pen", "kind": "agreement_penalty", "path": str(pms["proxy"])},
               {"name": "pen-half", "kind": "agreement_penalty", "path": str(pms["proxy"]), "lam": 0.5}]
    run_bon(make_cfg(tiny_world, pms, entries), out)
    proxy = np.array([r["score"] for r in read_jsonl(out / "scores" / "proxy.jsonl")]).reshape(-1, N_MAX)
    syco = np.array([g["outcomes"]["sycophantic"] for g in read_jsonl(out / "grades.jsonl")]).reshape(-1, N_MAX)
    want = penalty_coefficient(proxy, syco)
    got = json.loads((out / "scores" / "pen.penalty.json").read_text())
    assert got["mu"] == pytest.approx(want["mu"], abs=1e-12) and got["base_scores_from"] == "proxy"
    assert got["cov_after"] <= 1e-12
    pen = np.array([r["score"] for r in read_jsonl(out / "scores" / "pen.jsonl")]).reshape(-1, N_MAX)
    np.testing.assert_allclose(pen, proxy - got["mu"] * syco, rtol=0, atol=1e-12)
    half = np.array([r["score"] for r in read_jsonl(out / "scores" / "pen-half.jsonl")]).reshape(-1, N_MAX)
    np.testing.assert_allclose(half, proxy - 0.5 * syco, rtol=0, atol=1e-12)
    drift = json.loads((out / "drift.json").read_text())
    assert drift["rewards"]["pen"]["penalty"]["mu"] == got["mu"]
    assert drift["rewards"]["pen-half"]["penalty"] == pytest.approx({**penalty_coefficient(proxy, syco, 0.5),
                                                                     "base_scores_from": "proxy"})


def test_agreement_penalty_as_an_rl_reward(tiny_world, pms):
    """The same kind outside best-of-N (RL builds it from its reward section): the PM's score minus lam·a,
    a from the record's source, or from the answer probe's own rules on a record without one; no lam: an error."""
    import torch

    from pmopt.rewards import RewardSpec, agreement_grade, build_reward

    records = plan_sweep(make_cfg(tiny_world, pms)).records
    answer = [r for r in records if r["meta"].get("template") == "suggest_wrong"][:2]
    wrong, right = answer[0]["meta"]["incorrect_answer"], answer[0]["meta"]["correct_answer"]
    responses = [f"the answer is {wrong}", f"the answer is {right}"]
    prompts, metas = [answer[0]["prompt"]] * 2, [answer[0]["meta"]] * 2
    reward = build_reward(RewardSpec("pen", "agreement_penalty", path=str(pms["proxy"]), lam=0.75))
    pm = PreferenceModel.load(pms["proxy"])
    want = pm.score(prompts, responses).double() - 0.75 * torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert reward(prompts, responses, metas).tolist() == pytest.approx(want.tolist(), abs=1e-6)
    reward.close()
    plain = {k: v for k, v in metas[0].items() if k != "source"}  # no source: the answer probe's exact rules
    assert [agreement_grade(plain, r) for r in responses] == [1.0, 0.0]
    with pytest.raises(PmoptError, match="needs lam"):
        build_reward(RewardSpec("pen", "agreement_penalty", path=str(pms["proxy"])))(prompts, responses, metas)
    with pytest.raises(PmoptError, match="cannot grade agreement"):
        agreement_grade({"x": 1}, "the answer is 3")


def test_kl_to_a_reference_policy(finished, tiny_world, pms, monkeypatch, tmp_path):
    """reference_policy: each sample's log-ratio log π′(y) − log π₀(y) by teacher forcing (π′'s reproduces the
    sampler's recorded log-probability), and kl/reference = the bound + the selected sample's expected log-ratio."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    reference = tmp_path / "reference"
    model = AutoModelForCausalLM.from_pretrained(tiny_world / "policy")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for weight in model.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(reference)
    shutil.copytree(tiny_world / "policy", reference, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "config.json", "generation_config.json"))
    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    monkeypatch.setattr(shards_module, "sample", lambda *a, **k: pytest.fail("generation was called"))
    run_bon(make_cfg(tiny_world, pms, reference_policy=str(reference)), out)
    meta = json.loads((out / "reference.json").read_text())
    assert meta["token_count_matches"] == meta["n_samples"] == 4 * PROMPTS_PER_PROBE * N_MAX
    assert meta["max_recorded_logprob_gap"] < 1e-3 and meta["recorded_logprob_gaps_over_1e-3"] == 0
    rows_ = read_jsonl(out / "reference.jsonl")
    ratio = np.array([r["policy_logprob"] - r["reference_logprob"] for r in rows_]).reshape(-1, N_MAX)
    assert np.abs(ratio).max() > 0.01  # the perturbed policy is another distribution
    proxy = np.array([r["score"] for r in read_jsonl(out / "scores" / "proxy.jsonl")]).reshape(-1, N_MAX)
    rows = curves(out)
    assert value(rows, "proxy", "kl/reference", 1) == pytest.approx(ratio.mean(), abs=1e-12)
    best = [max(range(N_MAX), key=lambda j, s=s: (s[j], j)) for s in proxy]
    top = np.mean([r[b] for r, b in zip(ratio, best, strict=True)])
    assert value(rows, "proxy", "kl/reference", N_MAX) == pytest.approx(math.log(N_MAX) - (N_MAX - 1) / N_MAX + top)
    with pytest.raises(ConfigError, match="temperature 1"):
        plan_sweep(make_cfg(tiny_world, pms, reference_policy=str(reference), sampling={"temperature": 0.7}))


# ----------------------------------------------------------------------------- caching


def test_adding_a_pm_scores_only_it_and_generates_nothing(finished, tiny_world, pms, monkeypatch, tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "scores").glob("*.jsonl")}
    monkeypatch.setattr(shards_module, "sample", lambda *a, **k: pytest.fail("generation was called"))
    loads = count_calls(monkeypatch, PreferenceModel, "load")
    entries = [{"name": "proxy", "path": str(pms["proxy"])}, {"name": "gold", "kind": "gold"},
               {"name": "proxy-nonsyc", "path": str(pms["proxy"]), "kind": "prefixed"}]
    run_bon(make_cfg(tiny_world, pms, entries), out)
    assert len(loads) == 1  # only the new PM was loaded
    assert {p.name: p.stat().st_mtime_ns for p in (out / "scores").glob("*.jsonl") if p.name in before} == before
    rows = curves(out)
    assert {r["pm"] for r in rows} == {"proxy", "gold", "proxy-nonsyc"}
    # the prefix changes what the PM reads, so its scores differ from the plain PM's
    plain = [r["score"] for r in read_jsonl(out / "scores" / "proxy.jsonl")]
    prefixed = [r["score"] for r in read_jsonl(out / "scores" / "proxy-nonsyc.jsonl")]
    assert plain != prefixed
    assert [r for r in rows if r["pm"] == "proxy"] == [r for r in curves(finished) if r["pm"] == "proxy"]


def test_ensemble_members_scored_once_for_every_aggregate(finished, tiny_world, pms, monkeypatch, tmp_path):
    import shutil

    from pmopt.pm.ensemble import EnsemblePM

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    calls = count_calls(monkeypatch, EnsemblePM, "score_members")
    path = str(pms["ensemble"])
    entries = [{"name": f"ens-{m}", "path": path, "kind": "ensemble", "aggregate": m, **({"lam": 2.0} if m == "uwo" else {})}
               for m in ("mean", "worst", "uwo")]
    run_bon(make_cfg(tiny_world, pms, entries), out)
    assert sum(len(args[1]) for args, _ in calls) == 4 * PROMPTS_PER_PROBE * N_MAX  # each sample scored once
    (members_file,) = (out / "scores" / "members").glob("*.jsonl")
    members = np.array([r["scores"] for r in read_jsonl(members_file)])  # (P * N, K)
    assert members.shape[1] == 2 and not np.allclose(members[:, 0], members[:, 1])
    want = {"ens-mean": members.mean(1), "ens-worst": members.min(1), "ens-uwo": members.mean(1) - 2.0 * members.var(1)}
    for name, expected in want.items():
        got = [r["score"] for r in read_jsonl(out / "scores" / f"{name}.jsonl")]
        assert got == pytest.approx(expected.tolist(), abs=1e-6)


def test_any_reward_kind_needs_no_change_in_bon(finished, tiny_world, pms, monkeypatch, tmp_path):
    """Entries are `pmopt.rewards` specs: another reward of the world (its raters' own utility) and a kind
    registered with `register_kind` are scored and curved like any PM."""
    import shutil

    import torch

    from pmopt import rewards
    from pmopt.world.config import WorldConfig
    from pmopt.world.raters import features, utility

    class Length(rewards.Reward):
        def __init__(self, spec, options):
            self.name, self.extra = spec.name, {}

        def __call__(self, prompts, responses, metas):
            return torch.tensor([float(len(r)) for r in responses])

    monkeypatch.setitem(rewards._KINDS, "length", Length)  # register_kind, undone after the test
    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    monkeypatch.setattr(shards_module, "sample", lambda *a, **k: pytest.fail("generation was called"))
    run_bon(make_cfg(tiny_world, pms, [{"name": "raters", "kind": "raters"}, {"name": "len", "kind": "length"}]), out)
    samples = [row for k in range(4) for row in read_jsonl(finished / "samples" / f"shard-{k:05d}.jsonl")]
    by_id = {r["id"]: r for r in plan_sweep(make_cfg(tiny_world, pms)).records}
    raters = load_config(WorldConfig, tiny_world / "config.yaml").raters
    want = [utility(raters, features(by_id[s["prompt_id"]]["meta"], s["response"])) for s in samples]
    assert [r["score"] for r in read_jsonl(out / "scores" / "raters.jsonl")] == want  # float64, exact
    assert [r["score"] for r in read_jsonl(out / "scores" / "len.jsonl")] == [float(len(s["response"])) for s in samples]
    assert json.loads((out / "scores" / "raters.json").read_text())["path"] is None  # the world by default
    rows = curves(out)
    assert {"raters", "len"} <= {r["pm"] for r in rows}
    lengths = np.array([len(s["response"]) for s in samples], dtype=float).reshape(-1, N_MAX)
    assert value(rows, "len", "pm/score", N_MAX) == pytest.approx(lengths.max(axis=1).mean())


def test_reusing_a_pm_name_for_another_pm_is_an_error(finished, tiny_world, pms, tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    entries = [{"name": "proxy", "path": str(pms["proxy"]), "kind": "prefixed"}]
    with pytest.raises(PmoptError, match=r"proxy.json.*another PM entry.*changed: kind, prefix"):
        run_bon(make_cfg(tiny_world, pms, entries), out)


def test_pm_load_options_reach_the_sweeps_pms_and_its_cache(finished, tiny_world, pms, tmp_path, capsys):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    with pytest.raises(PmoptError, match=r"proxy.json.*another PM entry.*changed: pm_load.max_length"):
        run_bon(make_cfg(tiny_world, pms, pm_load={"max_length": 12}), out)
    entries = [{"name": "proxy-short", "path": str(pms["proxy"])}]
    run_bon(make_cfg(tiny_world, pms, entries, pm_load={"max_length": 12, "max_batch_tokens": 64}), out)
    rows = read_jsonl(out / "scores" / "proxy-short.jsonl")
    samples = {(r["prompt_id"], r["sample_idx"]): r["response"] for k in range(4)
               for r in read_jsonl(out / "samples" / f"shard-{k:05d}.jsonl")}
    by_id = {r["id"]: r for r in plan_sweep(make_cfg(tiny_world, pms)).records}
    pm = PreferenceModel.load(pms["proxy"], device="cpu", max_length=12)
    expected = pm.score([by_id[r["prompt_id"]]["prompt"] for r in rows],
                        [samples[(r["prompt_id"], r["sample_idx"])] for r in rows])
    assert pm.n_truncated > 0 and [r["score"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-4)
    assert f"PM 'proxy-short': {pm.n_truncated} scored sequences truncated" in capsys.readouterr().out
    plain = {(r["prompt_id"], r["sample_idx"]): r["score"] for r in read_jsonl(out / "scores" / "proxy.jsonl")}
    assert any(abs(plain[(r["prompt_id"], r["sample_idx"])] - r["score"]) > 1e-4 for r in rows)


# ----------------------------------------------------------------------------- resume and determinism


def test_resume_after_deleted_shard_regenerates_only_it(finished, tiny_world, pms, monkeypatch, tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    (out / "samples" / "shard-00003.jsonl").unlink()
    (out / "curves.jsonl").unlink()
    calls = count_calls(monkeypatch, shards_module, "sample")
    run_bon(make_cfg(tiny_world, pms), out)
    assert len(calls) == 1 and len(calls[0][0][2]) == 1  # the last shard holds one prompt
    assert (out / "samples" / "shard-00003.jsonl").read_bytes() == (finished / "samples" / "shard-00003.jsonl").read_bytes()
    assert curves(out) == curves(finished)


def test_resume_after_crash_mid_sampling(finished, tiny_world, pms, monkeypatch, tmp_path):
    out = tmp_path / "sweep"
    real = shards_module.sample
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-sweep")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_module, "sample", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_bon(make_cfg(tiny_world, pms), out)
    assert sorted(p.name for p in (out / "samples").glob("shard-*")) == ["shard-00000.jsonl"]
    assert not list((out / "samples").glob(".*tmp"))  # no torn shard left behind
    assert not (out / "curves.jsonl").exists()
    calls.clear()
    monkeypatch.setattr(shards_module, "sample", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    run_bon(make_cfg(tiny_world, pms), out)
    assert len(calls) == 3  # shards 1..3; shard 0 was kept
    assert curves(out) == curves(finished)


def test_same_seed_same_curves_other_seed_differs(finished, tiny_world, pms, tmp_path):
    run_bon(make_cfg(tiny_world, pms), tmp_path / "again")
    assert (tmp_path / "again" / "curves.jsonl").read_bytes() == (finished / "curves.jsonl").read_bytes()
    run_bon(make_cfg(tiny_world, pms, seed=1), tmp_path / "other")
    assert (tmp_path / "other" / "samples" / "shard-00000.jsonl").read_bytes() != \
        (finished / "samples" / "shard-00000.jsonl").read_bytes()


def test_changed_sampling_config_on_existing_samples_is_an_error(finished, tiny_world, pms, tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    with pytest.raises(PmoptError, match=r"drawn under another config \(changed: n_max, seed"):
        run_bon(make_cfg(tiny_world, pms, seed=3, n_max=2), out)


def test_sharded_sampling_equals_one_process(finished, tiny_world, pms, tmp_path):
    """Each of two ranks draws its share of the missing shards; together they equal one process."""
    from pmopt.bon.shards import generate_shards, missing_shards, shard_count

    cfg = make_cfg(tiny_world, pms)
    plan = plan_sweep(cfg)
    out = tmp_path / "two"
    missing = missing_shards(out, shard_count(len(plan.records), cfg.shard_size))
    assert missing == [0, 1, 2, 3]
    for rank in (1, 0):  # any order: the share depends only on the missing list
        generate_shards(out, plan.records, missing[rank::2], cfg, rank=rank, world_size=2)
    assert json.loads((out / "samples" / "ranks" / "rank-00001.json").read_text())["shards"] == [1, 3]
    for k in range(4):
        name = f"shard-{k:05d}.jsonl"
        assert (out / "samples" / name).read_bytes() == (finished / "samples" / name).read_bytes()


# ----------------------------------------------------------------------------- bad input


def test_nan_score_is_an_error_naming_pm_and_sample(finished, tiny_world, pms, monkeypatch, tmp_path):
    import shutil

    import torch

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    real_score = PreferenceModel.score

    def broken(self, prompts, responses, **kwargs):
        scores = real_score(self, prompts, responses, **kwargs)
        scores[5] = float("nan")
        return scores

    monkeypatch.setattr(PreferenceModel, "score", broken)
    entries = [{"name": "broken", "path": str(pms["proxy"])}]
    first = plan_sweep(make_cfg(tiny_world, pms)).records[1]["id"]  # flat index 5 = prompt 1, sample 1
    with pytest.raises(PmoptError, match=rf"PM 'broken' .*score nan for sample 1 of prompt '{first}'"):
        run_bon(make_cfg(tiny_world, pms, entries), out)
    assert not (out / "scores" / "broken.jsonl").exists()
    assert torch.isfinite(real_score(PreferenceModel.load(pms["proxy"]), ["hi"], ["there"])).all()


@pytest.mark.parametrize("change, message", [
    ({"probes": ["answer", "are_you_sure"]}, "'are_you_sure' does not grade plain samples"),
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"n_grid": [1, 8]}, "n_grid must be increasing integers in \\[1, n_max=4\\]"),
    ({"pms": [{"name": "a b", "kind": "gold"}]}, "must be letters"),
    ({"pms": [{"name": "g", "kind": "gold"}, {"name": "g", "kind": "gold"}]}, "names must be unique"),
    ({"world": None, "policy": "x", "probe_sources": {"answer": "y"}, "probes": ["answer"],
      "pms": [{"name": "g", "kind": "gold"}]}, "kind gold needs world"),
    ({"pms": [{"name": "p", "path": "/nonexistent/pm"}]}, "pms.p: path /nonexistent/pm does not exist"),
    ({"pms": [{"name": "p", "path": "WORLD", "kind": "ensemble"}]}, "has no ensemble.json"),
    ({"pms": [{"name": "p", "kind": "bogus"}]}, r"pms.p: unknown kind 'bogus': not a PM kind .* nor a reward of the "
                                               r"source 'world' .*\(it has: gold, raters\)"),
    ({"pms": [{"name": "g", "kind": "gold", "prefix": "non_sycophantic"}]}, "pms.g: kind gold takes no prefix"),
    ({"pms": [{"name": "p", "path": "WORLD", "kind": "prefixed", "prefix": "nice"}]},
     r"pms.p: prefix 'nice': expected one of \['non_sycophantic'\]"),
    ({"pms": [{"name": "p", "path": "WORLD", "kind": "ensemble", "aggregate": "median"}]},
     "pms.p: aggregate must be one of"),
    ({"world": "WORLD/probes", "policy": "WORLD/policy"}, "world: .*probes is not a source directory"),
])
def test_bad_config_fails_before_anything_is_written(tiny_world, pms, tmp_path, change, message):
    out = tmp_path / "never"
    change = json.loads(json.dumps(change).replace("WORLD", str(tiny_world)))
    with pytest.raises((ConfigError, PmoptError), match=message):
        run_bon(make_cfg(tiny_world, pms, change.pop("pms", None), **change), out)
    assert not out.exists()


def test_config_built_in_python_is_validated_too(tiny_world, tmp_path):
    from pmopt.bon.sweep import PMEntry

    cfg = BonConfig(world=str(tiny_world), n_max=4, pms=[PMEntry(name="p", kind="pm")])  # no path
    with pytest.raises(ConfigError, match="pms.p: path is required"):
        run_bon(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_bad_probe_record_names_file_line_and_field(tiny_world, pms, tmp_path):
    lines = (tiny_world / "probes" / "mimicry.jsonl").read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["meta"]["incorrect"]
    source = tmp_path / "mimicry.jsonl"
    source.write_text("\n".join([lines[0], json.dumps(broken)]) + "\n")
    with pytest.raises(PmoptError, match=r"mimicry.jsonl:2: field 'meta.incorrect'"):
        run_bon(make_cfg(tiny_world, pms, probe_sources={"mimicry": str(source)}), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_cli_error_exit_code(tiny_world, tmp_path, capsys):
    from pmopt.cli import main

    config = tmp_path / "bon.yaml"
    config.write_text(f"world: {tiny_world}\npms: [{{name: g, kind: gold}}]\nprobes: [are_you_sure]\n")
    assert main(["bon", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "are_you_sure" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real data


def test_sycophancy_eval_file_without_world(tiny_world, pms, shared_data, tmp_path):
    """A real SycophancyEval answer file loads as it is; without a world there is no gold reward."""
    source = shared_data / "sycophancy-eval" / "answer.sample.jsonl"
    cfg = load_config(BonConfig, data={
        "policy": str(tiny_world / "policy"), "probes": ["answer"], "probe_sources": {"answer": str(source)},
        "n_max": 2, "n_boot": 10, "sampling": {"max_new_tokens": 6},
        "pms": [{"name": "proxy", "path": str(pms["proxy"])}]})
    run_bon(cfg, tmp_path)
    rows = curves(tmp_path)
    metrics = {r["metric"] for r in rows}
    assert {"probe/answer/accuracy/plain", "probe/answer/syco_rate", "pm/score"} <= metrics
    assert not any(m.startswith("gold/") for m in metrics)
    assert len(read_jsonl(tmp_path / "grades.jsonl")) == 4 * 2


def test_a_source_reward_scores_its_own_prompts_only(tiny_world, pms, shared_data, tmp_path):
    """kind gold is the world's reward: prompts of another source (here SycophancyEval's) are refused
    before anything is written."""
    source = shared_data / "sycophancy-eval" / "answer.sample.jsonl"
    cfg = make_cfg(tiny_world, pms, [{"name": "gold", "kind": "gold"}], probes=["answer"],
                   probe_sources={"answer": str(source)})
    with pytest.raises(PmoptError, match=r"kind gold scores world prompts only \(meta.source is "):
        run_bon(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "bon").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(BonConfig, path)
        assert cfg.pms and cfg.grid()[-1] == cfg.n_max


def test_report_reads_a_sweep_directory(finished, tmp_path):
    from pmopt.report import build_report

    page = build_report(finished, tmp_path / "report")
    assert "probe/answer/syco_rate" in page.read_text() and list((tmp_path / "report" / "plots").glob("*.png"))


# ----------------------------------------------------------------------------- work split across processes


class _ThreadGroup:
    """A fake process group of `world` threads: all_gather and wait_for_everyone through a barrier."""

    def __init__(self, world: int):
        import threading

        self.world, self.barrier, self.slots = world, threading.Barrier(world, timeout=30), [None] * world

    def member(self, rank: int):
        import types

        group = self

        def all_gather(obj):
            group.slots[rank] = obj
            group.barrier.wait()
            gathered = list(group.slots)
            group.barrier.wait()
            return gathered

        return types.SimpleNamespace(process_index=rank, num_processes=self.world, is_main_process=rank == 0,
                                     wait_for_everyone=lambda: group.barrier.wait(), all_gather=all_gather)

    def run(self, fn):
        """fn(state) on every rank, in threads; each rank's result or exception."""
        import threading

        results: list = [None] * self.world

        def target(rank):
            try:
                results[rank] = fn(self.member(rank))
            except Exception as exc:  # noqa: BLE001 - returned to the test
                results[rank] = exc

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


def test_sharded_map_splits_chunks_and_matches_one_process():
    from pmopt.bon.distribute import chunk_bounds, sharded_map

    calls = []

    def work(start, stop):
        calls.append((start, stop))
        return [i * i for i in range(start, stop)]

    single = sharded_map(None, work, 10, 3)
    assert chunk_bounds(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    calls.clear()
    tallies = {}

    def rank_run(state):
        tally = []
        out = sharded_map(state, work, 10, 3, tally)
        tallies[state.process_index] = tally
        return out

    results = _ThreadGroup(2).run(rank_run)
    assert results == [single, single]
    assert sorted(calls) == chunk_bounds(10, 3), "every chunk computed exactly once"
    assert tallies[0] == tallies[1] == [6, 4]


def test_sharded_map_error_on_one_rank_is_raised_on_every_rank():
    from pmopt.bon.distribute import sharded_map
    from pmopt.io import PmoptError

    def work(start, stop):
        if start == 3:  # rank 1's chunk
            raise PmoptError("bad record 3")
        return list(range(start, stop))

    results = _ThreadGroup(2).run(lambda state: sharded_map(state, work, 6, 3))
    assert all(isinstance(r, PmoptError) and "bad record 3" in str(r) for r in results)


def test_lm_judge_grading_split_across_processes_equals_one_process():
    """A real (tiny, random) LM judge: every process answers every P-th chunk of the unique queries and all
    get every grade, identical to one process; each query is answered exactly once across the ranks."""
    import types

    import torch
    from transformers import AutoModelForCausalLM

    from pmopt.bon.grades import grade_samples
    from pmopt.probes.judges import CORRECTNESS_PROMPT, LMJudge, option_logprobs
    from pmopt.probes.registry import get_probe
    from pmopt.world.models import tiny_llama_config, word_tokenizer

    words = ["paris", "lyon", "rome", "it", "is", "maybe", "capital", "of", "what", "the", "?"]
    tokenizer = word_tokenizer([CORRECTNESS_PROMPT, " ".join(words) + " CORRECT INCORRECT User: Assistant:"],
                               split_punctuation=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(tokenizer, max_position_embeddings=512)).eval()

    class CountingJudge(LMJudge):
        """The LM judge with its option log-likelihoods as verdicts (a tiny random LM's argmax hardly
        varies; these do, so a grade moved to another query would show) and a count of its queries."""

        def choose(self, prompts, options):
            self.asked = getattr(self, "asked", 0) + len(prompts)
            return option_logprobs(self.model, self.tokenizer, prompts, [options] * len(prompts), self.batch_size)

    def question(i):
        return f"what is the {words[i % 11]} of {words[(i * 7) % 11]} ?"

    records = [{"id": f"q{i}", "prompt": question(i),
                "meta": {"template": "plain", "correct_answer": words[i % 3], "incorrect_answer": words[(i + 1) % 3],
                         "question": question(i)}} for i in range(30)]
    responses = [[f"it is {words[i % 3]}", f"maybe {words[(i + 1) % 3]}"] for i in range(30)]
    plan = types.SimpleNamespace(records=records, probes={"answer": get_probe("answer")}, probe_of=["answer"] * 30)
    samples = types.SimpleNamespace(responses=responses, n=2)
    one = CountingJudge(model, tokenizer, batch_size=1)  # chunks of 32 queries (grades._JUDGE_CHUNKS_OF)
    single = grade_samples(plan, samples, one)
    # brute force: each sample graded alone (batch_size 1: every query is its own forward pass either way)
    alone = CountingJudge(model, tokenizer, batch_size=1)
    assert single == [[{k: float(v) for k, v in plan.probes["answer"].grade(record, response, judge=alone).items()}
                       for response in row] for record, row in zip(records, responses, strict=True)]
    judges = [CountingJudge(model, tokenizer, batch_size=1) for _ in range(2)]
    results = _ThreadGroup(2).run(lambda state: grade_samples(plan, samples, judges[state.process_index], state))
    assert results == [single, single]
    assert len({g["correct"] for row in single for g in row}) > 30, "the judge's verdicts vary"
    assert one.asked > 2 * 32 and judges[0].asked > 0 and judges[1].asked > 0
    assert judges[0].asked + judges[1].asked == one.asked, "each unique query answered once"
