"""scripts/reference_numbers.py: the documents' numbers written from run directories, and a tiny run checked
against them, on small run directories made here (the real runs are minutes long: test_fresh_clone.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics

import pytest
from conftest import REPO

from pmopt.analysis.claims import bon_claim, headline, verdict_sentence

spec = importlib.util.spec_from_file_location("reference_numbers", REPO / "scripts" / "reference_numbers.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

LOCKED = ref.lock_versions()
VERSIONS = {name: LOCKED[name] for name in ("transformers", "trl", "accelerate", "peft", "datasets")}
VERSIONS["torch"] = LOCKED["torch"] + "+cpu"


def row(pm, metric, n, value, low=None, high=None, seeds=None):
    out = {"method": "bon", "pm": pm, "n": n, "kl": 0.0, "kl_kind": "bound", "metric": metric, "value": value,
           "ci_low": value if low is None else low, "ci_high": value if high is None else high}
    return out | ({"seed_values": seeds} if seeds else {})


def make_run(path, syco_end=0.9, seeds=(0, 1, 2), console=True):
    """A multi-seed run's files as pmopt writes them, with a known claim."""
    rows = []
    for pm, end in (("proxy", syco_end), ("proxy-nonsyc", 0.05), ("unbiased", 0.04), ("gold", 0.0)):
        rows += [row(pm, "probe/answer/syco_rate", 1, 0.45, 0.40, 0.50),
                 row(pm, "probe/answer/syco_rate", 32, end, max(0.0, end - 0.04), min(1.0, end + 0.04), [end] * len(seeds)),
                 row(pm, "kl/support", 1, 0.0), row(pm, "kl/support", 32, 1.04, 0.98, 1.10)]
    (path / "bon").mkdir(parents=True)
    (path / "bon" / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    claim = bon_claim(rows)
    claims = {"claim": claim, "per_seed": {str(k): claim for k in seeds}, "verdict": verdict_sentence({k: claim for k in seeds})}
    (path / "claims.json").write_text(json.dumps(claims))
    manifest = {"created": "2026-12-07T18:40:38", "seeds": list(seeds), "versions": dict(VERSIONS),
                "environment": {"cpu": "AMD EPYC", "cpu_count": 2, "python": "3.11.7", "torch_threads": 1}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    for k in seeds:
        (path / f"seed-{k}" / "pms" / "proxy").mkdir(parents=True)
        (path / f"seed-{k}" / "pms" / "proxy" / "pmopt_pm.json").write_text(json.dumps({"eval_accuracy": 0.7 + k / 100}))
    stats = {key: {"mean": 0.5, "min": 0.4, "max": 0.6} for key in
             ("neutral_accuracy", "sycophancy_rate", "are_you_sure_flip_rate", "mimicry_rate", "feedback_sycophancy")}
    stats["rater_label_agreement"] = {"mean": 0.85, "min": 0.84, "max": 0.86}
    (path / "aggregate").mkdir()
    (path / "aggregate" / "world_stats.json").write_text(json.dumps({"values": stats}))
    (path / "report" / "plots").mkdir(parents=True)
    (path / "report" / "plots" / "headline.png").write_bytes(b"\x89PNG figure of " + path.name.encode())
    if console:
        lines = ["run: 3 seed(s) to run"] + [f"run: {line}" for line in headline(claim)] + [f"run: {claims['verdict']}"]
        (path / "console.txt").write_text("\n".join(lines) + "\n")
    return path


def test_the_table_reads_each_pm_from_n_1_to_n_max(tmp_path):
    table = ref.table_block(make_run(tmp_path / "run"))
    lines = table.splitlines()
    assert lines[0] == "| metric | proxy PM | same PM + non-sycophantic prefix | PM on unbiased raters | gold reward |"
    assert lines[2] == ("| `answer/syco_rate` | 0.45 → **0.90** [0.86, 0.94] (0.90, 0.90, 0.90) | "
                        "0.45 → **0.05** [0.01, 0.09] (0.05, 0.05, 0.05) | 0.45 → 0.04 [0.00, 0.08] (0.04, 0.04, 0.04) | "
                        "0.45 → 0.00 [0.00, 0.04] |")
    # the KL starts at 0 exactly; the bound at n = 32 is log 32 - 31/32
    assert lines[-1].startswith("| `kl/support` (nats; bound 2.50) | 0 → 1.04 [0.98, 1.10] |")


def test_write_fills_every_block_and_a_second_write_changes_nothing(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    for name in ("README.md", "docs/results.md", "docs/reproduce.md"):
        shutil.copy(REPO / name, root / name)
    run, tiny, seeds = make_run(tmp_path / "run"), make_run(tmp_path / "tiny", seeds=(0,)), make_run(
        tmp_path / "seeds", seeds=(0, 1, 2, 3, 4))
    claims = json.loads((seeds / "claims.json").read_text())
    ends = (0.88, 0.92, 0.96, 1.0, 0.9)  # seeds that differ
    for k, end in zip("01234", ends, strict=True):
        claims["per_seed"][k] = json.loads(json.dumps(claims["claim"]))
        claims["per_seed"][k]["proxy_n"] = {"value": end, "ci_low": end - 0.05, "ci_high": min(1.0, end + 0.05)}
    (seeds / "claims.json").write_text(json.dumps(claims))

    assert len(ref.write(run, tiny, seeds, root)) == 4
    assert (root / "docs" / "quickstart_headline.png").read_bytes() == (run / "report" / "plots" / "headline.png").read_bytes()
    readme = (root / "README.md").read_text()
    assert ref.table_block(run) in readme and "(made before the lock)" not in readme
    assert "run: 3 seed(s) to run" in readme and "Made on AMD EPYC (2 cores" in readme
    assert "0.70 / 0.71 / 0.72 (seeds 0 / 1 / 2)" in (root / "docs" / "results.md").read_text()
    documented = ref.documented_tiny(root)
    assert documented["claim"]["proxy_n"]["value"] == 0.9 and documented["seeds"] == 5
    # mean - (3 sd + the widest seed's half-width 0.05); the top clipped at 1; n = 1 is 0.45 [0.40, 0.50] on every seed
    assert documented["bounds"]["proxy_n"] == [round(statistics.fmean(ends) - 3 * statistics.stdev(ends) - 0.05, 2), 1.0]
    assert documented["bounds"]["proxy_1"] == [0.4, 0.5]
    assert ref.write(run, tiny, seeds, root) == []
    (root / "README.md").write_text("<!-- reference:table -->\nold\n<!-- /reference:table -->\n")
    assert ref.write(None, tiny, seeds, root) == []  # the tiny runs alone leave the quickstart's blocks be
    assert "old" in (root / "README.md").read_text()


def test_a_run_not_made_with_the_lock_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["versions"]["transformers"] = "5.24.0"
    with pytest.raises(ref.ReferenceError, match=r"transformers 5\.24\.0 \(lock: "):
        ref.check_locked(manifest, run)
    ref.check_locked(json.loads((make_run(tmp_path / "ok") / "manifest.json").read_text()), run)


def test_a_console_of_another_run_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    other = make_run(tmp_path / "other", syco_end=0.8)
    shutil.copy(other / "console.txt", run / "console.txt")
    with pytest.raises(ref.ReferenceError, match="does not hold this run's headline"):
        ref.console_block(run)
    (run / "console.txt").unlink()
    with pytest.raises(ref.ReferenceError, match="tee"):
        ref.console_block(run)


def documented_for(run, **machine):
    claim = json.loads((run / "claims.json").read_text())["claim"]
    manifest = json.loads((run / "manifest.json").read_text())
    out = {"cpu": "AMD EPYC", "capability": "AVX512", "python": "3.11.7", "versions": manifest["versions"],
           "threads": 1, "n_max": 32, "claim": {p: claim[p] for p in ref.CLAIM_POINTS},
           "bounds": {"proxy_1": [0.35, 0.55], "proxy_n": [0.85, 1.0]}}
    return out | machine


def test_check_tiny_wants_equality_on_the_documented_machine_and_bounds_elsewhere(tmp_path, monkeypatch):
    import pmopt.io

    monkeypatch.setattr(pmopt.io, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(ref, "cpu_capability", lambda: "AVX512")
    run = make_run(tmp_path / "run", seeds=(0,))
    assert ref.check_tiny(run, documented_for(run))[0]
    nudged = documented_for(run)
    nudged["claim"]["proxy_n"]["value"] += 1e-12  # the same machine: a round-off's difference fails
    ok, lines = ref.check_tiny(run, nudged)
    assert not ok and any("!=" in line for line in lines)
    # another CPU: the same nudge passes, a value outside the bounds does not
    assert ref.check_tiny(run, nudged | {"cpu": "Intel Xeon"})[0]
    ok, lines = ref.check_tiny(make_run(tmp_path / "low", syco_end=0.8, seeds=(0,)), nudged | {"capability": "DEFAULT"})
    assert not ok and any("OUTSIDE [0.85, 1.00]" in line for line in lines)


def test_the_documents_carry_every_block():
    for name, blocks in (("README.md", ("console", "run", "table")), ("docs/results.md", ("console", "run", "facts", "table")),
                         ("docs/reproduce.md", ("tiny",))):
        text = (REPO / name).read_text(encoding="utf-8")
        for block in blocks:
            assert text.count(f"<!-- reference:{block} -->") == 1 and text.count(f"<!-- /reference:{block} -->") == 1
