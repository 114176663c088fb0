"""Run the issue-12 fault scenarios outside pytest and print one figures line each (README).

Usage: ``.venv/bin/python benchmarks/faults.py [SCENARIO ...]`` (default: all); the same as
``.venv/bin/python -m tests.faults``. Set RELAYD_TEST_DATABASE_URL for the PostgreSQL one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.__main__ import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
