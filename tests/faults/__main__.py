"""`python -m tests.faults [NAME ...]`: run the fault scenarios outside pytest, print the table."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.scenarios import SCENARIOS, two_daemons
from tests.store_helpers import PG_URL, postgres_schema


def main(argv: list[str]) -> int:
    names = argv or [*SCENARIOS, "two_daemons_postgresql"]
    unknown = [n for n in names if n not in SCENARIOS and n != "two_daemons_postgresql"]
    if unknown:
        print(f"unknown scenario(s): {' '.join(unknown)}", file=sys.stderr)
        return 64
    broken = 0
    started = time.monotonic()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as directory:
            root = Path(directory)
            if name == "two_daemons_postgresql":
                if not PG_URL:
                    print(f"{name}: skipped (RELAYD_TEST_DATABASE_URL is not set)")
                    continue
                with postgres_schema() as url:
                    figures = two_daemons(root, url)
            else:
                figures = SCENARIOS[name](root)
        print(figures.line(), flush=True)
        for problem in figures.problems():
            print(f"    {problem}", flush=True)
        broken += bool(figures.problems())
    took = time.monotonic() - started
    print(f"{len(names)} scenario(s), {broken} breaking the contract, {took:.0f} s")
    return 1 if broken else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
