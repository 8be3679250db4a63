"""benchmarks/gpu.py and the one-command device run (gpu_device.sh) on CPU with tiny models.

The GPU figures themselves need a GPU; this keeps the scripts from rotting (they run end to end on CPU
with `--sizes tiny`) and checks the parts the figures rest on: token counts, matmul parameter counts
(the N of the MFU formulas), the bytes of a decode step (the MBU's numerator), the Bradley-Terry loss as
TRL's RewardTrainer computes it, the PPO update's response-token mask, and what the device run installs,
checks and returns.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
SEQ_LEN, PAIRS, STEPS, PROMPTS, MAX_NEW, PPO_BATCH = 24, 2, 2, 2, 6, 3
N_VALUES, SAMPLE_BATCHES, DECODE_BATCHES, DECODE_STEPS, PROMPT_LEN = (2, 4), (3, 16), (1, 3), 3, 5


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("pmopt_benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny(gpu):
    tokenizer = gpu.build_tokenizer(gpu.SHAPES["tiny"]["vocab_size"])
    return tokenizer, gpu.model_config("tiny", tokenizer)


@pytest.fixture(scope="module")
def cpu_setup(gpu):
    return gpu.Setup(torch.device("cpu"), torch.float32, torch.float32, "sdpa", False, 1e9)


@pytest.fixture(scope="module")
def run(gpu, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench") / "bench.json"
    argv = ["--device", "cpu", "--sizes", "tiny", "--seq-len", str(SEQ_LEN), "--batch-size", str(PAIRS),
            "--n-values", ",".join(map(str, N_VALUES)), "--prompts", str(PROMPTS), "--prompt-len", str(PROMPT_LEN),
            "--max-new-tokens", str(MAX_NEW), "--ppo-batch", str(PPO_BATCH), "--steps", str(STEPS), "--warmup", "1",
            "--sample-batch-sizes", ",".join(map(str, SAMPLE_BATCHES)), "--loop-prompts", "1",
            "--decode-batches", ",".join(map(str, DECODE_BATCHES)), "--decode-steps", str(DECODE_STEPS),
            "--matmul-size", "128", "--copy-mib", "8", "--threads", "1", "--out", str(out)]
    returned = gpu.main(argv)
    return returned, json.loads(out.read_text())


def numbers(tree, path=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_cpu_run_measures_every_section(run):
    returned, res = run
    assert json.loads(json.dumps(returned, default=str)) == res
    assert res["peak"]["tflops"] > 0 and res["peak_tflops_used"] == res["peak"]["tflops"]
    assert res["bandwidth"]["gbps"] > 0 and res["peak_gbps_used"] == res["bandwidth"]["gbps"]
    assert list(res["sizes"]) == ["tiny"]
    tiny = res["sizes"]["tiny"]
    assert set(tiny) == {"config", "section_s", "pm_train", "pm_score", "sampling", "decode", "ppo"}
    assert list(tiny["section_s"]) == ["pm_train", "pm_score", "sampling", "decode", "ppo"]
    for path, value in numbers(tiny):
        assert math.isfinite(value), path
        assert value >= 0, path
    train, score, ppo = tiny["pm_train"], tiny["pm_score"], tiny["ppo"]
    for section, key in ((train, "tokens_per_s"), (train, "mfu"), (train, "step_s"), (score, "tokens_per_s"),
                         (score, "mfu"), (ppo, "generation_s"), (ppo, "scoring_s"), (ppo, "update_s"),
                         (ppo, "update_tokens_per_s"), (ppo, "update_mfu")):
        assert section[key] > 0, key
    for batch in DECODE_BATCHES:
        assert tiny["decode"]["by_batch"][str(batch)]["mbu"] > 0
    assert train["mfu_incl_attention"] > train["mfu"] and score["mfu_incl_attention"] > score["mfu"]
    # CPU: no GPU memory to report
    assert train["peak_mem_gib"] is None and score["peak_mem_gib"] is None and ppo["peak_mem_gib"] is None


def test_cpu_run_counts_exact_tokens(run):
    tiny = run[1]["sizes"]["tiny"]
    assert tiny["pm_train"]["tokens"] == 2 * PAIRS * SEQ_LEN * STEPS  # chosen + rejected sequences
    assert tiny["pm_score"]["tokens"] == 2 * PAIRS * STEPS * SEQ_LEN  # score batch defaults to 2 x pairs
    assert set(tiny["sampling"]["by_n"]) == {str(n) for n in N_VALUES}
    for n, b in tiny["sampling"]["by_n"].items():
        assert b["sequences"] == int(n) * PROMPTS and b["loop_sequences"] == int(n)  # --loop-prompts 1
        assert 0 < b["loop_tokens"] <= b["loop_sequences"] * MAX_NEW and b["loop_peak_mem_gib"] is None
        assert b["loop_tokens_per_s"] == pytest.approx(b["loop_tokens"] / b["loop_s"])
        assert list(b["batched"]) == [str(size) for size in SAMPLE_BATCHES]
        for batched in b["batched"].values():
            assert 0 < batched["tokens"] <= b["sequences"] * MAX_NEW and batched["peak_mem_gib"] is None
            assert batched["tokens_per_s"] == pytest.approx(batched["tokens"] / batched["s"])
            assert batched["ratio"] == pytest.approx(batched["tokens_per_s"] / b["loop_tokens_per_s"])
    decode = tiny["decode"]
    for batch in DECODE_BATCHES:
        d = decode["by_batch"][str(batch)]
        assert d["tokens_per_s"] == pytest.approx(batch / (d["step_ms"] / 1e3))
        assert d["gbps"] == pytest.approx(d["bytes_per_step"] / (d["step_ms"] / 1e3) / 1e9)
        assert d["mbu"] == pytest.approx(d["gbps"] / run[1]["peak_gbps_used"])
    ppo = tiny["ppo"]
    assert ppo["rollouts"] == PPO_BATCH
    assert ppo["step_s"] == pytest.approx(ppo["generation_s"] + ppo["scoring_s"] + ppo["update_s"])
    assert sum(ppo["shares"].values()) == pytest.approx(1.0)


def test_table_names_every_target(run, gpu):
    text = gpu.table(run[1])
    assert "PM train" in text and "target >= 0.4" in text
    assert "PM score" in text and "target >= 0.5" in text
    assert "BoN N=2" in text and "BoN N=4" in text and "PPO-like step" in text
    assert "batch 3: batched" in text and "batch 16: batched" in text
    assert "decode B=1, context 5" in text and "decode B=3, context 5" in text and "(MBU)" in text


def test_tokenizer_has_the_config_vocabulary(gpu, tiny):
    tokenizer, config = tiny
    assert len(tokenizer) == config.vocab_size == gpu.SHAPES["tiny"]["vocab_size"]
    prompt = gpu.make_prompts(1, 7, config.vocab_size, seed=3)[0]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and tokenizer.unk_token_id not in ids


def test_real_size_configs_have_published_parameter_counts(gpu):
    """Qwen2-0.5B has 494,032,768 parameters and Qwen2-1.5B 1,543,714,304 (tied embeddings): counted on `meta`."""
    from transformers import AutoModelForCausalLM

    for size, total in {"0.5b": 494_032_768, "1.5b": 1_543_714_304}.items():
        config = gpu.model_config(size, _FakeTokenizer(gpu.SHAPES[size]["vocab_size"]))
        with torch.device("meta"):
            counts = gpu.param_counts(AutoModelForCausalLM.from_config(config))
        assert counts["total"] == total, size
        # every weight but the norms and biases takes part in a matmul (the embedding through the tied head)
        assert 0.999 * total < counts["matmul"] < total, size


class _FakeTokenizer:
    """Only the length and special ids the config reads: building a 152k-word tokenizer is not the point here."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, 3

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def test_matmul_params_hand_computed(gpu, tiny, cpu_setup):
    _, config = tiny
    d, i, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * i  # q, k, v, o projections; gate, up, down
    lm = gpu.build_model("lm", config, cpu_setup, torch.float32, train=False)
    pm = gpu.build_model("pm", config, cpu_setup, torch.float32, train=False)
    assert gpu.param_counts(lm)["matmul"] == layers * per_layer + v * d  # the tied LM head is a matmul
    assert gpu.param_counts(pm)["matmul"] == layers * per_layer + d  # the 1-label score head
    norms, biases = (2 * layers + 1) * d, layers * (d + 2 * kv)  # RMSNorm weights; q, k, v biases
    assert gpu.param_counts(pm)["total"] == gpu.param_counts(pm)["matmul"] + v * d + norms + biases


def test_attention_flops_hand_computed(gpu, tiny):
    _, config = tiny
    assert gpu.attention_flops_per_token(config, 100) == 4 * 2 * 64 * 100  # 4 * layers * d_attn * seq


def test_bradley_terry_loss_matches_separate_forwards(gpu, tiny, cpu_setup):
    tokenizer, config = tiny
    torch.manual_seed(0)
    model = gpu.build_model("pm", config, cpu_setup, torch.float32, train=False)
    chosen, rejected = (gpu.random_ids(3, 9, config.vocab_size, tokenizer.eos_token_id, "cpu") for _ in range(2))
    with torch.no_grad():
        loss = gpu.bradley_terry_loss(model, chosen, rejected)
        r_c, r_r = (model(input_ids=x).logits.squeeze(-1) for x in (chosen, rejected))
    assert loss.item() == pytest.approx(-F.logsigmoid(r_c - r_r).mean().item(), rel=1e-5)
    assert not torch.allclose(r_c, r_r)  # the pairs differ, so the check compares something


def test_new_tokens_counts_through_first_eos(gpu):
    eos = 1
    rows = torch.tensor([[5, 6, 1, 7, 1], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0]])
    brute = sum(next((j + 1 for j, t in enumerate(row) if t == eos), len(row)) for row in rows.tolist())
    assert gpu.new_tokens(rows, eos) == brute == 3 + 5 + 1


def test_ppo_update_loss_covers_response_tokens_only(gpu, tiny, cpu_setup):
    tokenizer, config = tiny
    torch.manual_seed(1)
    policy = gpu.build_model("lm", config, cpu_setup, torch.float32, train=False)
    sequences, prompt_lens = [[7, 8, 9, 10, 11, 1], [12, 13, 14, 15]], [3, 2]
    advantages = torch.tensor([0.5, -2.0])
    loss, tokens = gpu.response_logprob_loss(policy, sequences, prompt_lens, advantages, tokenizer.pad_token_id)
    brute, count = 0.0, 0
    with torch.no_grad():
        for seq, start, adv in zip(sequences, prompt_lens, advantages.tolist(), strict=True):
            logp = torch.log_softmax(policy(input_ids=torch.tensor([seq])).logits[0], -1)
            for t in range(start, len(seq)):
                brute -= adv * logp[t - 1, seq[t]].item()
                count += 1
    assert tokens == sum(map(len, sequences))
    assert loss.item() == pytest.approx(brute / count, rel=1e-4)


def test_out_of_memory_is_recorded_not_fatal(gpu, run):
    def exhausted(*_args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    def broken(*_args):
        raise ValueError("a bug")

    setup = gpu.Setup(torch.device("cpu"), torch.float32, torch.float32, "sdpa", False, 1e9)
    assert gpu.guarded(exhausted, None, setup, None, None) == {"error": "out of memory", "peak_mem_gib": None}
    with pytest.raises(ValueError, match="a bug"):  # anything else is a failure
        gpu.guarded(broken, None, setup, None, None)
    res = json.loads(json.dumps(run[1]))
    res["sizes"]["tiny"]["ppo"] = {"error": "out of memory", "peak_mem_gib": 70.25}
    assert "| tiny | ppo: out of memory | | | | 70.2 GiB |" in gpu.table(res)


def test_decode_bytes_hand_computed_and_match_the_real_cache(gpu, tiny, cpu_setup):
    """K and V per cached token (2 x layers x kv heads x head dim x bytes), checked against the bytes of the
    cache a real prefill leaves; a step moves every weight, the cache at its context plus one, and the logits."""
    tokenizer, config = tiny
    per_token = 2 * 2 * 2 * (64 // 4) * 4  # K+V, 2 layers, 2 kv heads, head dim 16, float32
    assert gpu.kv_bytes_per_token(config, 4) == per_token
    assert gpu.decode_step_bytes(1000, config, 3, 10, 4) == 1000 + per_token * 3 * 11 + 3 * config.vocab_size * 4
    model = gpu.build_model("lm", config, cpu_setup, torch.float32, train=False)
    with torch.inference_mode():
        cache = gpu._cache_of(model(input_ids=gpu.random_ids(3, 10, config.vocab_size, 1, "cpu"), use_cache=True))
    cached = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert cached == per_token * 3 * 10


def test_copy_bandwidth_counts_read_and_write(gpu, monkeypatch):
    monkeypatch.setattr(gpu, "timed_repeats", lambda device, work, iters: 0.5)  # the arithmetic, not the clock
    res = gpu.copy_bandwidth(torch.device("cpu"), mib=4, iters=10)
    assert res["gbps"] == pytest.approx(2 * 4 * 2**20 * 10 / 0.5 / 1e9)


# ----------------------------------------------------------------------------- the device run (gpu_device.sh)

BENCH = SCRIPT.parent
REPO = BENCH.parent


@pytest.fixture(scope="module")
def device_driver():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_device
        import gpu_walkthrough

        yield gpu_device, gpu_walkthrough
    finally:
        sys.path.remove(str(BENCH))


def pinned(path: Path) -> dict[str, str]:
    specs = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(((spec.split("==") + [""])[:2]) for spec in specs if spec)


def norm(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def test_wheel_pins_complete_the_image_for_pmopt():
    """One version per carried wheel, none the image already has, and every dependency of pmopt is in the
    image or carried: a new dependency without a wheel fails here, not on the GPU."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    wheels, image = pinned(BENCH / "gpu_wheels.txt"), pinned(BENCH / "gpu_image.txt")
    assert wheels and all(wheels.values()), wheels  # every wheel pinned to one version
    assert not {norm(n) for n in wheels} & {norm(n) for n in image}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    have = {norm(n) for n in [*wheels, *image]}
    assert [d for d in deps if norm(Requirement(d).name) not in have] == []
    for name in ("transformers", "torch", "accelerate"):  # what KINDS.md reads off the machine
        assert image[name], name


def test_walkthrough_runs_the_readme_commands(device_driver):
    from test_walkthrough import COMMANDS

    assert device_driver[1].COMMANDS == COMMANDS


def test_unmet_requirements_finds_missing_and_out_of_range(device_driver, tmp_path, monkeypatch):
    info = tmp_path / "fake_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pkg\nVersion: 0.1\n"
                                   "Requires-Dist: torch<1\nRequires-Dist: no-such-package-pmopt>=1\n"
                                   "Requires-Dist: torch>=1\nRequires-Dist: numpy<1; extra == 'x'\n"
                                   'Requires-Dist: numpy<1; python_version < "3"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from importlib.metadata import version

    unmet = device_driver[0].unmet_requirements(["fake-pkg", "not-installed-pmopt"])
    assert unmet == [f"fake-pkg needs torch<1; found {version('torch')}",
                     "fake-pkg needs no-such-package-pmopt>=1; found None", "not-installed-pmopt: not installed"]


def test_bundle_returns_flat_files_within_the_device_limit(device_driver, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    (work / "walkthrough" / "logs").mkdir(parents=True)
    for name in ("env", "gpu-0.5b", "gpu-1.5b", "walkthrough"):
        (work / f"{name}.json").write_text("{}")
    (work / "logs" / "env.log").write_text("e")
    (work / "walkthrough" / "logs" / "bon.log").write_text("b")
    written = device_driver[0].bundle(work, out, {"steps": {}})
    assert sorted(p.name for p in out.iterdir()) == sorted(written) and len(written) == 6
    assert all(p.is_file() for p in out.iterdir())  # the device returns no more than 2 folders down
    import tarfile

    with tarfile.open(out / "logs.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["logs/env.log", "walkthrough/logs/bon.log"]
    (work / "extra.json").write_text("{}")
    (out / "console.log").write_text("tee'd by the device command")  # 6 + 1 + 1 = 8: still returned whole
    assert len(device_driver[0].bundle(work, out, {})) == 7
    (work / "extra2.json").write_text("{}")
    with pytest.raises(RuntimeError, match="9 files .* 8 at most"):
        device_driver[0].bundle(work, out, {})


@pytest.mark.slow
def test_device_script_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_device.sh --sizes tiny --cpu: every step of the GPU run, tiny models, this environment
    (no wheel install). ~60 s of CPU; 2-3 min wall on a shared 2-core machine."""
    import subprocess

    from conftest import require_shared

    data = require_shared("")
    out = tmp_path / "out"
    done = subprocess.run([str(BENCH / "gpu_device.sh"), "--no-install", "--sizes", "tiny", "--cpu", "--data",
                           str(data), "--budget-s", "1500", "--out", str(out)],  # a shared CPU can be slow
                          capture_output=True, text=True, timeout=1600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.json", "gpu-tiny.json", "logs.tar.gz", "summary.json", "walkthrough.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["steps"]) == ["env", "gpu-tiny", "walkthrough"]
    assert all(step["rc"] == 0 for step in summary["steps"].values()), summary["steps"]
    env = summary["results"]["env"]
    assert env["unmet"] == [] and env["packages"]["trl"]["version"] and env["torch"]["available"] is False
    assert set(env["imports"].values()) == {"ok"}
    tiny = summary["results"]["gpu-tiny"]["sizes"]["tiny"]
    assert set(tiny["section_s"]) == {"pm_train", "pm_score", "sampling", "decode", "ppo"}
    walk = summary["results"]["walkthrough"]
    assert walk["ok"] is True and list(walk["stages"]) == ["train-pm", "bon", "probe", "report"]
    assert set(walk["checks"].values()) == {True}
    assert "walkthrough (tiny, cpu)" in done.stdout and "| tiny | decode B=1" in done.stdout


def test_steps_stop_at_the_budget_with_their_whole_process_group(device_driver, tmp_path, monkeypatch):
    """A step past its time is killed with the processes it started; a step with under 5 s left is skipped;
    a step is told its seconds (less 10 to write its JSON). ~5 s."""
    import time

    gpu_device = device_driver[0]
    monkeypatch.setattr(gpu_device, "CAPS", {"told": 0.3, "slow": 0.04, "after": 0.5})  # of 100 s
    pid_file, told = tmp_path / "grandchild.pid", tmp_path / "told"
    grandchild = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    slow = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
            "time.sleep(60)")
    plan = [("told", [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(told),
                      gpu_device.BUDGET]),
            ("slow", [sys.executable, "-c", slow])]
    done = gpu_device.run_steps(plan, time.monotonic() + 60, tmp_path, 100)
    assert done["told"]["rc"] == 0 and int(told.read_text()) == round(done["told"]["timeout_s"] - 10) == 20
    assert done["slow"]["rc"] == "timeout" and 4 <= done["slow"]["s"] < 10
    grandchild_pid = int(pid_file.read_text())
    for _ in range(40):  # the kill is immediate; being reaped by init may take a moment
        status = Path(f"/proc/{grandchild_pid}/status")
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the slow step's child {grandchild_pid} outlived it")
    later = gpu_device.run_steps([("after", [sys.executable, "-c", "pass"])], time.monotonic() + 4, tmp_path, 100)
    assert later["after"]["rc"] == "skipped: time budget spent"


def test_walkthrough_models_have_the_published_sizes(device_driver):
    """The real-size stand-ins, counted on `meta`: Qwen2.5-1.5B-Instruct 1,543,714,304 and Qwen2.5-0.5B-Instruct
    494,032,768 parameters; deberta-v3-large 131M embedding + 304M backbone (its model card), + the RM head."""
    from builders import deberta_v2_config, qwen2_config
    from transformers import DebertaV2ForSequenceClassification, Qwen2ForCausalLM

    walk = device_driver[1]
    shapes, tokenizer = walk.SHAPES["real"], _FakeTokenizer(32000)
    for name, total in {walk.POLICY: 1_543_714_304, walk.PM_BASE: 494_032_768}.items():
        with torch.device("meta"):
            model = Qwen2ForCausalLM(qwen2_config(tokenizer, shapes[name]))
        assert sum(p.numel() for p in model.parameters()) == total, name
    with torch.device("meta"):
        rm = DebertaV2ForSequenceClassification(deberta_v2_config(tokenizer, shapes[walk.PUBLISHED]))
    embedding = rm.deberta.embeddings.word_embeddings.weight.numel()
    assert embedding == 128100 * 1024
    head = sum(p.numel() for p in rm.classifier.parameters())  # the RM's 1-label score head
    assert round((sum(p.numel() for p in rm.parameters()) - embedding - head) / 1e6) == 304  # encoder + pooler
