"""Shell completion of queue ids and account names: the callbacks, then bash and zsh asking the
installed `relayd` through typer's `_RELAYD_COMPLETE` protocol."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.cli import complete
from relayd.store.sql import SqlStore
from tests.sendmail_helpers import sendmail_env, write_msmtprc
from tests.store_helpers import message
from tests.test_daemon import RELAYD

RC = """\
defaults
tls off
account work
host 127.0.0.1
account home : work
from me@home.example
account   "spaced"
host 127.0.0.1
account default : home
"""


@pytest.fixture
def store() -> Iterator[SqlStore]:
    with SqlStore.open(os.environ["RELAYD_DATABASE_URL"]) as opened:
        yield opened


def fill(store: SqlStore) -> dict[str, list[str]]:
    """Queued, held and sent mail; the ids of each, sorted."""
    now = time.time()
    queued = [store.enqueue(message(n), now) for n in range(3)]
    held = [store.enqueue(message(10 + n, account="old"), now) for n in range(2)]
    store.hold(held, "held by the user")
    sent = store.enqueue(message(20), now)
    with store.engine.begin() as conn:  # sent by hand: no runner needed to tell states apart
        conn.exec_driver_sql("UPDATE messages SET state = 'sent' WHERE queue_id = ?", (sent,))
    return {"queued": sorted(queued), "held": sorted(held), "sent": [sent]}


def test_queue_ids_by_what_the_command_acts_on(store: SqlStore) -> None:
    ids = fill(store)
    everything = sorted(ids["queued"] + ids["held"] + ids["sent"])
    assert complete.any_id("") == everything
    assert complete.queued_id("") == ids["queued"]
    assert complete.holdable_id("") == ids["queued"]
    assert complete.held_id("") == ids["held"]
    first = everything[0]
    # a prefix narrows it down, typed in any case; a wildcard is a character like any other
    assert first in complete.any_id(first[:-1].lower())
    assert all(found.startswith(first[:-1]) for found in complete.any_id(first[:-1]))
    assert complete.any_id(first) == [first]
    assert complete.any_id("%") == complete.any_id("_") == []


def test_at_most_a_limit_of_ids(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(store)
    monkeypatch.setattr(complete, "LIMIT", 2)
    assert len(complete.any_id("")) == 2


def test_account_names_from_the_msmtprc_then_the_queue(store: SqlStore) -> None:
    write_msmtprc(RC)
    fill(store)  # mail of `default` and of `old`, an account no longer in the msmtprc
    assert complete.account_name("") == ["work", "home", "spaced", "default", "old"]
    assert complete.account_name("d") == ["default"]
    assert complete.account_name("x") == []


def test_no_queue_and_no_msmtprc_complete_nothing() -> None:
    assert complete.any_id("") == []
    assert complete.account_name("") == []
    queue_file = os.environ["RELAYD_DATABASE_URL"].removeprefix("sqlite:///")
    assert not os.path.exists(queue_file)  # completing created no queue


def test_an_eval_line_never_runs(isolated_home: Path) -> None:
    marker = isolated_home / "ran"
    write_msmtprc(f"eval touch {marker}\naccount work\nhost 127.0.0.1\n")
    assert complete.account_name("") == ["work"]
    assert not marker.exists()


def bash_complete(*words: str, **env: str) -> subprocess.CompletedProcess[str]:
    """What bash's completion function gets from `relayd` for the command line `words` (the
    last one being completed)."""
    environ = sendmail_env(
        _RELAYD_COMPLETE="complete_bash",
        COMP_WORDS=" ".join(("relayd", *words)),
        COMP_CWORD=str(len(words)),
        **env,
    )
    return subprocess.run([RELAYD], capture_output=True, text=True, env=environ, timeout=60)


def test_bash_completes_ids_and_accounts(store: SqlStore) -> None:
    write_msmtprc(RC)
    ids = fill(store)
    release = bash_complete("queue", "release", "")
    assert release.returncode == 0, release.stderr
    assert release.stdout.split() == ids["held"]
    flush = bash_complete("queue", "flush", ids["queued"][0][:-1])
    assert ids["queued"][0] in flush.stdout.split()
    assert not set(flush.stdout.split()) & set(ids["held"] + ids["sent"])
    for words in (
        ("queue", "flush", "--account", "h"),
        ("queue", "list", "-a", "h"),
        ("oauth2", "authorize", "h"),
    ):
        accounts = bash_complete(*words)
        assert accounts.returncode == 0, accounts.stderr
        assert accounts.stdout.split() == ["home"]
    for command in ("show", "log", "delete"):
        assert len(bash_complete("queue", command, "").stdout.split()) == 6


def test_zsh_completes_too(store: SqlStore) -> None:
    ids = fill(store)
    environ = sendmail_env(
        _RELAYD_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="relayd queue hold "
    )
    done = subprocess.run([RELAYD], capture_output=True, text=True, env=environ, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(queue_id in done.stdout for queue_id in ids["queued"])
    assert not any(queue_id in done.stdout for queue_id in ids["held"])


def test_a_broken_configuration_completes_nothing_and_says_nothing(
    store: SqlStore, isolated_home: Path
) -> None:
    fill(store)
    toml = isolated_home / ".config" / "relayd" / "relayd.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text("[retry]\nbogus = 1\n", encoding="utf-8")
    env = {"RELAYD_DATABASE_URL": ""}  # the settings file is read (it names the queue)
    broken = bash_complete("queue", "show", "", **env)
    assert (broken.returncode, broken.stdout.split(), broken.stderr) == (0, [], "")
