"""JSON objects (world statistics, probe metrics, their aggregates over seeds) as report table rows in
which an estimate and its 95% interval share one cell, `value [low, high]`, instead of three dotted keys.

A point is any object with an estimate (`value`, `weight` or `mean`) beside `ci_low` and `ci_high`
(probe metrics, the world's preference-regression weights). Aggregates over seeds
(`pmopt.analysis.seeds.aggregate_scalars`: flattened keys, each {mean, min, max, per_seed}) become one row
per quantity: `mean [min, max]` over seeds, then each seed's own `value [low, high]`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from pmopt.io import PmoptError
from pmopt.records import is_number

POINT_KEYS = ("value", "weight", "mean")  # an estimate's key beside ci_low / ci_high
BOUND_KEYS = ("ci_low", "ci_high")
AGGREGATE_FIELDS = ("mean", "min", "max", "per_seed")
DIGITS = 4


def number(value, digits: int = DIGITS) -> str:
    """A number to `digits` significant digits; None / NaN as an empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def interval_cell(value, low=None, high=None, digits: int = DIGITS) -> str:
    """`value [low, high]`, or just the value when either bound is missing."""
    text = number(value, digits)
    if number(low) == "" or number(high) == "":
        return text
    return f"{text} [{number(low, digits)}, {number(high, digits)}]"


def _point_key(obj: Mapping) -> str | None:
    if not all(k in obj for k in BOUND_KEYS):
        return None
    return next((k for k in POINT_KEYS if is_number(obj.get(k))), None)


def json_rows(data: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, cell) for every leaf of a JSON object; a point with an interval is one row."""
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        point = _point_key(value) if isinstance(value, Mapping) else None
        if point is not None:
            rows.append((name, interval_cell(value[point], value["ci_low"], value["ci_high"])))
        elif isinstance(value, Mapping) and value:
            rows += json_rows(value, f"{name}.")
        elif isinstance(value, float):
            rows.append((name, number(value)))
        else:
            rows.append((name, value if isinstance(value, str) else json.dumps(value)))
    return rows


def is_aggregate(data: Mapping) -> bool:
    """Whether `data` is an aggregate over seeds ({"seeds": [...], "values": {...}})."""
    return set(data) == {"seeds", "values"}


def check_aggregate(data: Mapping, path: Path) -> None:
    """Every quantity of an aggregate holds mean, min, max and one value per seed."""
    seeds, values = data["seeds"], data["values"]
    if not isinstance(seeds, list) or not isinstance(values, Mapping):
        raise PmoptError(f"{path}: field 'seeds' must be a list and 'values' an object")
    for key, stat in values.items():
        if not isinstance(stat, Mapping) or any(f not in stat for f in AGGREGATE_FIELDS):
            raise PmoptError(f"{path}: field 'values.{key}': expected an object with {', '.join(AGGREGATE_FIELDS)}")
        if not isinstance(stat["per_seed"], list) or len(stat["per_seed"]) != len(seeds):
            raise PmoptError(f"{path}: field 'values.{key}.per_seed': expected {len(seeds)} values, one per seed")


def aggregate_rows(data: Mapping) -> list[tuple[str, str, list[str]]]:
    """(quantity, `mean [min, max]` over seeds, each seed's `value [low, high]`) per quantity."""
    groups = _group_points(data["values"])
    rows = []
    for name, parts in groups.items():
        point = parts[next(k for k in (*POINT_KEYS, "") if k in parts)]
        low, high = parts.get("ci_low"), parts.get("ci_high")
        per_seed = [interval_cell(v, low["per_seed"][i] if low else None, high["per_seed"][i] if high else None)
                    for i, v in enumerate(point["per_seed"])]
        rows.append((name, interval_cell(point["mean"], point["min"], point["max"]), per_seed))
    return rows


def _group_points(values: Mapping) -> dict[str, dict[str, Mapping]]:
    """Flattened keys `x.value`, `x.ci_low`, `x.ci_high` grouped as one quantity `x`; others stand alone."""
    groups: dict[str, dict[str, Mapping]] = {}
    for key, stat in values.items():
        base, _, last = key.rpartition(".")
        grouped = (base and last in (*POINT_KEYS, *BOUND_KEYS) and all(f"{base}.{b}" in values for b in BOUND_KEYS)
                   and any(f"{base}.{p}" in values for p in POINT_KEYS))
        if grouped:
            groups.setdefault(base, {})[last] = stat
        else:
            groups.setdefault(key, {})[""] = stat
    return groups


__all__ = ["aggregate_rows", "check_aggregate", "interval_cell", "is_aggregate", "json_rows", "number"]
