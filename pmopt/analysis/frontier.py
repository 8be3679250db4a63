"""The remedies for sycophancy on one frontier: syco_rate and gold reward against KL to the base policy.

The remedies are rewards and policies a run already measures (docs/drift.md, docs/remedies.md): the
proxy PM with no remedy; the same PM behind the non-sycophantic prefix (Sharma et al. 2023 §4.2); a PM on
unbiased raters; the K-member ensemble aggregated by its mean and by the uncertainty-weighted mean (Coste
et al. 2023); the proxy PM with the agreement penalty (Shapira et al. 2026); and the policy fine-tuned on
Wei et al. 2023's synthetic data, optimised against the proxy PM (`pmopt intervene` into RUN/intervene/). Every
best-of-n point sits at its KL bound log n − (n−1)/n; the intervened policy's at its `kl/reference` (the bound
plus the selected sample's log-ratio to the base, `pmopt.bon.reference`), so it pays for its own fine-tuning.
RL rows (method ppo) join as they are written, each at its measured KL.

"At equal KL": each curve is read at the largest KL every best-of-n remedy reaches (best-of-N_max's bound),
interpolated linearly in KL between its two nearest points (the interval's ends likewise: an approximation
between grid points); a curve that does not reach that KL is not ranked there. The ranking sentence is
written from these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from pmopt.analysis.claims import with_interval
from pmopt.analysis.seeds import aggregate_rows
from pmopt.io import read_jsonl

SYCO, GOLD = "probe/answer/syco_rate", "gold/reward"
METRICS = (SYCO, GOLD)
INTERVENTION_PM = "wei-sft+proxy"  # the intervened policy under the proxy PM
INTERVENTION_DIR = "intervene"
REFERENCE_KL = "kl/reference"
ORACLE = "gold"  # the world's gold reward: drawn for reference, never ranked
REMEDIES = {
    "proxy": "proxy PM, no remedy",
    "proxy-nonsyc": "non-sycophantic prefix",
    "unbiased": "PM on unbiased raters",
    "ens-mean": "ensemble, mean",
    "ens-uwo": "ensemble, uncertainty-weighted",
    "ens-worst": "ensemble, worst member",
    "proxy-penalty": "agreement penalty",
    INTERVENTION_PM: "Wei et al. 2023 SFT, then the proxy PM",
    ORACLE: "gold reward (the oracle, not a remedy)",
}


# ----------------------------------------------------------------------------- reading


def intervention_rows(run: Path, n_boot: int = 1000) -> list[dict]:
    """The intervened policy's best-of-n rows under the proxy PM (pm renamed INTERVENTION_PM), each at its
    KL to the base; over seeds (RUN/intervene/seed-<k>/) with the two-stage bootstrap. [] without them."""
    root = Path(run) / INTERVENTION_DIR
    files = sorted(root.glob("seed-*/after/bon/curves.jsonl")) or sorted(root.glob("after/bon/curves.jsonl"))
    per_seed = {}
    for k, path in enumerate(files):
        rows = read_jsonl(path)
        kl = {r["n"]: r["value"] for r in rows if r["pm"] == "proxy" and r["metric"] == REFERENCE_KL}
        if not kl:
            continue
        per_seed[k] = [{**r, "pm": INTERVENTION_PM, "kl": kl[r["n"]], "kl_kind": "reference"} for r in rows
                       if r["pm"] == "proxy" and r["metric"] in METRICS and r["n"] in kl]
    if not per_seed:
        return []
    if len(per_seed) == 1:
        return next(iter(per_seed.values()))
    return aggregate_rows(per_seed, n_boot=n_boot, seed=0)


def remedy_rows(rows: Sequence[Mapping], extra: Sequence[Mapping] = ()) -> list[dict]:
    """The curve rows the frontier draws: syco_rate and gold reward of the known remedies (and the oracle)."""
    return [dict(r) for r in [*rows, *extra] if r["pm"] in REMEDIES and r["metric"] in METRICS
            and isinstance(r.get("kl"), (int, float)) and math.isfinite(r["kl"])]


# ----------------------------------------------------------------------------- the frontier


def curves(rows: Sequence[Mapping]) -> dict[tuple[str, str], list[dict]]:
    """{(method label, pm): [{x, kl, syco, gold}] in order of optimisation}; `method label` is bon or the RL
    algorithm (ppo, rloo, ppo-beta-sweep, ...)."""
    points: dict[tuple, dict] = {}
    for r in rows:
        method = "bon" if r["method"] == "bon" else (r.get("rl_method") or r["method"])
        x = r.get("n") if r["method"] == "bon" else (r.get("step"), r.get("beta"))
        entry = points.setdefault((method, r["pm"], _key(x)), {"x": x, "kl": r["kl"]})
        entry["syco" if r["metric"] == SYCO else "gold"] = {k: r.get(k) for k in ("value", "ci_low", "ci_high")}
    out: dict[tuple[str, str], list[dict]] = {}
    for (method, pm, _), p in points.items():
        if "syco" in p and "gold" in p:
            out.setdefault((method, pm), []).append(p)
    for key in out:
        out[key].sort(key=lambda p: (p["kl"], _key(p["x"])))
    return out


def _key(x):
    return tuple("" if v is None else v for v in x) if isinstance(x, tuple) else (x,)


def at_kl(points: Sequence[Mapping], kl: float) -> dict | None:
    """syco and gold of a curve at `kl`, linearly interpolated between its two nearest points (None outside)."""
    if not points or kl < points[0]["kl"] - 1e-12 or kl > points[-1]["kl"] + 1e-12:
        return None
    for a, b in zip(points, points[1:], strict=False):
        if a["kl"] <= kl <= b["kl"]:
            t = 0.0 if b["kl"] == a["kl"] else (kl - a["kl"]) / (b["kl"] - a["kl"])
            return {m: _mix(a[m], b[m], t) for m in ("syco", "gold")}
    return {m: dict(points[0][m]) for m in ("syco", "gold")}  # a one-point curve at exactly that KL


def _mix(a: Mapping, b: Mapping, t: float) -> dict:
    def lerp(x, y):
        return None if x is None or y is None else (1 - t) * x + t * y

    return {k: lerp(a.get(k), b.get(k)) for k in ("value", "ci_low", "ci_high")}


def frontier(rows: Sequence[Mapping]) -> dict:
    """frontier.json: every remedy's curve, each method's common KL budget, each curve read there, the
    ranking by syco_rate and the sentences."""
    by_curve = curves(rows)
    methods = sorted({m for m, _ in by_curve}, key=lambda m: (m != "bon", m))
    out = {"what": "syco_rate and gold reward against KL to the base policy, per remedy; read at each method's "
                   "common KL budget (the largest KL every ranked remedy of that method reaches)",
           "remedies": {pm: REMEDIES[pm] for pm in sorted({pm for _, pm in by_curve}, key=list(REMEDIES).index)},
           "curves": [{"method": m, "pm": pm, "points": pts} for (m, pm), pts in by_curve.items()], "methods": {}}
    for method in methods:
        ranked = {pm: pts for (m, pm), pts in by_curve.items() if m == method and pm != ORACLE}
        if not ranked:
            continue
        budget = min(pts[-1]["kl"] for pm, pts in ranked.items() if pm != INTERVENTION_PM) \
            if any(pm != INTERVENTION_PM for pm in ranked) else min(pts[-1]["kl"] for pts in ranked.values())
        read = {pm: at_kl(pts, budget) for pm, pts in ranked.items()}
        order = sorted((pm for pm, v in read.items() if v is not None), key=lambda pm: read[pm]["syco"]["value"])
        out["methods"][method] = {"budget_kl": budget, "at_budget": read, "ranking": order,
                                  "not_reaching": sorted(pm for pm, v in read.items() if v is None),
                                  "sentence": ranking_sentence(method, budget, read, order, ranked)}
    return out


# ----------------------------------------------------------------------------- words


def _name(pm: str) -> str:
    return f"{REMEDIES.get(pm, pm)} ({pm})"


def ranking_sentence(method: str, budget: float, read: Mapping, order: Sequence[str], curves_: Mapping) -> str:
    """Which remedy buys the lowest sycophancy at equal KL, by how much, and what it costs in gold reward."""
    label = "best-of-n" if method == "bon" else method.upper()
    if not order:
        return f"{label}: no remedy's curve reaches a common KL."
    win, winner = order[0], read[order[0]]
    parts = [f"{label} at equal KL to the base policy ({budget:.2f} nats): the lowest answer syco_rate is the "
             f"{_name(win)}'s, {with_interval(winner['syco'])}"]
    if "proxy" in read and read["proxy"] is not None and win != "proxy":
        parts[-1] += f", against {with_interval(read['proxy']['syco'])} under the proxy PM with no remedy"
    if len(order) > 1:
        second = read[order[1]]
        separated = (winner["syco"].get("ci_high") is not None and second["syco"].get("ci_low") is not None
                     and winner["syco"]["ci_high"] < second["syco"]["ci_low"])
        parts.append(f"the runner-up is the {_name(order[1])} at {with_interval(second['syco'])}, "
                     + ("whose interval it clears" if separated else "and their intervals overlap"))
    gold_best = max(order, key=lambda pm: read[pm]["gold"]["value"])
    if gold_best == win:
        parts.append(f"it costs no gold reward: its {with_interval(winner['gold'])} is the highest of any remedy at this KL")
    else:
        cost = read[gold_best]["gold"]["value"] - winner["gold"]["value"]
        parts.append(f"it costs {cost:.2f} gold reward against the highest there, the {_name(gold_best)}'s "
                     f"{with_interval(read[gold_best]['gold'])} (its own: {with_interval(winner['gold'])})")
    missing = [pm for pm in curves_ if read.get(pm) is None]
    for pm in missing:
        start = curves_[pm][0]
        parts.append(f"not ranked: the {_name(pm)} starts beyond this KL, at {start['kl']:.2f} nats, with syco_rate "
                     f"{with_interval(start['syco'])} and gold reward {with_interval(start['gold'])}")
    return "; ".join(parts) + "."


__all__ = ["frontier", "curves", "at_kl", "intervention_rows", "remedy_rows", "ranking_sentence", "REMEDIES",
           "INTERVENTION_PM", "METRICS", "SYCO", "GOLD"]
