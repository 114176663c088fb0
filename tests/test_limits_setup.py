"""`[limits.ACCOUNT]` around the runner: relayd.toml checks, `relayd status`, the rate-reply
table, schema 0007 up and down, and a real daemon that wakes when the window opens."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from relayd import settings
from relayd.delivery.classify import RATE_LIMITS, classify, rate_limited
from relayd.delivery.result import Disposition, Event, Reply
from relayd.errors import ConfigError
from relayd.settings import AccountLimits, Window
from relayd.store.budget import Budgets
from relayd.store.dialects import make_engine
from relayd.store.migrate import alembic_config
from relayd.store.queued import Lease, State
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode
from tests.queue_fill import enqueue_many
from tests.sendmail_helpers import run_sendmail, sendmail_env
from tests.store_helpers import BACKENDS, database_url, list_messages, message
from tests.test_config_check import check, problems, write_toml
from tests.test_daemon import Daemon, eventually, rc_for, run_relayd, start_daemon
from tests.test_status import status, status_json
from tests.upstream import UpstreamServer

__all__ = ["start_daemon"]  # a pytest fixture, used by name


# -- relayd.toml ---------------------------------------------------------------------------------


def test_limits_parse_to_windows_of_one_or_many_rates() -> None:
    text = (
        '[limits.work]\nmessages = "30/1m"\nrecipients = ["2000/1d", "100/h"]\n'
        'backoff = "30s"\nbackoff_max = "2h"\n[limits.home]\nmessages = "5/90s"\n'
    )
    found = settings.parse(text, "relayd.toml", default_database="sqlite:///q")
    assert found.limits_for("work") == AccountLimits(
        (Window(30, 60, "30/1m"),),
        (Window(2000, 86400, "2000/1d"), Window(100, 3600, "100/h")),
        30,
        7200,
    )
    assert found.limits_for("home") == AccountLimits((Window(5, 90, "5/90s"),))
    assert found.limits_for("other") is None


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('messages = "30"', "limits.work.messages", 'expected a rate such as "30/1m"'),
        ('messages = "0/1m"', "limits.work.messages", "not '0/1m'"),
        ('recipients = "5/1y"', "limits.work.recipients", "not '5/1y'"),
        ("recipients = []", "limits.work.recipients", "not an empty list"),
        ("messages = 30", "limits.work.messages", "not 30"),
        ('burst = "5/1m"', "limits.work.burst", "unknown key limits.work.burst"),
        ('backoff = "2h"', "limits.work.backoff", "longer than backoff_max"),
    ],
)
def test_a_bad_limit_names_file_and_key_and_exits_78(
    text: str, key: str, says: str, isolated_home: Path
) -> None:
    path = write_toml(f"[limits.work]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        settings.parse(path.read_text(), str(path), default_database="sqlite:///q")
    assert caught.value.exit_code == ExitCode.CONFIG
    assert caught.value.message.startswith(f"{path}: ")
    assert key in caught.value.message and says in caught.value.message
    result = check("--json")  # relayd config check: the same problem, with its line
    assert result.exit_code == ExitCode.CONFIG
    (problem,) = [p for p in problems(result) if p["file"] == str(path)]
    assert problem["line"] == 2 and key in str(problem["message"])
    assert says in str(problem["message"])


def test_limits_that_are_not_tables_are_refused(isolated_home: Path) -> None:
    path = write_toml('[limits]\nwork = "30/1m"\n')
    with pytest.raises(ConfigError) as caught:
        settings.parse(path.read_text(), str(path), default_database="sqlite:///q")
    assert caught.value.message == f"{path}: limits.work: expected a table ([limits.work])"


# -- the one table of rate replies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "limited"),
    [
        (421, "4.7.0 Try again later, closing connection.", True),
        (421, "4.3.2 Service shutting down", True),  # any 421 (SPEC §8)
        (450, "4.7.0 Too many messages, slow down", True),
        (451, "4.7.0 Temporarily deferred due to unexpected volume", True),
        (452, "4.3.2 Concurrent connections limit exceeded", True),
        (550, "5.4.5 Daily user sending limit exceeded", True),
        (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", True),
        (451, "Rate limited, please slow down", True),
        (451, "4.3.0 Try again later", False),  # an ordinary temporary failure
        (452, "4.5.3 Too many recipients", False),  # this message's size, not the rate
        (552, "5.2.2 Mailbox quota exceeded", False),  # the recipient's mailbox is full
        (550, "5.7.1 Relaying denied; separate the account", False),
        (250, "2.0.0 Ok: rate noted", False),
    ],
)
def test_rate_replies_are_recognised_from_one_table(code: int, text: str, limited: bool) -> None:
    assert rate_limited(Reply(code, (text,))) is limited
    failure = classify(Event.END, Reply(code, (text,)))
    assert failure.rate_limited is limited
    if limited:  # a quota reply is never a permanent failure of the message
        assert failure.disposition is Disposition.RETRY
    assert len(RATE_LIMITS) >= 4


# -- relayd status -------------------------------------------------------------------------------


def test_status_shows_each_windows_use_and_a_pause(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml('[limits.default]\nmessages = "3/1h"\nrecipients = "50/1d"\n')
    monkeypatch.setenv("RELAYD_CONFIG", str(path))
    limits = settings.load().limits_for("default")
    assert limits is not None
    now = time.time()
    with SqlStore.open(os.environ["RELAYD_DATABASE_URL"]) as store:
        ids = enqueue_many(store, [message(n) for n in range(2)], now)
        budgets = Budgets(store)
        leases = [(Lease(queue_id, "nobody"), 4) for queue_id in ids]
        assert budgets.spend("default", limits, leases, now) == (2, None)
        pause = budgets.pause("default", limits, now, "421 4.7.0 Too many messages")
    result = status()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:4] == ["default", "messages", "3/1h", "2/3"] for line in lines)
    assert any(line.split()[:4] == ["default", "recipients", "50/1d", "8/50"] for line in lines)
    assert any("paused by the server" in line for line in lines)
    found = status_json()["limits"]["default"]
    assert found["windows"][0] == {
        "kind": "messages",
        "window": "3/1h",
        "used": 2,
        "limit": 3,
        "resets_at": pytest.approx(now + 3600),
    }
    assert found["paused_until"] == pytest.approx(pause.until)
    assert found["paused_reason"] == pause.reason


# -- schema 0007 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_revision_0007_adds_the_budget_tables_and_removes_them(
    backend: str, tmp_path: Path
) -> None:
    with database_url(backend, tmp_path) as url:
        engine = make_engine(url)
        config = alembic_config(url)
        try:
            command.upgrade(config, "0006")
            assert not {"rate_budgets", "rate_pauses"} & _tables(engine)
            command.upgrade(config, "0007")
            assert {"rate_budgets", "rate_pauses"} <= _tables(engine)
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO rate_budgets (account, kind, seconds, started_at, used)"
                        " VALUES ('a', 'messages', 60, 1.0, 3)"
                    )
                )
            command.downgrade(config, "0006")
            assert not {"rate_budgets", "rate_pauses"} & _tables(engine)
            assert "messages" in _tables(engine)
        finally:
            engine.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


# -- a real daemon -------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _limited_daemon(
    start_daemon: Callable[..., Daemon], upstream: UpstreamServer, tmp_path: Path, limits: str
) -> Daemon:
    """`relayd daemon` delivering to `upstream` with `[limits.default]` set to `limits`."""
    rc_for(upstream.port)
    toml = tmp_path / "relayd.toml"
    toml.write_text(f"[limits.default]\n{limits}\n")
    return start_daemon(RELAYD_CONFIG=str(toml))


def test_the_daemon_sends_the_rest_when_the_window_opens_without_polling(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    with UpstreamServer(timeout=20) as upstream:
        with SqlStore.open(os.environ["RELAYD_DATABASE_URL"]) as store:
            ids = enqueue_many(store, [message(n) for n in range(5)], time.time())
            daemon = _limited_daemon(start_daemon, upstream, tmp_path, 'messages = "3/4s"')
            upstream.wait_for(3, timeout=10)
            waiting = eventually(
                lambda: [m for m in list_messages(store, State.QUEUED) if m.reason] or None,
                10,
                "the rest waiting with the reason",
            )
            until = waiting[0].next_attempt_at
            assert until is not None and [m.queue_id for m in waiting] == ids[3:]
            cpu = _cpu_seconds(daemon.proc.pid)
            time.sleep(max(until - time.time() - 0.5, 0))
            assert len(upstream.transactions) == 3
            idle = _cpu_seconds(daemon.proc.pid) - cpu
            assert idle < 0.5, f"the daemon used {idle:.2f} s of CPU while waiting"
            upstream.wait_for(5, timeout=10)
            assert time.time() >= until
            eventually(
                lambda: {m.state for m in list_messages(store)} == {State.SENT}, 10, "all sent"
            )
        code, err = daemon.stop()
        assert code == 0, err


def test_flush_wait_ends_when_the_rest_waits_for_the_budget(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    with UpstreamServer(timeout=20) as upstream:
        daemon = _limited_daemon(start_daemon, upstream, tmp_path, 'messages = "2/10m"')
        with SqlStore.open(os.environ["RELAYD_DATABASE_URL"]) as store:
            ids = enqueue_many(store, [message(n) for n in range(3)], time.time())
            started = time.monotonic()
            flushed = run_relayd("queue", "flush", "--wait", "--timeout", "60")
            assert time.monotonic() - started < 30  # not the ten minutes of the window
            assert flushed.returncode == ExitCode.TEMPFAIL, flushed.stderr
            assert len(upstream.transactions) == 2
            (waiting,) = list_messages(store, State.QUEUED)
            assert waiting.queue_id == ids[2]
            assert waiting.reason is not None and waiting.reason.startswith("rate limit (2/10m)")
        code, err = daemon.stop()
        assert code == 0, err


def test_sendmail_odi_spends_the_same_budget(tmp_path: Path) -> None:
    with UpstreamServer(timeout=20) as upstream:
        rc_for(upstream.port)
        toml = tmp_path / "relayd.toml"
        toml.write_text('[limits.default]\nmessages = "1/10m"\n')
        env = sendmail_env(RELAYD_CONFIG=str(toml))
        mail = b"Subject: t\n\nhello\n"
        first = run_sendmail(["-odi", "you@example.org"], mail, env=env)
        assert first.returncode == 0, first.stderr
        second = run_sendmail(["-odi", "you@example.org"], mail, env=env)
        assert second.returncode == 0, second.stderr  # queued, as for a temporary failure
        assert len(upstream.transactions) == 1
        with SqlStore.open(os.environ["RELAYD_DATABASE_URL"]) as store:
            (waiting,) = list_messages(store, State.QUEUED)
        assert waiting.reason is not None and waiting.reason.startswith("rate limit (1/10m)")
        assert (
            f"message {waiting.queue_id} stays queued: {waiting.reason}" in second.stderr.decode()
        )
        assert store.attempts(waiting.queue_id) == []
