"""The report's legend of PMs: what each curve's PM is, how it was trained, and its held-out accuracy.

Names are those `pmopt run` gives its best-of-N sweep (pmopt.pipeline.bon_config). Training facts come
from each PM's `pmopt_pm.json` (written by `pmopt train-pm`: kind, pairs, steps, held-out accuracy on the
eval pairs of its own raters), under RUN/pms/<dir>/ or, for a multi-seed run, RUN/seed-<k>/pms/<dir>/;
an ensemble's members sit in member-<k>/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pmopt.io import PmoptError, read_json_file
from pmopt.report.plots import pm_order
from pmopt.report.tables import interval_cell

PM_INFO_FILE = "pmopt_pm.json"
BIASED = "the biased raters' labels (world/pairs/: agreement weight w_agree)"
UNBIASED = "raters with w_agree = 0 (world/pairs_unbiased/)"

# name -> (what it is, directory under pms/ it was loaded from, labels it was trained on)
KNOWN_PMS = {
    "proxy": ("the proxy PM", "proxy", BIASED),
    "proxy-nonsyc": ("the proxy PM scored with the non-sycophantic prefix (Sharma et al. 2023 §4.2): "
                     "the same weights asked for truthfulness", "proxy", BIASED),
    "unbiased": ("a PM trained without the agreement bias", "unbiased", UNBIASED),
    "ens-mean": ("ensemble aggregate: the mean of the members' scores", "ensemble", BIASED),
    "ens-worst": ("ensemble aggregate: the worst (lowest) member score", "ensemble", BIASED),
    "ens-uwo": ("ensemble aggregate: mean − λ·variance of the members' scores (Coste et al. 2023)",
                "ensemble", BIASED),
    "proxy-penalty": ("the proxy PM minus μ·a, a = agreeing with a user who is wrong (Shapira et al. 2026's "
                      "agreement penalty), μ fitted on the base policy's samples", "proxy", BIASED),
    "wei-sft+proxy": ("the policy fine-tuned on Wei et al. 2023's synthetic data (pmopt intervene), under the "
                      "proxy PM", "proxy", BIASED),
    "gold": ("the world's gold reward: the ground truth the PMs approximate (not trained)", None, None),
}


@dataclass
class LegendRow:
    name: str
    what: str
    training: str
    accuracy: str


def legend_rows(run_dir: Path, names: set[str]) -> list[LegendRow]:
    """One row per PM name of the curves, proxy family first and gold last; reads every pmopt_pm.json."""
    seed_dirs = _seed_dirs(run_dir)
    return [_row(run_dir, seed_dirs, name) for name in sorted(names, key=pm_order)]


def _row(run_dir: Path, seed_dirs: list[Path], name: str) -> LegendRow:
    what, directory, labels = KNOWN_PMS.get(name, (f"PM {name}", name, None))
    if directory is None:
        return LegendRow(name, what, "—", "—")
    infos = [_member_infos(d / "pms" / directory) for d in seed_dirs]
    infos = [i for i in infos if i]
    if not infos:
        return LegendRow(name, what, f"not recorded in this run (no pms/{directory}/{PM_INFO_FILE})", "")
    training = _training(infos[0], labels)
    accuracy = _accuracy(infos, len(seed_dirs) > 1)
    if name == "proxy-nonsyc":
        accuracy += " (the proxy's, scored without the prefix)"
    return LegendRow(name, what, training, accuracy)


def _seed_dirs(run_dir: Path) -> list[Path]:
    """RUN itself, or RUN/seed-<k>/ in seed order for a multi-seed run."""
    seeds = [p for p in run_dir.glob("seed-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(seeds, key=lambda p: int(p.name[5:])) or [run_dir]


def _member_infos(pm_dir: Path) -> list[dict]:
    """pmopt_pm.json of a PM directory, or of each ensemble member, checked."""
    paths = [pm_dir / PM_INFO_FILE] if (pm_dir / PM_INFO_FILE).is_file() else sorted(pm_dir.glob(f"member-*/{PM_INFO_FILE}"))
    return [_read_info(p) for p in paths]


def _read_info(path: Path) -> dict:
    info = read_json_file(path)
    if not isinstance(info, dict):
        raise PmoptError(f"{path}: expected a JSON object, got {type(info).__name__}")
    accuracy = info.get("eval_accuracy")
    if accuracy is not None and (isinstance(accuracy, bool) or not isinstance(accuracy, (int, float))):
        raise PmoptError(f"{path}: field 'eval_accuracy': expected a number or null, got {accuracy!r}")
    return info


def _training(members: list[dict], labels: str | None) -> str:
    first = members[0]
    kind = "LoRA" if first.get("kind") == "lora" else "full fine-tune"
    text = (f"{kind} of the base policy, Bradley–Terry loss on {first.get('n_train', '?')} pairs, "
            f"{first.get('global_step', '?')} steps")
    if len(members) > 1:
        text = f"{len(members)} members with seeds {', '.join(str(m.get('seed', '?')) for m in members)}; " + text
    return text + (f"; labels: {labels}" if labels else "")


def _accuracy(infos_by_seed: list[list[dict]], multi_seed: bool) -> str:
    """Held-out accuracy: the value (ensemble: the members' mean); over seeds, mean [min, max]."""
    per_seed = [_mean([m.get("eval_accuracy") for m in members]) for members in infos_by_seed]
    known = [a for a in per_seed if a is not None]
    if not known:
        return "not measured (no eval pairs)"
    n_eval = infos_by_seed[0][0].get("n_eval")
    of = f" on {n_eval} held-out pairs" if n_eval else ""
    members = " (members' mean)" if len(infos_by_seed[0]) > 1 else ""
    if not multi_seed:
        return f"{known[0]:.3f}{of}{members}"
    return (f"{interval_cell(_mean(known), min(known), max(known), 3)} (mean [min, max] over {len(known)} seeds: "
            f"{', '.join(f'{a:.3f}' for a in known)}){members}")


def _mean(values: list) -> float | None:
    numbers = [v for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


__all__ = ["KNOWN_PMS", "LegendRow", "legend_rows"]
