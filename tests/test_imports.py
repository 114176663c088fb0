"""The submission path stays import-light (SPEC §1.1, DESIGN seam 3)."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from relayd.store.sql import SqlStore
from relayd.submission import protocol
from tests.host_helpers import NOBODY, Host, as_uid, host, needs_root
from tests.sendmail_helpers import run_sendmail, sendmail_env, stored_messages, write_msmtprc
from tests.store_helpers import PG_URL, list_messages, postgres_schema

__all__ = ["host"]  # a fixture

HEAVY = (
    "sqlalchemy",
    "alembic",
    "typer",
    "rich",
    "aiosmtpd",
    "apscheduler",
    "keyring",
    "click",
    "authlib",  # OAuth2: only when a token is fetched
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
    "re",  # with enum: a fifth of a submission's start-up
    "enum",
    "json",
)
HOT_PATH = (
    "relayd.submission.sendmail",
    "relayd.submission.submit",
    "relayd.submission.message",
    "relayd.store.fastpath",
    "relayd.store.pgfast",
    "relayd.store.location",
    "relayd.settings",
    "relayd.settings_hot",
    "relayd.paths",
)


# Python without `site`, relayd from this checkout: an editable install's import hook (and
# any .pth file) loads modules such as re at start-up, which would hide relayd's own imports.
BARE_PYTHON = (sys.executable, "-S")
CHECKOUT = str(Path(__file__).resolve().parent.parent)


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(repr(sorted(sys.modules)))"
    out = subprocess.run(
        [*BARE_PYTHON, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": CHECKOUT},
    )
    loaded: list[str] = ast.literal_eval(out.stdout)
    return set(loaded)


@pytest.mark.parametrize("module", HOT_PATH)
def test_hot_path_imports_nothing_heavy(module: str) -> None:
    modules = loaded_after(f"import {module}")
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_sendmail_avoids_slow_standard_modules() -> None:
    modules = loaded_after("import relayd.submission.sendmail, relayd.submission.submit")
    assert sorted(m for m in modules if m in SLOW_STDLIB) == []


# What a whole submission may load, whichever way it goes: no full settings loader (dataclasses,
# tomllib), nothing heavy, none of the slow standard modules.
NEVER_ON_SUBMISSION = frozenset({"relayd.settings", "tomllib", "dataclasses", "inspect"})
SUBMIT_AND_LIST = (  # repr, not json: json would load re
    "import sys\n"
    "from relayd.submission.sendmail import main\n"
    "code = int(main(['relayd-sendmail', 'you@example.org']))\n"
    "sys.stdout.write('\\n' + repr([code, sorted(sys.modules)]) + '\\n')\n"
)
MESSAGE = b"From: me@example.org\nTo: you@example.org\nSubject: hi\n\nhello\n"


def submission_modules(env: Mapping[str, str], prefix: Sequence[str] = ()) -> set[str]:
    """The modules loaded by a whole `relayd-sendmail you@example.org` run (exit 0 checked)."""
    done = subprocess.run(
        [*prefix, *BARE_PYTHON, "-c", SUBMIT_AND_LIST],
        input=MESSAGE,
        capture_output=True,
        env={**env, "PYTHONPATH": CHECKOUT},
        cwd=env["HOME"],
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    code, modules = ast.literal_eval(done.stdout.decode().strip().splitlines()[-1])
    assert code == 0, done.stderr
    return set(modules)


def over_budget(modules: set[str], allowed: frozenset[str] = frozenset()) -> list[str]:
    return sorted(
        m
        for m in modules - allowed
        if m.split(".")[0] in HEAVY or m in SLOW_STDLIB or m in NEVER_ON_SUBMISSION
    )


# What tomllib itself imports, when the light reader hands it a file.
TOMLLIB_LOADS = frozenset({"tomllib", "typing", "re", "enum"})


@pytest.mark.parametrize("toml", [None, "plain", "tomllib"])
def test_a_submission_stays_in_budget_with_or_without_relayd_toml(
    toml: str | None, tmp_path: Path
) -> None:
    write_msmtprc()
    env = sendmail_env()
    if toml is not None:
        config = tmp_path / "relayd.toml"
        # "tomllib": a multi-line array the light reader hands to tomllib (which may load then).
        # "plain": dotted tables and string arrays as [limits] and [oauth2] have them, scanned.
        extra = (
            '[listen]\naddress = [\n  "127.0.0.1:2525",\n]\n'
            if toml == "tomllib"
            else '[limits.default]\nmessages = ["30/1m", "2000/1d"]\n'
        )
        config.write_text(
            f'database = "{env["RELAYD_DATABASE_URL"]}"\n[retry]\nfirst = "1m"\n'
            f'[submit]\nmax_size = "1MiB"\n{extra}'
        )
        env["RELAYD_CONFIG"] = str(config)
        del env["RELAYD_DATABASE_URL"]
    assert run_sendmail(["you@example.org"], MESSAGE, env=env).returncode == 0  # makes the queue
    modules = submission_modules(env)
    # tomllib (and the typing it imports) only for a file the light reader cannot read itself
    assert over_budget(modules, TOMLLIB_LOADS if toml == "tomllib" else frozenset()) == []
    assert ("tomllib" in modules) is (toml == "tomllib")
    assert len(stored_messages()) == 2


@pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set")
def test_a_submission_into_postgresql_loads_no_driver() -> None:
    write_msmtprc()
    with postgres_schema() as url:
        env = sendmail_env(RELAYD_DATABASE_URL=url + "&sslmode=disable")
        assert run_sendmail(["you@example.org"], MESSAGE, env=env).returncode == 0  # migrates
        modules = submission_modules(env)
        with SqlStore.open(url) as store:
            assert len(list_messages(store)) == 2
    assert over_budget(modules) == []
    assert sorted(m for m in modules if m.split(".")[0] in ("psycopg", "psycopg_binary")) == []
    assert "relayd.store.pgwire" in modules  # it went the fast way
    assert "ssl" not in modules  # loaded only to encrypt


# What only a process that composes the message itself loads (a socket submission does not).
COMPOSING_ONLY = frozenset(
    {
        "collections",
        "relayd.accounts.msmtprc",
        "relayd.accounts.select",
        "relayd.accounts.resolve",
        "relayd.submission.headers",
        "relayd.submission.message",
        "relayd.submission.submit",
        "relayd.store",
    }
)


@needs_root
def test_a_submission_through_the_host_socket_stays_in_budget(host: Host) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(host.socket))
    os.chmod(host.socket, 0o666)
    server.listen(1)
    server.settimeout(30)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            while True:
                header = conn.recv(protocol.HEADER_SIZE, socket.MSG_WAITALL)
                kind, length = protocol.parse_header(header)
                got.append(kind)
                if length:
                    conn.recv(length, socket.MSG_WAITALL)
                if kind == protocol.END:
                    break
            reply = {"code": 0, "line": "queued as X", "warnings": []}
            conn.sendall(protocol.json_frame(protocol.REPLY, reply))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        modules = submission_modules(host.user_env(NOBODY), as_uid(NOBODY))
    finally:
        thread.join(30)
        server.close()
    assert got[0] == protocol.HELLO and got[-1] == protocol.END  # it went through the socket
    assert over_budget(modules) == []  # the frames' JSON without the json package
    assert "sqlite3" not in modules and "_sqlite3" not in modules
    # The daemon composes the message: the client needs no accounts, header rules or store,
    # and nothing of it imports collections.abc (which loads `collections`) for annotations.
    assert sorted(modules & COMPOSING_ONLY) == []
