"""Helpers for the end-to-end tests of the `relayd-sendmail` console script.

Every helper runs the real installed script in a subprocess with an explicit environment copied
from `os.environ` after conftest's `isolated_home` fixture ran, explicit stdin and a timeout, and
reads the queue back with plain stdlib sqlite3 (never through relayd's own store code).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from relayd import paths

# The console script installed next to this interpreter (the project's virtualenv).
SENDMAIL = str(Path(sys.executable).with_name("relayd-sendmail"))

DEFAULT_RC = "account default\nhost 127.0.0.1\nport 1\nfrom me@example.org\n"


def sendmail_env(**extra: str) -> dict[str, str]:
    """The environment for one run: the isolated test environment plus `extra`.

    The system msmtprc is pointed at a file that does not exist, so a /etc/msmtprc on the
    machine running the tests cannot change which account is chosen.
    """
    env = dict(os.environ)
    env["RELAYD_MSMTPRC_SYSTEM"] = os.path.join(env["HOME"], "no-system-msmtprc")
    env.update(extra)
    return env


def run_sendmail(
    args: Sequence[str],
    stdin: bytes,
    *,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    timeout: float = 30,
    umask: int = 0o022,
) -> subprocess.CompletedProcess[bytes]:
    """Run `relayd-sendmail ARGS` (after an optional wrapper `prefix`) with `stdin` as input,
    under the common umask 022 (so private file modes must come from relayd itself)."""
    environ = dict(env) if env is not None else sendmail_env()
    return subprocess.run(
        [*prefix, SENDMAIL, *args],
        input=stdin,
        capture_output=True,
        env=environ,
        cwd=environ["HOME"],
        timeout=timeout,
        umask=umask,
        check=False,
    )


def write_msmtprc(text: str = DEFAULT_RC, path: Path | None = None) -> Path:
    """Write an msmtprc (default: ~/.msmtprc) with the mode msmtp insists on, 0600."""
    target = path if path is not None else Path(os.environ["HOME"]) / ".msmtprc"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o600)
    return target


def queue_db() -> Path:
    """The SQLite file the test environment's RELAYD_DATABASE_URL names."""
    found = paths.sqlite_path(os.environ["RELAYD_DATABASE_URL"])
    assert found is not None, "conftest should point RELAYD_DATABASE_URL at a SQLite file"
    return Path(found)


class Stored(NamedTuple):
    """One row of the messages table with its recipients (address, state) in position order."""

    queue_id: str
    state: str
    account: str
    config_file: str | None
    overrides: Any
    sender: str
    size: int
    data: bytes
    created_at: float
    next_attempt_at: float | None
    recipients: list[tuple[str, str]]


def _connect_existing(db: Path) -> sqlite3.Connection | None:
    """A connection to `db` if the file exists (never creates it), else None."""
    if not db.exists():
        return None
    return sqlite3.connect(f"file:{db}?mode=rw", uri=True)


def stored_messages(db: Path | None = None) -> list[Stored]:
    """Every stored message in insertion order; [] when the queue or its tables do not exist."""
    conn = _connect_existing(db or queue_db())
    if conn is None:
        return []
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "messages" not in tables:
            return []
        rows = conn.execute(
            "SELECT id, queue_id, state, account, config_file, overrides, sender, size,"
            " created_at, next_attempt_at FROM messages ORDER BY id"
        ).fetchall()
        result = []
        for row_id, queue_id, state, account, config_file, overrides, *rest in rows:
            sender, size, created_at, next_attempt_at = rest
            chunks = conn.execute(  # a body over 64 KiB is several rows (schema 0005)
                "SELECT data FROM bodies WHERE message_id = ? ORDER BY seq", (row_id,)
            ).fetchall()
            if not chunks:  # its body purged ([retain]): not listed, as the join did
                continue
            data = b"".join(bytes(chunk) for (chunk,) in chunks)
            recipients = conn.execute(
                "SELECT address, state FROM recipients WHERE message_id = ? ORDER BY position",
                (row_id,),
            ).fetchall()
            result.append(
                Stored(
                    queue_id,
                    state,
                    account,
                    config_file,
                    json.loads(overrides),
                    sender,
                    size,
                    data,
                    created_at,
                    next_attempt_at,
                    [(address, status) for address, status in recipients],
                )
            )
        return result
    finally:
        conn.close()


def row_counts(db: Path | None = None) -> tuple[int, int]:
    """(messages, recipients) rows; (0, 0) when the queue or its tables do not exist."""
    conn = _connect_existing(db or queue_db())
    if conn is None:
        return (0, 0)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not {"messages", "recipients"} <= tables:
            return (0, 0)
        (messages,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        (recipients,) = conn.execute("SELECT count(*) FROM recipients").fetchone()
        return (int(messages), int(recipients))
    finally:
        conn.close()


def check_consistent(db: Path | None = None) -> None:
    """Assert the queue is sound: integrity_check ok, foreign keys hold, no partial rows
    (every message has recipients at positions 0..n-1, every recipient has its message),
    and every message's data is as long as its size column."""
    conn = _connect_existing(db or queue_db())
    assert conn is not None, "the queue database does not exist"
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        lonely = conn.execute(
            "SELECT queue_id FROM messages m"
            " WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id)"
        ).fetchall()
        assert lonely == [], f"messages without recipients: {lonely}"
        stray = conn.execute(
            "SELECT message_id FROM recipients r"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id)"
        ).fetchall()
        assert stray == [], f"recipients without a message: {stray}"
        gaps = conn.execute(
            "SELECT message_id FROM recipients GROUP BY message_id"
            " HAVING min(position) != 0 OR max(position) != count(*) - 1"
        ).fetchall()
        assert gaps == [], f"messages with missing recipient positions: {gaps}"
        wrong_size = conn.execute(
            "SELECT queue_id FROM messages LEFT JOIN bodies ON message_id = id"
            " WHERE data IS NULL OR length(data) != size"
        ).fetchall()
        assert wrong_size == [], f"messages whose data is not `size` bytes long: {wrong_size}"
    finally:
        conn.close()


def assert_nothing_stored(db: Path | None = None) -> None:
    """No message and no recipient row (the queue may not even exist)."""
    assert row_counts(db) == (0, 0)


def error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one line a failed run wrote to stderr (asserting it is exactly one line)."""
    text = result.stderr.decode("utf-8", "replace")
    assert text.endswith("\n") and text.count("\n") == 1, f"not one stderr line: {text!r}"
    assert result.stdout == b""
    return text[:-1]


@functools.cache
def can_unshare_mounts() -> bool:
    """Whether this process may make mounts in a private mount namespace (root, `unshare`)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [*in_private_mounts("mount -t tmpfs -o size=64k tmpfs /mnt"), "true"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def in_private_mounts(setup: str, run: str = 'exec "$@"') -> list[str]:
    """A command prefix: in a new private mount namespace, run shell `setup`, then `run`, in
    which "$@" is the command that follows the prefix. The mounts vanish with the process."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        f"{setup}\n{run}",
        "sh",
    ]
