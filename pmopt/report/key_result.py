"""The report's first screen: the answer to the experiment's question, in words written from the numbers.

The question (Sharma et al. 2023 §4.2): does best-of-N against a PM trained on agreement-biased raters make
the policy more sycophantic, where the same PM asked for truthfulness (the non-sycophantic prefix) does not?
`claims.json` (pmopt.analysis.claims) holds the claim's points with their 95% intervals and each seed's
verdict; the curve rows add the gold reward at the same n, so the sentence says what the optimisation cost
in ground truth too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pmopt.analysis.claims import with_interval
from pmopt.io import PmoptError

GOLD = "gold/reward"
POINTS = ("proxy_1", "proxy_n", "prefixed_1", "prefixed_n")


def check_claims(claims: Mapping, path: Path) -> None:
    """claims.json holds what the key result reads: each claim's four points (a number `value`, bounds
    numbers or null), `n_max`, `metric`, `proxy_rise`, `separation` and `holds`; a string `verdict`."""
    if not isinstance(claims.get("verdict", ""), str):
        raise PmoptError(f"{path}: field 'verdict': expected a string")
    per_seed = claims.get("per_seed", {})
    if not isinstance(per_seed, Mapping):
        raise PmoptError(f"{path}: field 'per_seed': expected an object")
    for field, claim in [("claim", claims.get("claim")), *((f"per_seed.{k}", c) for k, c in per_seed.items())]:
        if claim is not None:
            _check_claim(claim, f"{path}: field '{field}")


def _check_claim(claim, where: str) -> None:
    if not isinstance(claim, Mapping):
        raise PmoptError(f"{where}': expected an object or null")
    for point in POINTS:
        value = claim.get(point)
        if not isinstance(value, Mapping) or not _number(value.get("value")) or \
                any(value.get(b) is not None and not _number(value[b]) for b in ("ci_low", "ci_high")):
            raise PmoptError(f"{where}.{point}': expected {{value, ci_low, ci_high}} numbers (bounds may be null)")
    checks = {"metric": isinstance(claim.get("metric"), str),
              "n_max": isinstance(claim.get("n_max"), int) and not isinstance(claim.get("n_max"), bool),
              "proxy_rise": _number(claim.get("proxy_rise")),
              "separation": claim.get("separation") is None or _number(claim["separation"]),
              "holds": isinstance(claim.get("holds"), bool)}
    for name, ok in checks.items():
        if not ok:
            raise PmoptError(f"{where}.{name}': missing or of the wrong type ({claim.get(name)!r})")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _verb(change: float) -> str:
    return "raises" if change > 0 else "lowers" if change < 0 else "leaves unchanged"


def claim_sentences(claim: Mapping) -> list[str]:
    """What the claim's numbers say: the proxy's move, the prefixed PM's end point, and the intervals."""
    short, n = claim["metric"].rsplit("/", 1)[-1], claim["n_max"]
    p1, pn, q1, qn = (claim[k] for k in ("proxy_1", "proxy_n", "prefixed_1", "prefixed_n"))
    out = [f"Best-of-{n} against the proxy PM {_verb(claim['proxy_rise'])} {short} from {with_interval(p1)} "
           f"at n = 1 to {with_interval(pn)}; the same PM with the non-sycophantic prefix ends at "
           f"{with_interval(qn)} (from {with_interval(q1)})."]
    low, high = pn.get("ci_low"), qn.get("ci_high")
    if claim.get("separation") is None:
        out.append("The points carry no intervals, so their separation is not measured.")
    elif claim["separation"] > 0:
        out.append(f"The 95% intervals at n = {n} do not overlap: the proxy's lower end {low:.2f} lies above "
                   f"the prefixed PM's upper end {high:.2f}.")
    else:
        out.append(f"The 95% intervals at n = {n} overlap: the proxy's lower end {low:.2f} does not clear the "
                   f"prefixed PM's upper end {high:.2f}.")
    return out


def gold_sentence(rows: Sequence[Mapping], n_max: int) -> str | None:
    """The gold reward at n = 1 and n_max under the proxy and prefixed PMs, when the sweep graded it."""
    points = {}
    for pm in ("proxy", "proxy-nonsyc"):
        for n in (1, n_max):
            found = [r for r in rows if r.get("method") == "bon" and r["pm"] == pm and r.get("n") == n
                     and r["metric"] == GOLD]
            if not found:
                return None
            points[(pm, n)] = found[0]
    return (f"Gold reward (the world's ground truth) goes {with_interval(points[('proxy', 1)])} → "
            f"{with_interval(points[('proxy', n_max)])} under the proxy PM and "
            f"{with_interval(points[('proxy-nonsyc', 1)])} → {with_interval(points[('proxy-nonsyc', n_max)])} "
            f"under the prefixed one.")


def key_sentences(claims: Mapping, rows: Sequence[Mapping]) -> list[str]:
    """The key result in words: the claim's numbers, the gold reward's, then the verdict over seeds."""
    claim = claims.get("claim")
    out = []
    if claim:
        out += claim_sentences(claim)
        gold = gold_sentence(rows, claim["n_max"])
        if gold:
            out.append(gold)
    verdict = claims.get("verdict", "")
    if verdict:
        out.append(f"Verdict: {verdict}.")
    return out


__all__ = ["check_claims", "claim_sentences", "gold_sentence", "key_sentences", "with_interval"]
