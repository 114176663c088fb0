"""Every `relayd … --help`: paragraphs refilled to the terminal's width (not the docstrings'
own line breaks), no `<bool>` placeholder for a flag, nothing wider than the terminal."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator

import pytest
import typer.main
from typer.testing import CliRunner

from relayd.cli import app
from tests.sendmail_helpers import sendmail_env
from tests.test_daemon import RELAYD

WIDTHS = (60, 80, 120)
CLICK_MAX_WIDTH = 80


def command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command's words, from the tree typer builds (its own vendored click: a group is
    what has `commands`)."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from command_paths(sub, (*path, name))


PATHS = sorted(command_paths(typer.main.get_command(app)))


def fill_width(columns: int) -> int:
    """The width click fills help to on a terminal of `columns`: the terminal's less 2, at most
    its max_content_width (80) less 2, at least 50."""
    return max(min(columns, CLICK_MAX_WIDTH) - 2, 50)


def help_text(path: tuple[str, ...], columns: int) -> str:
    """`relayd PATH --help` in this process, as on a terminal of `columns` (CliRunner forces
    80 columns unless told the width; `test_the_script_…` runs the installed script)."""
    done = CliRunner().invoke(app, [*path, "--help"], terminal_width=fill_width(columns))
    assert done.exit_code == 0, done.output
    assert done.stderr == ""
    return done.stdout


def description(text: str) -> list[list[str]]:
    """The paragraphs between the usage line and the first section (Arguments:, Options:)."""
    lines = text.splitlines()
    body: list[str] = []
    for line in lines[1:]:
        if line.endswith(":") and not line.startswith(" "):
            break
        body.append(line)
    paragraphs: list[list[str]] = [[]]
    for line in body:
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def test_every_command_is_walked() -> None:
    assert {(), ("status",), ("queue", "flush"), ("config", "check")} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "relayd")
def test_help_is_filled_to_the_width_without_type_placeholders(path: tuple[str, ...]) -> None:
    for width in WIDTHS:
        text = help_text(path, width)
        assert "<bool>" not in text
        assert "\x1b" not in text and "╭" not in text  # plain text, no panels
        assert all(len(line) <= width for line in text.splitlines()), text
        fill = fill_width(width)
        for paragraph in description(text):
            # filled greedily: the next line's first word would not have fitted on this one
            for line, following in itertools.pairwise(paragraph):
                first_word = following.split()[0]
                assert len(line) + 1 + len(first_word) > fill, f"ragged at {width}:\n{text}"


def test_a_narrow_terminal_refills_the_same_words() -> None:
    wide, narrow = (description(help_text(("status",), width)) for width in (80, 60))
    assert [" ".join(p).split() for p in wide] == [" ".join(p).split() for p in narrow]
    assert sum(map(len, narrow)) > sum(map(len, wide))  # more lines


@pytest.mark.parametrize("columns", WIDTHS)
def test_the_script_prints_the_same_help(columns: int) -> None:
    done = subprocess.run(
        [RELAYD, "status", "--help"],
        capture_output=True,
        text=True,
        env=sendmail_env(COLUMNS=str(columns), TERM="xterm-256color"),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == help_text(("status",), columns)
