"""Typed configs loaded from YAML with `--set a.b=v` overrides.

Each command has a dataclass config (defined beside the code that uses it, TRL style). `load_config`
turns a YAML file into that dataclass, checking every key and type: an unknown key or a value of the
wrong type is a `ConfigError` that names the key path and the file, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from pmopt.io import PmoptError

T = TypeVar("T")


class ConfigError(PmoptError):
    pass


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{yaml_where(exc, str(path))}: invalid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def yaml_where(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"{source}:{mark.line + 1}" if mark is not None else source


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's messages span several lines; the problem alone is one."""
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


def apply_overrides(data: dict, overrides: list[str] | None, source: str = "--set") -> dict:
    """Apply `a.b=v` overrides; `v` is parsed as YAML (so `3`, `0.1`, `true`, `[1,2]` get their types)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: expected KEY=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: '{key}': value {raw!r} is not valid YAML: {yaml_problem(exc)}") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: '{key}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None, data: dict | None = None, validate: bool = True,
                source: str | None = None) -> T:
    """Build `cls` from a YAML file (or a dict) plus overrides, validating every key and type; with
    `validate=False` the configs' own `validate()` checks (required paths, ranges) are skipped."""
    source = source or (str(path) if path is not None else "<config>")
    raw = load_yaml(path) if path is not None else dict(data or {})
    # old key names become current ones in the file and in --set alike, so an override of either name
    # replaces the file's value instead of clashing with it
    raw = renamed_tree(cls, raw, source)
    raw = apply_overrides(raw, [current_key(cls, item) for item in overrides or []])
    return from_dict(cls, raw, source=source, validate=validate)


def _section_type(hint: Any) -> type | None:
    """The config dataclass a field's type hint holds (directly or as `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        return next((a for a in get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def renamed_tree(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """`data` with every section's old key names replaced by the current ones, recursively."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    data = renamed_keys(cls, data, source, prefix)
    hints = get_type_hints(cls)
    return {key: renamed_tree(_section_type(hints[key]), value, source, f"{prefix}{key}.")
            if key in hints and _section_type(hints[key]) else value for key, value in data.items()}


def current_key(cls: type, item: str) -> str:
    """A `--set a.b=v` item with old key names along its path replaced by the current ones."""
    key, sep, value = item.partition("=")
    parts, section = key.strip().split("."), cls
    for i, part in enumerate(parts):
        if section is None or not dataclasses.is_dataclass(section):
            break
        parts[i] = getattr(section, "RENAMED", {}).get(part, part)
        if parts[i] != part:
            where = ".".join(parts[:i])
            print(f"pmopt: --set: '{where + '.' if where else ''}{part}' is now "
                  f"'{'.'.join(parts[:i + 1])}' (the old name goes in the next release)", file=sys.stderr)
        section = _section_type(get_type_hints(section).get(parts[i]))
    return ".".join(parts) + sep + value if sep else item


def renamed_keys(cls: type, data: dict, source: str, prefix: str) -> dict:
    """`data` with a section's old key names (its `RENAMED = {old: new}`) replaced by the current ones.

    Old names are kept one release so existing configs still load; each use prints one line.
    """
    renamed = getattr(cls, "RENAMED", {})
    if not any(old in data for old in renamed):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{source}: '{prefix}{old}' and '{prefix}{new}' both given ('{old}' is the old "
                              f"name of '{new}')")
        out[new] = out.pop(old)
        print(f"pmopt: {source}: '{prefix}{old}' is now '{prefix}{new}' (the old name goes in the next release)",
              file=sys.stderr)
    return out


def from_dict(cls: type[T], data: Any, source: str = "<config>", prefix: str = "", validate: bool = True) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}': expected a mapping, got {type(data).__name__}")
    data = renamed_keys(cls, data, source, prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown config key '{key}' (known keys here: {known})")
    kwargs = {name: _coerce(hints[name], value, source, f"{prefix}{name}", validate) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without default
        raise ConfigError(f"{source}: {prefix or '<root>'}: {exc}") from None
    check = getattr(obj, "validate", None) if validate else None
    if callable(check):
        try:
            check()
        except ValueError as exc:
            # a section's messages name its keys from its own name on ("sampling.top_p ..."): prefix the path above it
            parent = prefix.rstrip(".").rpartition(".")[0]
            raise ConfigError(f"{source}: {parent + '.' if parent else ''}{exc}") from None
    return obj


def _coerce(hint: Any, value: Any, source: str, key: str, validate: bool = True) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source, key, validate)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: '{key}': {value!r} matches none of {hint}")
    if origin is Literal:
        if isinstance(value, bool) and value not in args:
            # YAML 1.1 reads no/off and yes/on as booleans: take the word the choices spell
            value = next((word for word in (("no", "off") if not value else ("yes", "on")) if word in args), value)
        if value not in args:
            raise ConfigError(f"{source}: '{key}': expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if value is not None and not isinstance(value, dict) and hasattr(hint, "from_scalar"):
            # a section that was once one value: the old form still loads, for one release
            value = hint.from_scalar(value)
            print(f"pmopt: {source}: '{key}: <value>' is now the section '{key}: {value}' (the old form goes in the "
                  "next release)", file=sys.stderr)
        return from_dict(hint, value if value is not None else {}, source, f"{key}.", validate)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}': expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return [_coerce(item, v, source, f"{key}[{i}]", validate) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}': expected a mapping, got {type(value).__name__}")
        vhint = args[1] if len(args) == 2 else Any
        return {k: _coerce(vhint, v, source, f"{key}.{k}", validate) for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}': expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}': expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}': expected a string, got {value!r}")
        return value
    return value


@dataclass
class LoraSection:
    """LoRA adapters (peft), one section for PM training, the RL policy and its value model."""

    enabled: bool = False  # LoRA adapters instead of full fine-tuning (a score head is fully trained)
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling alpha (the update is scaled by alpha / r)
    # LoRA dropout; RL sets 0 so the rollout's and the first update's log-probs are identical
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"  # module names that get adapters, or 'all-linear'
    RENAMED: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError("lora.r / lora.alpha: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora.dropout: must be in [0, 1)")


def validate_all(obj: Any) -> None:
    """Call `validate()` on a config and on every config nested in it (depth first); raises ValueError.

    `from_dict` does this as it builds; a config assembled in Python (the pipeline's per-stage configs)
    gets the same checks through this."""
    if isinstance(obj, (list, tuple)):
        for item in obj:
            validate_all(item)
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        validate_all(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain data (for `config.yaml` in a run directory)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


__all__ = ["ConfigError", "LoraSection", "renamed_keys", "load_config", "from_dict", "to_dict", "dump_yaml", "apply_overrides", "validate_all"]
