"""Config keys documented from the config dataclasses themselves: `--help` listings and `pmopt config show`.

A field's help is its comment in the source: the `# ...` at the end of the field's line, after any full-line
comments right above it. Why comments and not `field(metadata={"help": ...})`: the configs are read far more
often than `--help` is, and `x: int = 3  # what x does` keeps each field on one readable line, where metadata
turns every scalar into a `field(...)` call. The price is reading source at help time (`inspect`), which an
installed package always has; the test that walks every config dataclass fails on a field without a comment.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import html
import importlib
import inspect
import io
import re
import textwrap
import tokenize
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pmopt.config import load_config, to_dict

# command -> "module:ConfigClass" (imported only when asked: importing a config imports torch)
CONFIG_CLASSES = {
    "run": "pmopt.pipeline:ExperimentConfig",
    "world": "pmopt.world.config:WorldConfig",
    "train-pm": "pmopt.pm.train:PMTrainConfig",
    "bon": "pmopt.bon.sweep:BonConfig",
    "ppo": "pmopt.rl.config:PPOConfig",
    "probe": "pmopt.probes.run:ProbeRunConfig",
    "intervene": "pmopt.intervene.config:InterventionConfig",
}


@dataclass(frozen=True)
class KeyDoc:
    """One `--set` key: `key` is its dotted path; `section` marks a nested config (no value of its own);
    `item_of` names the list a per-item key belongs to (`pms[].name`: set the whole list instead)."""

    key: str
    type: str
    default: str
    help: str
    section: bool = False
    item_of: str | None = None


# ----------------------------------------------------------------------------- help from source comments


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Field name -> its help: the full-line comments right above the field, then its trailing comment.

    An inherited field has the help of the dataclass that declares it (a subclass that redeclares a
    field with a comment overrides it), so a config may be a subclass of a shared spec
    (`pmopt.bon.sweep.PMEntry` is a `pmopt.rewards.RewardSpec`)."""
    helps: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object and dataclasses.is_dataclass(base):
            helps.update({name: text for name, text in _own_field_help(base).items() if text or name not in helps})
    return helps


def _own_field_help(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    comments = _comments_by_line(source)
    node = ast.parse(source).body[0]
    helps = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if "ClassVar" in ast.unparse(stmt.annotation):  # a class constant (RENAMED), not a config key
            continue
        above = []
        line = stmt.lineno - 1
        while line in comments and comments[line][1]:  # consecutive full-line comments
            above.insert(0, comments[line][0])
            line -= 1
        trailing = [comments[n][0] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        helps[stmt.target.id] = " ".join(above + trailing).strip()
    return helps


def _comments_by_line(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text without '#', whether the comment is the whole line)."""
    lines = source.splitlines()
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            out[row] = (tok.string.lstrip("#").strip(), not lines[row - 1][:col].strip())
    return out


# ----------------------------------------------------------------------------- the keys of a config


def config_keys(cls: type, instance: Any = None, prefix: str = "", item_of: str | None = None) -> list[KeyDoc]:
    """Every key of `cls` in declaration order, nested sections as dotted keys (the names `--set` takes);
    defaults are read from `instance` (default: `cls()`), so a section built with other defaults shows them."""
    instance = cls() if instance is None else instance
    hints = get_type_hints(cls)
    helps = field_help(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint, value, key = hints[f.name], getattr(instance, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            keys.append(KeyDoc(key, hint.__name__, "", helps.get(f.name, ""), section=True, item_of=item_of))
            keys += config_keys(hint, value, f"{key}.", item_of)
            continue
        keys.append(KeyDoc(key, type_name(hint), format_value(value), helps.get(f.name, ""), item_of=item_of))
        item = _list_item_dataclass(hint)
        if item is not None:
            keys += config_keys(item, item(), f"{key}[].", item_of=key)
    return keys


def _list_item_dataclass(hint: Any) -> type | None:
    if get_origin(hint) in (list, tuple) and get_args(hint) and dataclasses.is_dataclass(get_args(hint)[0]):
        return get_args(hint)[0]
    return None


def type_name(hint: Any) -> str:
    """A type as a user writes its value: `int`, `str | null`, `{ppo, rloo}`, `list[str]`."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return "{" + ", ".join(str(a) for a in args) + "}"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def format_value(value: Any) -> str:
    """A value as YAML on one line, the form `--set key=VALUE` parses back to the same value."""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


# ----------------------------------------------------------------------------- printing


def format_keys(keys: list[KeyDoc], width: int = 110) -> str:
    """The `--help` listing: `key  type = default` and the help on the next line, indented."""
    lines = []
    for doc in keys:
        head = f"  {doc.key}" + ("  (section)" if doc.section else f"  {doc.type} = {doc.default}")
        lines.append(head + (f"  (in each item of {doc.item_of})" if doc.item_of else ""))
        lines += textwrap.wrap(doc.help, width=width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def keys_html(keys: list[KeyDoc]) -> str:
    """The same listing as an HTML table for the docs site (docs/commands/*.md): raw HTML, because a key's
    type or help may hold a `|`, which a Markdown table would read as a column break."""
    def cell(text: str) -> str:  # `code` in a help comment stays code
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))

    rows = ['<div class="pmopt-keys" markdown="0"><table>', "<thead><tr><th>key</th><th>type = default</th><th>what it sets</th></tr></thead>", "<tbody>"]
    for doc in keys:
        key = f"<code>{html.escape(doc.key)}</code>"
        if doc.section:
            rows.append(f'<tr><td colspan="3"><strong>{key}</strong> (section) {cell(doc.help)}</td></tr>')
            continue
        where = f" (in each item of <code>{html.escape(doc.item_of)}</code>)" if doc.item_of else ""
        rows.append(f"<tr><td>{key}</td><td><code>{html.escape(doc.type)} = {html.escape(doc.default)}</code></td>"
                    f"<td>{cell(doc.help)}{where}</td></tr>")
    return "\n".join([*rows, "</tbody>", "</table></div>"])


def show_yaml(obj: Any) -> str:
    """A config as YAML that `load_config` reads back to an equal config (`pmopt config show`)."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, width=10_000)


def config_class(command: str) -> type:
    module, name = CONFIG_CLASSES[command].split(":")
    return getattr(importlib.import_module(module), name)


def command_config_help(command: str) -> str:
    """The config-key section of `pmopt COMMAND --help`."""
    header = (f"config keys (YAML CONFIG or --set KEY=VALUE; `pmopt config show {command}` prints the defaults "
              "as YAML):")
    return f"{header}\n{format_keys(config_keys(config_class(command)))}"


def config_show_command(args) -> None:
    """`pmopt config show COMMAND [CONFIG] [--set k=v]`: the config the command would run with, as YAML.
    Keys and types are checked; the config's own checks (required paths) are not, so defaults can be shown."""
    from pmopt import console

    cls = config_class(args.target)
    cfg = load_config(cls, args.config, args.overrides, validate=False) if args.config or args.overrides else cls()
    console.result(show_yaml(cfg).rstrip("\n"))


def all_config_classes(root: type) -> list[type]:
    """`root` and every dataclass nested in it (sections and list items), each once."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for hint in get_type_hints(cls).values():
            for candidate in (hint, _list_item_dataclass(hint), *get_args(hint)):
                if candidate is not None and dataclasses.is_dataclass(candidate):
                    visit(candidate)

    visit(root)
    return seen


__all__ = ["CONFIG_CLASSES", "config_class", "command_config_help", "config_show_command", "KeyDoc", "field_help", "config_keys", "format_keys", "keys_html", "show_yaml", "all_config_classes", "type_name",
           "format_value"]
