"""`[listen] workers`: SMTP sessions served by worker processes the daemon supervises, with real
clients on 127.0.0.1: a worker killed with SIGKILL loses nothing it acknowledged and is reported
once and replaced; SIGTERM drains; the workers go with the daemon; max_sessions counts all."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sendmail_helpers import stored_messages, write_msmtprc
from tests.store_helpers import PG_URL, list_messages, postgres_schema
from tests.test_daemon import Daemon, eventually
from tests.test_listener import MESSAGE, free_port, listener, start_daemon, upstream
from tests.upstream import UpstreamServer

__all__ = ["listener", "start_daemon", "upstream"]  # fixtures

Start = Callable[..., tuple[Daemon, int]]
SENDERS = 4  # client threads sending at once
RUN_LIMIT = 30.0  # seconds a client thread may run


def workers_of(daemon: Daemon) -> list[int]:
    """The daemon's child processes (its listener workers), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{daemon.proc.pid}/task").iterdir():
        found += [int(pid) for pid in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has not been reaped yet: it counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


class Sender(threading.Thread):
    """Sends messages on one connection until stopped (a new connection after a cut one); the
    queue ids of every 250 it got."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.acknowledged: list[str] = []
        self.cut = 0

    def run(self) -> None:
        deadline = time.monotonic() + RUN_LIMIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                    client.ehlo()
                    while not self.stop.is_set() and time.monotonic() < deadline:
                        client.mail("me@example.org")
                        client.rcpt("you@example.org")
                        code, reply = client.data(MESSAGE)
                        assert code == 250, reply
                        self.acknowledged.append(reply.split()[-1].decode())
            except (OSError, smtplib.SMTPException):
                self.cut += 1  # the worker serving it died: this message was never acknowledged
                time.sleep(0.05)


@contextlib.contextmanager
def sending(port: int) -> Iterator[list[Sender]]:
    """SENDERS client threads sending to `port` until the block ends."""
    stop = threading.Event()
    senders = [Sender(port, stop) for _ in range(SENDERS)]
    for sender in senders:
        sender.start()
    try:
        yield senders
    finally:
        stop.set()
        for sender in senders:
            sender.join(RUN_LIMIT)


def test_a_worker_killed_with_sigkill_loses_no_acknowledged_mail_and_is_reported_once(
    listener: Start, upstream: UpstreamServer
) -> None:
    daemon, port = listener("workers = 2")
    eventually(lambda: len(workers_of(daemon)) == 2, 10, "two workers")
    first = workers_of(daemon)
    with sending(port) as senders:
        eventually(lambda: sum(len(s.acknowledged) for s in senders) >= 20, 20, "some 250s")
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: not alive(victim), 10, "the killed worker gone")
        eventually(
            lambda: len([p for p in workers_of(daemon) if p not in first]) == 1,
            20,
            "a new worker in its place",
        )
        count = sum(len(s.acknowledged) for s in senders)
        eventually(lambda: sum(len(s.acknowledged) for s in senders) >= count + 20, 20, "250s")
    acknowledged = {queue_id for s in senders for queue_id in s.acknowledged}
    stored = {m.queue_id for m in stored_messages()}
    assert acknowledged <= stored, acknowledged - stored
    # Nothing stuck: every stored message is delivered by the daemon's runner.
    upstream.wait_for(len(stored), timeout=60)
    eventually(lambda: all(m.state == "sent" for m in stored_messages()), 30, "every message sent")
    assert workers_of(daemon) and victim not in workers_of(daemon)
    code, err = daemon.stop(30)
    assert code == 0, err
    assert err.count(f"(pid {victim}) was killed by SIGKILL") == 1, err
    assert err.count("was killed by") == 1 and "Traceback" not in err, err


def test_sigterm_drains_the_workers_and_they_go_with_the_daemon(listener: Start) -> None:
    daemon, port = listener("workers = 2")
    eventually(lambda: len(workers_of(daemon)) == 2, 10, "two workers")
    pids = workers_of(daemon)
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        client.ehlo()
        client.mail("me@example.org")
        client.rcpt("you@example.org")
        code, reply = client.data(MESSAGE)
        assert code == 250, reply
        client.mail("me@example.org")  # a transaction open at the stop: cut, not stored
        code, err = daemon.stop(30)
    finally:
        client.close()
    assert code == 0 and "Traceback" not in err and "was killed" not in err, err
    assert not any(alive(pid) for pid in pids)
    assert [m.queue_id for m in stored_messages()] == [reply.split()[-1].decode()]


def test_workers_exit_when_the_daemon_is_killed(listener: Start) -> None:
    daemon, port = listener("workers = 2")
    eventually(lambda: len(workers_of(daemon)) == 2, 10, "two workers")
    pids = workers_of(daemon)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("me@example.org", ["you@example.org"], MESSAGE)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    eventually(lambda: not any(alive(pid) for pid in pids), 20, "the workers gone")
    assert len(stored_messages()) == 1


@pytest.mark.parametrize("workers", [0, 3])
def test_max_sessions_counts_every_worker_and_the_daemon_alone_serves_too(
    listener: Start, workers: int
) -> None:
    daemon, port = listener(f"workers = {workers}", "max_sessions = 2")
    with (
        smtplib.SMTP("127.0.0.1", port, timeout=10) as one,
        smtplib.SMTP("127.0.0.1", port, timeout=10) as two,
    ):
        assert one.noop()[0] == two.noop()[0] == 250
        with pytest.raises(smtplib.SMTPConnectError) as third:
            smtplib.SMTP("127.0.0.1", port, timeout=10)
        assert third.value.smtp_code == 421
        one.sendmail("me@example.org", ["you@example.org"], MESSAGE)
    assert len(workers_of(daemon)) == workers
    # The two sessions ended: there is room again.
    eventually(lambda: _accepted(port), 10, "a session accepted again")
    code, err = daemon.stop()
    assert code == 0 and "Traceback" not in err, err
    assert len(stored_messages()) == 1


def _accepted(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            return client.noop()[0] == 250
    except (smtplib.SMTPConnectError, ConnectionRefusedError):
        return False


def test_the_workers_key_is_auto_or_a_small_number() -> None:
    from relayd.errors import ConfigError
    from relayd.settings import parse

    def workers(value: str) -> int | None:
        text = f"[listen]\nworkers = {value}\n"
        return parse(text, "relayd.toml", default_database="sqlite:///q").listen.workers

    assert workers('"auto"') is None and workers("0") == 0 and workers("16") == 16
    for bad in ("17", "-1", "true", '"two"'):
        with pytest.raises(ConfigError, match=r"listen\.workers"):
            workers(bad)


@pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set")
def test_workers_commit_into_a_postgresql_queue(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    from relayd.store.sql import SqlStore

    write_msmtprc("account default\nhost 127.0.0.1\nport 1\nfrom me@example.org\n")
    port = free_port()
    config = tmp_path / "relayd.toml"
    config.write_text(f'[listen]\naddress = "127.0.0.1:{port}"\nworkers = 2\n')
    with postgres_schema() as url:
        daemon = start_daemon(RELAYD_CONFIG=str(config), RELAYD_DATABASE_URL=url)
        with sending(port) as senders:
            eventually(lambda: sum(len(s.acknowledged) for s in senders) >= 40, 20, "250s")
        code, err = daemon.stop(30)
        assert code == 0 and "Traceback" not in err, err
        assert not any(s.cut for s in senders)
        with SqlStore.open(url) as store:
            stored = {m.queue_id for m in list_messages(store)}
    assert stored == {queue_id for s in senders for queue_id in s.acknowledged}


def test_the_commit_lock_lets_one_worker_in_at_a_time() -> None:
    """Each worker reopens the daemon's lock file: their flocks exclude each other (SQLite
    only: a PostgreSQL queue takes concurrent commits)."""
    import fcntl

    from relayd.submission.listen_worker import commit_lock

    shared = os.memfd_create("test-commit-lock")
    try:
        first, second = (commit_lock(shared, "sqlite:////q.sqlite3") for _ in range(2))
        assert first is not None and second is not None
        assert commit_lock(shared, "postgresql+psycopg://h/db") is None
        with first, pytest.raises(BlockingIOError):
            fcntl.flock(second.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with second:
            pass
        os.close(first.fd)
        os.close(second.fd)
    finally:
        os.close(shared)


def test_sighup_settings_reach_the_workers(listener: Start, tmp_path: Path) -> None:
    daemon, port = listener("workers = 2", "max_recipients = 1")
    config = tmp_path / "relayd.toml"
    config.write_text(config.read_text().replace("max_recipients = 1", "max_recipients = 2"))
    daemon.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        states = daemon.poll_notify()
        return "RELOADING=1" in states and "READY=1" in states[states.index("RELOADING=1") :]

    eventually(reloaded, 10, "READY=1 after RELOADING=1")
    for _ in range(3):  # whichever worker gets the session has the new limit
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            client.mail("me@example.org")
            assert client.rcpt("a@example.org")[0] == 250
            assert client.rcpt("b@example.org")[0] == 250
    code, err = daemon.stop()
    assert code == 0 and "SIGHUP: settings reloaded" in err, err


def test_a_sigterm_to_the_whole_group_is_one_orderly_stop(tmp_path: Path) -> None:
    """systemd (KillMode=control-group) and a terminal's ^C signal every process at once: the
    workers drain, the daemon does not take their exit for a death."""
    import subprocess

    from tests.sendmail_helpers import sendmail_env
    from tests.test_daemon import RELAYD

    write_msmtprc("account default\nhost 127.0.0.1\nport 1\nfrom me@example.org\n")
    port = free_port()
    config = tmp_path / "relayd.toml"
    config.write_text(f'[listen]\naddress = "127.0.0.1:{port}"\nworkers = 2\n')
    env = sendmail_env(RELAYD_CONFIG=str(config))
    daemon = subprocess.Popen(
        [RELAYD, "daemon"], env=env, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        eventually(lambda: _accepted(port), 20, "the listener")
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.sendmail("me@example.org", ["you@example.org"], MESSAGE)
        os.killpg(daemon.pid, signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
    text = err.decode()
    assert daemon.returncode == 0, text
    assert "listener worker" not in text and "Traceback" not in text, text
    assert len(stored_messages()) == 1


def test_a_worker_that_keeps_dying_is_given_up_loudly_and_sessions_get_421(
    listener: Start,
) -> None:
    from relayd.submission.workers import RESTARTS

    daemon, port = listener("workers = 1")
    killed: list[int] = []
    for _ in range(RESTARTS + 1):
        (pid,) = eventually(
            lambda: [p for p in workers_of(daemon) if p not in killed and alive(p)] or None,
            20,
            "a (new) worker",
        )
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    eventually(lambda: not any(alive(p) for p in workers_of(daemon)), 20, "no worker left")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert refused.value.smtp_code == 421 and b"4.3.0" in refused.value.smtp_error
    code, err = daemon.stop()
    assert code == 0 and "Traceback" not in err, err
    assert err.count("was killed by SIGKILL") == RESTARTS + 1, err
    assert err.count("not restarted: 0 of 1 workers left") == 1, err


def test_sigterm_during_a_commit_still_answers_it_after_the_commit(listener: Start) -> None:
    """The queue is locked (another writer) while a worker stores a message; SIGTERM comes;
    the lock goes: the message is stored and its 250 sent before the worker exits."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from tests.sendmail_helpers import queue_db

    daemon, port = listener("workers = 2")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("me@example.org")
        client.rcpt("you@example.org")
        other = sqlite3.connect(queue_db(), isolation_level=None, timeout=10)
        try:
            other.execute("BEGIN IMMEDIATE")
            with ThreadPoolExecutor(1) as pool:
                reply = pool.submit(client.data, MESSAGE)
                time.sleep(1.0)  # the worker has the message and waits for the lock
                assert not reply.done()
                daemon.proc.send_signal(signal.SIGTERM)
                time.sleep(1.0)
                assert not reply.done()
                other.execute("ROLLBACK")
                code, text = reply.result(timeout=20)
        finally:
            other.close()
    assert code == 250, text
    exit_code, err = daemon.wait(30)
    assert exit_code == 0 and "Traceback" not in err, err
    assert [m.queue_id for m in stored_messages()] == [text.split()[-1].decode()]
