"""The submission path stays import-light (SPEC §1.1, DESIGN seam 3)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "sqlalchemy",
    "alembic",
    "typer",
    "rich",
    "aiosmtpd",
    "apscheduler",
    "keyring",
    "aiosmtplib",
    "click",
)
SLOW_STDLIB = ("email.parser", "email.policy", "email.headerregistry", "asyncio")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout))


def test_sendmail_imports_nothing_heavy() -> None:
    modules = loaded_after("import relayd.sendmail")
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
    slow = sorted(m for m in modules if m in SLOW_STDLIB)
    assert slow == []
