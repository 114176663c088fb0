"""relayd.toml(5): built from CONFIGURATION.rst by docutils' manpage writer (as `make man`
does), without a warning, with every key and variable of the reference, and readable by man."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.store_helpers import REPO
from tests.test_configuration_doc import settings_keys, source_variables

SOURCE = REPO / "man" / "relayd.toml.5.rst"
BUILD = (sys.executable, "-m", "docutils", "--writer=manpage", "--halt=warning")  # as `make man`


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("docutils", reason="docutils (the dev extra) builds the man page")
    target = tmp_path_factory.mktemp("man") / "relayd.toml.5"
    built = subprocess.run(
        [*BUILD, str(SOURCE), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return target


def test_the_page_is_section_5_of_relayd_toml(page: Path) -> None:
    roff = page.read_text(encoding="utf-8")
    header = next(line for line in roff.splitlines() if line.startswith(".TH "))
    assert header.split()[1:3] == ['"relayd.toml"', '"5"'], header


def test_every_key_and_variable_is_in_the_page(page: Path) -> None:
    roff = page.read_text(encoding="utf-8").replace("\\-", "-").replace("\\_", "_")
    keys = sorted(settings_keys())
    missing = [key for key in keys if key.rpartition(".")[2] not in roff]
    missing += [name for name in source_variables() if name not in roff]
    assert not missing, missing
    for table in {key.rpartition(".")[0] for key in keys if "." in key}:  # [oauth2.ACCOUNT]
        assert f"[{table}]" in roff


def test_man_renders_it(page: Path) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed")
    shown = subprocess.run(
        [man, "-l", str(page)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MANPAGER": "cat", "PAGER": "cat"},
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.lstrip().startswith("relayd.toml(5)")
    assert "connections_per_account" in shown.stdout
