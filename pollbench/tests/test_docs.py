"""The documentation a user copies from: every ``pollbench`` command that README.md and
docs/ quote is one the CLI accepts (its subcommand and options exist, its values parse),
and every link of README.md leads to a file of the checkout.  (The docs site's own links
and anchors are checked by ``mkdocs build --strict`` in the lint env.)"""

from __future__ import annotations

import re
import shlex

import pytest

from pollbench.tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_INLINE = re.compile(r"`((?:\.venv/bin/)?pollbench [^`]+)`")


def quoted_commands(block: bool) -> list[tuple[str, str]]:
    """(where, command) of every pollbench command in a code block (``block``) or in a
    code span of the text."""
    found = []
    for page in PAGES:
        fenced = False
        # a shell line continued with a backslash is one command
        lines = re.sub(r"\\\n\s*", " ", page.read_text()).splitlines()
        for n, line in enumerate(lines, 1):
            if line.strip().startswith("```"):
                fenced = not fenced
                continue
            where = f"{page.relative_to(REPO)}:{n}"
            if fenced or line.startswith("    "):
                text = line.strip().removeprefix("$ ")
                if block and re.match(r"(\.venv/bin/)?pollbench\s", text):
                    found.append((where, text))
                continue
            if not block:
                found += [(where, m) for m in _INLINE.findall(line)]
    return found


def argv_of(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    for stop in ("|", "&&", ";", ">", "2>&1"):  # the rest of a shell line is not pollbench's
        if stop in words:
            words = words[:words.index(stop)]
    return words[1:]


def test_the_docs_quote_commands_at_all():
    assert len(quoted_commands(block=True)) > 20 and len(quoted_commands(block=False)) > 50


@pytest.mark.parametrize("where,command", quoted_commands(block=True))
def test_every_command_line_parses(where, command):
    """A whole command line, as a user pastes it: the CLI accepts it."""
    from pollbench.cli import build_parser

    try:
        build_parser().parse_args(argv_of(command))
    except SystemExit as e:
        assert e.code == 0, f"{where}: `{command}` is refused by the CLI"


@pytest.mark.parametrize("where,command", quoted_commands(block=False))
def test_every_command_named_in_the_text_exists_with_its_options(where, command):
    """A command named in a sentence (often without its arguments): its subcommand and each
    option it shows exist."""
    import argparse

    from pollbench.cli import build_parser

    parser = build_parser()
    words = argv_of(command)
    while words:  # down the subcommands: pollbench nginx build, pollbench history import
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[0].startswith("-"):
            break
        assert words[0] in subs[0].choices, f"{where}: no command {words[0]!r} in `{command}`"
        parser, words = subs[0].choices[words[0]], words[1:]
    known = set(parser._option_string_actions) | set(build_parser()._option_string_actions)
    unknown = [w.split("=")[0] for w in words
               if w.startswith("-") and w != "-" and w.split("=")[0] not in known]
    assert unknown == [], f"{where}: `{command}` names options the CLI lacks"


def test_readme_links_lead_to_files_of_the_checkout():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links if not link.startswith("http")
               and not (REPO / link).exists()]
    assert missing == []
