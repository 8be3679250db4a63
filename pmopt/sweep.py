"""`pmopt run CONFIG` with `sweep: {key, values}`: the whole experiment per value of one config key and per
seed, then the dose-response over the values (docs/ARCHITECTURE.md §1).

    sweep: {key: world.raters.w_agree, values: [0, 0.5, 1, 1.5, 3]}
    seeds: [0, 1, 2]

The key is a dotted config key, checked as `--set KEY=VALUE` is (an unknown key or a value of the wrong type
is a one-line error naming it, before any work). Cell (value v, seed k) is the experiment with the key set to
v, then seed k exactly as `--seeds` runs it (`seed = world.seed = k`), in `RUN/<key leaf>-<v>/seed-<k>/`. Every
cell is independent and resumable with the single-seed job's rules; finished cells are marked in RUN's
manifest and skipped on a rerun, and values or seeds added to a finished sweep run only their own cells.
Cells run in parallel processes as seeds do (`parallel_seeds`, `threads_per_seed`). Then, per value, the
curves, statistics and claim over seeds go into `RUN/<leaf>-<v>/` as a multi-seed run keeps them (so
`pmopt report RUN/<leaf>-<v>` reports one value), and over values into:

    RUN/dose_response.json, RUN/dose_response.csv   each measure per value over seeds, with 95% intervals
    RUN/report/report.html                          the dose-response first: sentences, figure, table
    RUN/policy_cache/                               base policies pretrained once per seed when the key does not
                                                    change pretraining, copied into every cell that needs them
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

from pmopt import console
from pmopt.config import ConfigError, from_dict, to_dict
from pmopt.io import Manifest, atomic_write_json, atomic_write_text, read_jsonl

# cells whose pretraining is the same pretrain once, then copy (pmopt.world.policy_cache)
POLICY_CACHE = "policy_cache"

# keys a sweep may not set: the seed axis is `seeds`, and how cells run does not change what they compute
FORBIDDEN = ("seed", "seeds", "world.seed", "parallel_seeds", "threads_per_seed")


def leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def value_name(value) -> str:
    """A value as it appears in a cell's folder name: 0.0 -> '0', 1.5 -> '1.5', 'a b' -> 'a_b'."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = format(value, "g")
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def value_dir(key: str, value) -> str:
    return f"{leaf(key)}-{value_name(value)}"


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_sweep(cfg, source: str = "<config>") -> dict:
    """{value: the experiment with the key set to it (no sweep, the run's seeds)}, in the values' order;
    ConfigError (one line, naming the key) for a key or value `--set` would refuse."""
    from pmopt.pipeline import ExperimentConfig

    key, values = cfg.sweep.key, cfg.sweep.values
    where = f"{source}: sweep.key '{key}'"
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: expected a dotted config key such as world.raters.w_agree")
    if key in FORBIDDEN or key.split(".")[0] == "sweep":
        raise ConfigError(f"{where}: cannot be swept (seeds are their own axis: `seeds`; how cells run is "
                          f"{', '.join(FORBIDDEN[3:])})")
    if not values:
        raise ConfigError(f"{source}: sweep.values: give at least one value for '{key}'")
    base = to_dict(cfg)
    base["sweep"] = {"key": None, "values": []}
    out, names = {}, {}
    for i, value in enumerate(values):
        data = copy.deepcopy(base)
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{where}: '{'.'.join(parts[:depth + 1])}' is not a config section")
            node = node[part]
        if parts[-1] not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"{where}: unknown config key (known keys here: {known})")
        if isinstance(node[parts[-1]], dict) and not isinstance(value, dict):
            raise ConfigError(f"{where}: is a config section, not a value")
        node[parts[-1]] = value
        try:
            typed = from_dict(ExperimentConfig, data, source=f"{source}: sweep.values[{i}]")
        except ConfigError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        coerced = _get(typed, key)
        name = value_dir(key, coerced)
        if name in names:
            raise ConfigError(f"{source}: sweep.values: {names[name]!r} and {value!r} give the same folder '{name}'")
        names[name] = value
        out[coerced if _hashable(coerced) else name] = typed
    return out


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def cells_of(cfg, run: Path) -> list:
    """Every (value, seed) cell: its manifest name, label, config and folder."""
    from pmopt.multiseed import Cell, seed_config

    seeds = cfg.seeds or [cfg.seed]
    cells = []
    by_value = check_sweep(cfg)
    for k in seeds:  # seed-major: with fewer workers than cells, every value gets its first seed soonest
        for value, value_cfg in by_value.items():
            folder = value_dir(cfg.sweep.key, value)
            cells.append(Cell(name=f"{folder}/seed-{k}", label=f"{leaf(cfg.sweep.key)} = {value_name(value)}, seed {k}",
                              cfg=seed_config(value_cfg, k), dir=run / folder / f"seed-{k}",
                              policy_cache=run / POLICY_CACHE))
    return cells


def run_sweep(cfg, run: Path, manifest: Manifest) -> dict | None:
    """Every unfinished cell, then each value's aggregate over seeds, the dose-response and the report; None when
    the cells were submitted to a cluster instead (`launcher: slurm`: its aggregation job calls `finish_sweep`)."""
    import time

    from pmopt.multiseed import launch_cells

    seeds = cfg.seeds or [cfg.seed]
    manifest.set("seeds", list(seeds))
    manifest.set("sweep", {"key": cfg.sweep.key, "values": list(to_dict(cfg.sweep.values))})
    start = time.perf_counter()
    if not launch_cells(cfg, run, cells_of(cfg, run), manifest):
        return None
    return finish_sweep(cfg, run, manifest, start)


def finish_sweep(cfg, run: Path, manifest: Manifest, start: float) -> dict:
    """Each value's aggregate over seeds, the dose-response and the report, from the finished cells."""
    import time

    from pmopt.multiseed import aggregate

    seeds = cfg.seeds or [cfg.seed]
    by_value = check_sweep(cfg)
    for value, value_cfg in by_value.items():
        with_seeds = replace(value_cfg, seeds=list(seeds))
        aggregate(with_seeds, run / value_dir(cfg.sweep.key, value))
    result = write_dose_response(cfg, run, list(by_value), seeds)
    manifest.mark("aggregate", "done")
    with console.stage("run: stage report"):
        from pmopt.report.html import build_report

        build_report(run)
    manifest.mark("report", "done")
    atomic_write_json(run / "timings.json", {"sweep_total": round(time.perf_counter() - start, 1)})
    for line in table_text(result):
        console.result(f"run: {line}")
    for line in result["sentences"]:
        console.result(f"run: {line}")
    console.info(f"run: report at {run / 'report' / 'report.html'}")
    return result


def read_cell(cell_dir: Path) -> dict:
    """One cell's measures from its files (pmopt.analysis.dose_response.cell_measures)."""
    from pmopt.analysis.dose_response import cell_measures

    def load(path: Path):
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    curves = cell_dir / "bon" / "curves.jsonl"
    return cell_measures(load(cell_dir / "world" / "world_stats.json"),
                         load(cell_dir / "pms" / "sycophancy_preference.json"),
                         read_jsonl(curves) if curves.is_file() else None, load(cell_dir / "bon" / "drift.json"))


def write_dose_response(cfg, run: Path, values: list, seeds: list[int]) -> dict:
    from pmopt.analysis.dose_response import dose_response, dose_response_csv

    cells = {value: {k: read_cell(run / value_dir(cfg.sweep.key, value) / f"seed-{k}") for k in seeds}
             for value in values}
    result = dose_response(cfg.sweep.key, cells, n_boot=cfg.bon.n_boot, seed=0)
    result.update(seeds=list(seeds), folders={value_name(v): value_dir(cfg.sweep.key, v) for v in values})
    atomic_write_json(run / "dose_response.json", result)
    atomic_write_text(run / "dose_response.csv", dose_response_csv(result))
    return result


def table_text(result: dict) -> list[str]:
    from pmopt.analysis.dose_response import table_lines

    return table_lines(result)


__all__ = ["check_sweep", "cells_of", "run_sweep", "finish_sweep", "write_dose_response", "value_dir", "value_name", "leaf"]
