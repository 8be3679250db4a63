"""The README and the docs site (docs/, mkdocs.yml) against the code they describe.

- every `pmopt ...` command a page shows in a code block parses with the current CLI (argparse only, nothing
  runs), names config files that exist, and its `--set` keys are keys of the command's config;
- every command page carries its generated config-key list (scripts/mkdocs_hooks.py), and the expansion
  lists every key of the config dataclass;
- the README's relative links (to docs/*.md, images) resolve on GitHub as they are written.
`mkdocs build --strict` itself (links and anchors inside the site) runs in .ci/run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex

import pytest
from conftest import REPO

from pmopt import cli
from pmopt.config import load_config
from pmopt.config_docs import CONFIG_CLASSES, config_class, config_keys

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def load_hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", REPO / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shown_commands(text: str) -> list[str]:
    """The `pmopt` command lines of a page's code blocks: every `pmopt ...` line of a bash block, and the
    `$ pmopt ...` lines of other blocks (the rest of those is output); `\\` continuations joined, and
    `accelerate launch ... -m pmopt.cli ARGS` read as `pmopt ARGS`."""
    commands = []
    for lang, body in FENCE.findall(text):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if lang != "bash":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = re.sub(r"^.*?-m pmopt\.cli\b", "pmopt", line)
            if line.startswith("pmopt "):
                commands.append(line)
    return commands


def command_cases() -> list[tuple[str, str]]:
    return [(f"{page.relative_to(REPO)}", command) for page in PAGES
            for command in shown_commands(page.read_text(encoding="utf-8"))]


def test_pages_show_commands():
    pages = {page for page, _ in command_cases()}
    assert "README.md" in pages and "docs/commands/run.md" in pages and len(command_cases()) > 50


@pytest.mark.parametrize(("page", "command"), command_cases())
def test_every_shown_command_parses(page, command):
    argv = shlex.split(command, comments=True)
    ends = [i for i, word in enumerate(argv) if word in (">", "|", "&&", ";")]  # `... > my.yaml`, `... | tee log`
    argv = argv[: ends[0]] if ends else argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            args = cli.build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        assert exc.code == 0, f"{page}: `{command}` does not parse: {err.getvalue().strip()}"
        return  # --help, --version
    if args.config is not None and args.config.startswith("configs/"):
        assert (REPO / args.config).is_file(), f"{page}: `{command}`: no such config {args.config}"
    target = getattr(args, "target", None) or (args.command if args.command in CONFIG_CLASSES else None)
    if target is None:
        return
    config = REPO / args.config if args.config and args.config.startswith("configs/") else None
    # keys and types only: the paths a config points at (a run directory) need not exist here
    load_config(config_class(target), config, args.overrides, validate=False)


def test_a_command_that_does_not_parse_is_caught():
    with pytest.raises(AssertionError, match="does not parse"):
        test_every_shown_command_parses("x.md", "pmopt run configs/experiments/tiny.yaml --seedz 0,1")
    with pytest.raises(Exception, match="n_maxx"):
        test_every_shown_command_parses("x.md", "pmopt bon configs/bon/world.yaml --set n_maxx=3")
    assert shown_commands("```bash\npmopt ppo A.yaml \\\n  --out B  # c\n```\n```\n$ pmopt fit R\npmopt x: out\n```") \
        == ["pmopt ppo A.yaml    --out B  # c", "pmopt fit R"]


@pytest.mark.parametrize("command", sorted(CONFIG_CLASSES))
def test_each_command_page_lists_every_config_key(command):
    page = (REPO / "docs" / "commands" / f"{command}.md").read_text(encoding="utf-8")
    marker = f"<!-- pmopt:config-keys {command} -->"
    assert marker in page
    expanded = load_hooks().expand(marker)
    assert "<!--" not in expanded
    for doc in config_keys(config_class(command)):
        assert f"<code>{doc.key}</code>" in expanded


@pytest.mark.parametrize("command", ["score", "report", "fit", "config"])
def test_commands_without_a_config_page_show_their_help(command):
    page = (REPO / "docs" / "commands" / f"{command}.md").read_text(encoding="utf-8")
    assert f"<!-- pmopt:help {command} -->" in page
    assert load_hooks().expand(f"<!-- pmopt:help {command} -->").startswith(f"```text\nusage: pmopt {command} ")


def test_every_command_has_a_page():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(p.stem for p in (REPO / "docs" / "commands").glob("*.md") if p.stem != "index") == sorted(commands)


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link)]
    assert "docs/index.md" in local
    for link in local:
        assert (REPO / link).exists(), f"README.md links to {link}, which does not exist"


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 260


def test_nav_lists_only_pages_that_exist():
    """mkdocs --strict fails on a nav entry without its page (CI); this says which, without mkdocs."""
    config = "\n".join(line for line in (REPO / "mkdocs.yml").read_text(encoding="utf-8").splitlines()
                       if not line.lstrip().startswith("#"))
    nav = re.findall(r":\s*([\w/.-]+\.md)\s*$|^\s*-\s*([\w/.-]+\.md)\s*$", config, re.MULTILINE)
    pages = [a or b for a, b in nav]
    assert "index.md" in pages
    for page in pages:
        assert (REPO / "docs" / page).is_file(), f"mkdocs.yml's nav names docs/{page}, which does not exist"
