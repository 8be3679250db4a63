"""mkdocs hooks (`hooks:` in mkdocs.yml): the docs site's generated parts, expanded at build time so they
cannot drift from the code.

    <!-- pmopt:config-keys COMMAND -->   every config key of COMMAND with its type, default and help, read
                                        from the config dataclass as `pmopt COMMAND --help` reads them
                                        (pmopt/config_docs.py)
    <!-- pmopt:help COMMAND -->          `pmopt COMMAND --help` as it prints (the commands without a config)

On GitHub the markers are invisible HTML comments; the pages say where the same lists are printed.
`tests/test_docs.py` checks that every command page carries its marker and that the expansion lists
every key.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

MARKER = re.compile(r"^<!-- pmopt:(config-keys|help) ([\w-]+) -->$", re.MULTILINE)
HELP_COLUMNS = "100"  # argparse wraps to $COLUMNS: a fixed width keeps the page the same on every machine


def command_help(command: str) -> str:
    from pmopt import cli

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return out.getvalue().replace("usage: __main__.py", "usage: pmopt").rstrip()


def config_keys_html(command: str) -> str:
    from pmopt.config_docs import config_class, config_keys, keys_html

    return keys_html(config_keys(config_class(command)))


def expand(markdown: str) -> str:
    """Every marker replaced by what it names; an unknown command is an error (the build stops)."""

    def replace(match: re.Match) -> str:
        kind, command = match.groups()
        if kind == "config-keys":
            return config_keys_html(command)
        return f"```text\n{command_help(command)}\n```"

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs event
    return expand(markdown)
