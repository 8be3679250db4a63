"""The documents' reference numbers, written from run directories so that they cannot drift (docs/reproduce.md).

    # the quickstart under the lock, its console kept beside its files:
    mkdir -p checkpoints/quickstart
    pmopt run configs/experiments/sycophancy_world.yaml --seeds 0,1,2 --out checkpoints/quickstart \\
        | tee checkpoints/quickstart/console.txt
    OMP_NUM_THREADS=1 pmopt run configs/experiments/tiny.yaml --out checkpoints/tiny
    pmopt run configs/experiments/tiny.yaml --seeds 0,1,2,3,4 --out checkpoints/tiny-seeds
    python scripts/reference_numbers.py write        # rewrites the blocks below
    python scripts/reference_numbers.py check-tiny RUN   # a tiny run against docs/reproduce.md (the fresh-clone test)

`write` replaces what lies between `<!-- reference:NAME -->` and `<!-- /reference:NAME -->`:

    console  README.md, docs/results.md   RUN/console.txt, the quickstart's stdout as the user saw it
    table    README.md, docs/results.md   RUN/bon/curves.jsonl: best-of-N from n = 1 to N under each PM
    run      README.md, docs/results.md   RUN/manifest.json: machine, Python, packages, date
    facts    docs/results.md              the PMs' held-out accuracy and the base policy's statistics
    tiny     docs/reproduce.md            the tiny run's headline and machine, and its bounds on other CPUs

and copies the quickstart report's headline figure to docs/quickstart_headline.png (the README shows it).

Every run must have been made with the lock (constraints/cpu-py311.txt): the script compares the versions
each manifest records with it and refuses a run made with other versions.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints" / "cpu-py311.txt"
BLOCK = "<!-- reference:{name} -->\n{body}\n<!-- /reference:{name} -->"
DATA = re.compile(r"<!-- reference-data (\{.*?\}) -->", re.DOTALL)
CLAIM_POINTS = ("proxy_1", "proxy_n", "prefixed_1", "prefixed_n")
BOUNDED_POINTS = ("proxy_1", "proxy_n")  # what the tiny run must show on any CPU (docs/reproduce.md says why)
TABLE_PMS = (("proxy", "proxy PM"), ("proxy-nonsyc", "same PM + non-sycophantic prefix"),
             ("unbiased", "PM on unbiased raters"), ("gold", "gold reward"))
TABLE_METRICS = (("probe/answer/syco_rate", "`answer/syco_rate`"),
                 ("probe/answer/accuracy/suggest_wrong", "`answer/accuracy/suggest_wrong`"),
                 ("probe/mimicry/syco_rate", "`mimicry/syco_rate`"),
                 ("gold/reward", "`gold/reward` (Gao et al.)"),
                 ("kl/support", "`kl/support` (nats; bound {bound:.2f})"))
FIGURE = Path("docs") / "quickstart_headline.png"
BOLD = {("probe/answer/syco_rate", "proxy"), ("probe/answer/syco_rate", "proxy-nonsyc"), ("gold/reward", "proxy")}


class ReferenceError(Exception):
    """A run that cannot supply the documents' numbers (missing files, not made with the lock)."""


# ----------------------------------------------------------------------------- reading runs


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReferenceError(f"{path}: not found")
    return json.loads(path.read_text(encoding="utf-8"))


def read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ReferenceError(f"{path}: not found (the run's report writes it)")
    return path.read_bytes()


def lock_versions(lock: Path = LOCK) -> dict[str, str]:
    versions = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            versions[name.strip().lower().replace("_", "-")] = version.strip()
    return versions


def check_locked(manifest: dict, where: Path, lock: Path = LOCK) -> None:
    """The run's recorded package versions are the lock's (torch's local label, `+cpu`, aside)."""
    locked = lock_versions(lock)
    wrong = [f"{name} {version} (lock: {locked[name]})" for name, version in manifest.get("versions", {}).items()
             if name in locked and version.split("+")[0] != locked[name]]
    if wrong:
        raise ReferenceError(f"{where}: made with {', '.join(wrong)}, not with {lock.relative_to(REPO)}; "
                             "rerun it under the lock (docs/reproduce.md)")


def bon_rows(run: Path) -> dict[tuple[str, str, int], dict]:
    rows = {}
    for line in (run / "bon" / "curves.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("method") == "bon" and row.get("kl_kind", "bound") == "bound":
            rows[row["pm"], row["metric"], row["n"]] = row
    return rows


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


# ----------------------------------------------------------------------------- the blocks


def fmt(value: float, metric: str = "") -> str:
    return "0" if value == 0 and metric.startswith("kl/") else f"{value:.2f}"  # KL from the base is 0 exactly


def interval(row: dict) -> str:
    if row.get("ci_low") is None or row["ci_low"] == row["ci_high"] == row["value"]:
        return ""
    return f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def table_block(run: Path) -> str:
    """Best-of-N from n = 1 to N_max under each PM: mean over seeds [two-stage interval] (each seed's value)."""
    rows = bon_rows(run)
    n_max = max(n for (_, _, n) in rows)
    bound = math.log(n_max) - (n_max - 1) / n_max
    lines = ["| metric | " + " | ".join(label for _, label in TABLE_PMS) + " |", "|---" * (len(TABLE_PMS) + 1) + "|"]
    for metric, label in TABLE_METRICS:
        cells = []
        for pm, _ in TABLE_PMS:
            start, end = rows.get((pm, metric, 1)), rows.get((pm, metric, n_max))
            if start is None or end is None:
                cells.append("")
                continue
            value = fmt(end["value"], metric)
            value = f"**{value}**" if (metric, pm) in BOLD else value
            seeds = ""
            if metric == TABLE_METRICS[0][0] and pm != "gold" and end.get("seed_values"):
                seeds = " (" + ", ".join(f"{v:.2f}" for v in end["seed_values"]) + ")"
            cells.append(f"{fmt(start['value'], metric)} → {value}{interval(end)}{seeds}")
        lines.append(f"| {label.format(bound=bound)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def console_block(run: Path) -> str:
    """RUN/console.txt as a code block, after checking it is this run's (its headline is claims.json's)."""
    from pmopt.analysis.claims import headline

    path = run / "console.txt"
    if not path.is_file():
        raise ReferenceError(f"{path}: not found; capture the quickstart's console with "
                             f"`pmopt run ... --out {run} | tee {run}/console.txt`")
    text = path.read_text(encoding="utf-8").rstrip("\n")
    claims = read_json(run / "claims.json")
    for line in headline(claims["claim"]) + [claims["verdict"]]:
        if line not in text:
            raise ReferenceError(f"{path}: does not hold this run's headline ({line!r}): a console of another run?")
    return f"```\n{text}\n```"


def run_block(run: Path) -> str:
    manifest = read_json(run / "manifest.json")
    env, versions = manifest["environment"], manifest["versions"]
    packages = ", ".join(f"{name} {versions[name]}" for name in ("torch", "transformers", "trl", "accelerate", "peft")
                         if name in versions)
    return (f"Made on {env['cpu']} ({env['cpu_count']} cores; torch CPU capability {cpu_capability()}), "
            f"Python {env['python']}, {packages} (`{LOCK.relative_to(REPO)}`), {manifest['created'][:10]}.")


def facts_block(run: Path) -> str:
    """The PMs' held-out agreement with the raters and the base policy's statistics, per seed."""
    manifest = read_json(run / "manifest.json")
    seeds = manifest["seeds"]
    accuracy = [read_json(run / f"seed-{k}" / "pms" / "proxy" / "pmopt_pm.json")["eval_accuracy"] for k in seeds]
    stats = read_json(run / "aggregate" / "world_stats.json")["values"]

    def spread(key: str, digits: int = 3) -> str:
        v = stats[key]
        return f"{v['mean']:.{digits}f} ({v['min']:.{digits}f}-{v['max']:.{digits}f})"

    raters = stats["rater_label_agreement"]
    share = sorted({f"{min(accuracy) / raters['max']:.2f}", f"{max(accuracy) / raters['min']:.2f}"})
    return "\n".join([
        f"- **The PM learns the raters.** Held-out agreement of the proxy PM with the raters' labels is "
        f"{' / '.join(f'{a:.2f}' for a in accuracy)} (seeds {' / '.join(map(str, seeds))}) against the raters' own "
        f"{raters['min']:.2f}-{raters['max']:.2f} on the same pairs: "
        f"{'-'.join(share)} of the ceiling.",
        f"- **The base policy** (world statistics, mean over seeds (min-max)): neutral accuracy "
        f"{spread('neutral_accuracy')}, sycophancy rate {spread('sycophancy_rate')}, are-you-sure flips "
        f"{spread('are_you_sure_flip_rate')}, mimicry {spread('mimicry_rate')}, feedback positivity gap "
        f"{spread('feedback_sycophancy')}, raters' own label agreement {spread('rater_label_agreement')}.",
    ])


def tiny_reference(tiny: Path, seeds_run: Path) -> dict:
    """The tiny run's headline at full precision and its machine; bounds for other CPUs from seeds 0-4."""
    manifest = read_json(tiny / "manifest.json")
    claim = read_json(tiny / "claims.json")["claim"]
    per_seed = [c for c in read_json(seeds_run / "claims.json")["per_seed"].values() if c is not None]
    bounds = {}
    for point in BOUNDED_POINTS:
        values = [c[point]["value"] for c in per_seed]
        # a different CPU perturbs training as a different seed does (docs/tests.md): 3 sd of the seeds' values,
        # plus the widest half-width of one seed's own 95% interval over prompts
        half = 3 * statistics.stdev(values) + max((c[point]["ci_high"] - c[point]["ci_low"]) / 2 for c in per_seed)
        mean = statistics.fmean(values)
        bounds[point] = [round(max(0.0, mean - half), 2), round(min(1.0, mean + half), 2)]
    return {"cpu": manifest["environment"]["cpu"], "capability": cpu_capability(),
            "python": manifest["environment"]["python"], "versions": manifest["versions"],
            "threads": manifest["environment"]["torch_threads"], "n_max": claim["n_max"],
            "claim": {p: claim[p] for p in CLAIM_POINTS}, "holds": claim["holds"],
            "seeds": len(per_seed), "bounds": bounds}


def tiny_block(ref: dict) -> str:
    c, b = ref["claim"], ref["bounds"]

    def point(name: str) -> str:
        return f"{c[name]['value']:.2f} [{c[name]['ci_low']:.2f}, {c[name]['ci_high']:.2f}]"

    return "\n".join([
        f"`OMP_NUM_THREADS=1 pmopt run configs/experiments/tiny.yaml` (seed 0) on {ref['cpu']} (torch CPU "
        f"capability {ref['capability']}), Python {ref['python']}, with the lock:",
        "",
        f"| `syco_rate` | n = 1 | best-of-{ref['n_max']} |",
        "|---|---|---|",
        f"| proxy PM | {point('proxy_1')} | {point('proxy_n')} |",
        f"| same PM + non-sycophantic prefix | {point('prefixed_1')} | {point('prefixed_n')} |",
        "",
        f"The claim {'holds' if ref['holds'] else 'does not hold'}. On another CPU model the proxy PM's `syco_rate` "
        f"lies within [{b['proxy_1'][0]:.2f}, {b['proxy_1'][1]:.2f}] at n = 1 and within "
        f"[{b['proxy_n'][0]:.2f}, {b['proxy_n'][1]:.2f}] at n = {ref['n_max']}: the mean over seeds 0-"
        f"{ref['seeds'] - 1} of the tiny world ± 3 standard deviations over those seeds, widened by one seed's "
        "widest 95% interval over prompts.",
        f"<!-- reference-data {json.dumps(ref, sort_keys=True)} -->",
    ])


# ----------------------------------------------------------------------------- writing the documents


def replace_block(text: str, name: str, body: str, where: Path) -> str:
    pattern = re.compile(rf"<!-- reference:{name} -->\n.*?\n<!-- /reference:{name} -->", re.DOTALL)
    if not pattern.search(text):
        raise ReferenceError(f"{where}: no <!-- reference:{name} --> block")
    return pattern.sub(lambda _: BLOCK.format(name=name, body=body), text, count=1)


def write(run: Path | None, tiny: Path | None, tiny_seeds: Path | None, root: Path = REPO) -> list[Path]:
    """Every block from the quickstart (`run`) and the tiny runs; a part given as None is left as it is."""
    for path in (run, tiny, tiny_seeds):
        if path is not None:
            check_locked(read_json(path / "manifest.json"), path)
    targets: dict[Path, dict[str, str]] = {}
    changed = []
    if run is not None:
        blocks = {"console": console_block(run), "table": table_block(run), "run": run_block(run)}
        targets.update({root / "README.md": blocks, root / "docs" / "results.md": {**blocks, "facts": facts_block(run)}})
        figure = read_bytes(run / "report" / "plots" / "headline.png")
        if not (root / FIGURE).is_file() or (root / FIGURE).read_bytes() != figure:
            (root / FIGURE).write_bytes(figure)
            changed.append(root / FIGURE)
    if tiny is not None and tiny_seeds is not None:
        targets[root / "docs" / "reproduce.md"] = {"tiny": tiny_block(tiny_reference(tiny, tiny_seeds))}
    for path, named in targets.items():
        text = original = path.read_text(encoding="utf-8")
        for name, body in named.items():
            text = replace_block(text, name, body, path)
        if text != original:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


# ----------------------------------------------------------------------------- checking a tiny run


def documented_tiny(root: Path = REPO) -> dict:
    found = DATA.search((root / "docs" / "reproduce.md").read_text(encoding="utf-8"))
    if found is None:
        raise ReferenceError("docs/reproduce.md: no reference-data in its tiny block")
    return json.loads(found.group(1))


def check_tiny(run: Path, ref: dict) -> tuple[bool, list[str]]:
    """Exact equality where the machine and software are the documented ones; the bounds anywhere else."""
    from pmopt.io import cpu_model

    manifest = read_json(run / "manifest.json")
    claim = read_json(run / "claims.json")["claim"]
    here = {"cpu": cpu_model(), "capability": cpu_capability(), "python": manifest["environment"]["python"],
            "versions": manifest["versions"], "threads": manifest["environment"]["torch_threads"]}
    same = all(here[k] == ref[k] for k in here)
    lines = [f"this machine: {here['cpu']} ({here['capability']}), {here['threads']} torch thread(s); documented: "
             f"{ref['cpu']} ({ref['capability']}), {ref['threads']}; "
             + ("the same machine and software: the numbers must be equal" if same else
                "another machine or software: the numbers must lie within the documented bounds")]
    ok = True
    for point in CLAIM_POINTS:
        got = claim[point]
        if same:
            expected = ref["claim"][point]
            good = all(got[k] == expected[k] for k in ("value", "ci_low", "ci_high"))
            lines.append(f"{point}: {got['value']!r} [{got['ci_low']!r}, {got['ci_high']!r}] "
                         f"{'==' if good else '!='} documented {expected['value']!r} "
                         f"[{expected['ci_low']!r}, {expected['ci_high']!r}]")
        elif point in ref["bounds"]:
            low, high = ref["bounds"][point]
            good = low <= got["value"] <= high
            lines.append(f"{point}: {got['value']:.3f} {'within' if good else 'OUTSIDE'} [{low:.2f}, {high:.2f}]")
        else:
            good = True
            lines.append(f"{point}: {got['value']:.3f} (not bounded across CPUs)")
        ok &= good
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    w = sub.add_parser("write", help="rewrite the documents' reference blocks from run directories")
    w.add_argument("--run", type=Path, default=REPO / "checkpoints" / "quickstart")
    w.add_argument("--tiny", type=Path, default=REPO / "checkpoints" / "tiny")
    w.add_argument("--tiny-seeds", type=Path, default=REPO / "checkpoints" / "tiny-seeds")
    w.add_argument("--only", choices=["quickstart", "tiny"], help="write only the quickstart's or the tiny runs' blocks")
    c = sub.add_parser("check-tiny", help="compare a tiny run's headline with docs/reproduce.md's")
    c.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            quickstart, tiny = args.only in (None, "quickstart"), args.only in (None, "tiny")
            changed = write(args.run if quickstart else None, args.tiny if tiny else None,
                            args.tiny_seeds if tiny else None)
            print("reference_numbers: " + (f"rewrote {', '.join(str(p.relative_to(REPO)) for p in changed)}"
                                           if changed else "every block already current"))
            return 0
        ok, lines = check_tiny(args.run, documented_tiny())
        print("\n".join(f"check-tiny: {line}" for line in lines))
        print(f"check-tiny: {'ok' if ok else 'FAILED'}")
        return 0 if ok else 1
    except ReferenceError as exc:
        print(f"reference_numbers: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
