"""The submission path stays import-light (SPEC §1.1, DESIGN seam 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "sqlalchemy",
    "alembic",
    "typer",
    "rich",
    "aiosmtpd",
    "apscheduler",
    "keyring",
    "click",
)
# Standard-library modules that cost milliseconds and the hot path does without.
SLOW_STDLIB = (
    "email.parser",
    "email.policy",
    "email.headerregistry",
    "asyncio",
    "dataclasses",
    "typing",
    "subprocess",
)
HOT_PATH = (
    "relayd.submission.sendmail",
    "relayd.submission.submit",
    "relayd.submission.message",
    "relayd.store.fastpath",
    "relayd.store.location",
    "relayd.settings",
    "relayd.paths",
)


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", HOT_PATH)
def test_hot_path_imports_nothing_heavy(module: str) -> None:
    modules = loaded_after(f"import {module}")
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_sendmail_avoids_slow_standard_modules() -> None:
    modules = loaded_after("import relayd.submission.sendmail, relayd.submission.submit")
    assert sorted(m for m in modules if m in SLOW_STDLIB) == []
