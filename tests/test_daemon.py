"""`relayd daemon` and `relayd queue flush` end to end: real processes, a real server on loopback.

Each test runs the installed `relayd` script in a subprocess against the fault-injecting upstream
fixture on 127.0.0.1. Readiness comes from the daemon's own sd_notify READY=1 on a socket the
test binds as NOTIFY_SOCKET. Every wait polls with a deadline; every daemon is killed in a finally.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from relayd import paths
from tests.sendmail_helpers import (
    Stored,
    queue_db,
    run_sendmail,
    sendmail_env,
    stored_messages,
    write_msmtprc,
)
from tests.upstream import Fault, UpstreamServer

RELAYD = str(Path(sys.executable).with_name("relayd"))
MESSAGE = b"From: me@example.org\r\nTo: you@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `probe` until it returns something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def rc_for(port: int, *, account: str = "default") -> Path:
    return write_msmtprc(f"account {account}\nhost 127.0.0.1\nport {port}\nfrom me@example.org\n")


def submit(*args: str) -> str:
    """relayd-sendmail ARGS you@example.org; the new message's queue id."""
    before = {m.queue_id for m in stored_messages()}
    result = run_sendmail([*args, "you@example.org"], MESSAGE)
    assert result.returncode == 0, result.stderr
    (new,) = [m.queue_id for m in stored_messages() if m.queue_id not in before]
    return new


def message(queue_id: str) -> Stored:
    (found,) = [m for m in stored_messages() if m.queue_id == queue_id]
    return found


def state_is(queue_id: str, state: str) -> Callable[[], bool]:
    return lambda: message(queue_id).state == state


def column(queue_id: str, name: str) -> object:
    """One column of the message's row, read with plain sqlite3."""
    conn = sqlite3.connect(queue_db())
    try:
        query = f"SELECT {name} FROM messages WHERE queue_id = ?"
        (row,) = conn.execute(query, (queue_id,)).fetchall()
    finally:
        conn.close()
    return row[0]


def reason(queue_id: str) -> str:
    return str(column(queue_id, "reason"))


def retried(queue_id: str) -> Callable[[], bool]:
    """True once an attempt ended with the message queued again."""
    return lambda: message(queue_id).state == "queued" and column(queue_id, "attempts") == 1


def run_relayd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    env = sendmail_env()
    return subprocess.run(
        [RELAYD, *args], capture_output=True, env=env, cwd=env["HOME"], timeout=timeout
    )


class Daemon:
    """`relayd daemon` in a subprocess, with NOTIFY_SOCKET bound by the test."""

    def __init__(self, directory: Path, *args: str, **env: str) -> None:
        self.notify_path = str(directory / f"notify-{time.monotonic_ns()}")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.05)
        self.states: list[str] = []
        environ = sendmail_env(NOTIFY_SOCKET=self.notify_path, **env)
        self.proc = subprocess.Popen(
            [RELAYD, "daemon", *args],
            env=environ,
            cwd=environ["HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def poll_notify(self) -> list[str]:
        while True:
            try:
                self.states.extend(self.notify.recv(4096).decode().split("\n"))
            except (TimeoutError, BlockingIOError):
                return self.states

    def wait_ready(self, timeout: float = 15) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.proc.communicate()
            return "READY=1" in self.poll_notify()

        eventually(ready, timeout, "READY=1")

    def stop(self, timeout: float = 15) -> tuple[int, str]:
        """SIGTERM, then its exit code and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 15) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        self.notify.close()


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(timeout=20) as server:
        yield server


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, ready: bool = True, **env: str) -> Daemon:
        daemon = Daemon(tmp_path, *args, **env)
        started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.kill()


def test_a_submission_is_delivered_within_a_second(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    daemon = start_daemon()
    submit()  # warm up: the first pass imports the delivery code
    upstream.wait_for(1, timeout=10)
    queue_id = submit()
    submitted = time.monotonic()
    upstream.wait_for(2, timeout=1.0)
    assert time.monotonic() - submitted < 1.0
    eventually(state_is(queue_id, "sent"), 5, "state sent")
    (transaction,) = upstream.transactions[1:]
    assert transaction.rcpt_tos == ("you@example.org",)
    assert transaction.data.endswith(b"hello\r\n")
    wake = paths.wake_socket()
    assert os.stat(wake).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(wake)).st_mode & 0o777 == 0o700
    code, err = daemon.stop()
    assert code == 0, err
    assert "STOPPING=1" in daemon.poll_notify()
    assert not os.path.exists(wake)


def test_451_at_rcpt_then_success_after_flush(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply="451 4.3.0 try again later"))
    start_daemon()
    queue_id = submit()
    eventually(retried(queue_id), 5, "queued again after an attempt")
    assert message(queue_id).recipients == [("you@example.org", "pending")]
    assert "not accepted by the server" in reason(queue_id)
    assert upstream.transactions == []
    upstream.clear_faults()
    flushed = run_relayd("queue", "flush", queue_id)
    assert flushed.returncode == 0, flushed.stderr
    assert b"daemon delivers" in flushed.stdout
    upstream.wait_for(1, timeout=5)
    eventually(state_is(queue_id, "sent"), 5, "state sent")
    assert message(queue_id).recipients == [("you@example.org", "sent")]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, never listening: connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_down_at_submission_then_up_and_flush(
    start_daemon: Callable[..., Daemon],
) -> None:
    rc_for(_closed_port())
    start_daemon()
    queue_id = submit()
    eventually(retried(queue_id), 5, "queued again after an attempt")
    assert message(queue_id).next_attempt_at > time.time() + 30  # type: ignore[operator]
    with UpstreamServer(timeout=20) as server:
        rc_for(server.port)  # the account is read again at each attempt
        assert run_relayd("queue", "flush").returncode == 0
        server.wait_for(1, timeout=5)
        eventually(state_is(queue_id, "sent"), 5, "state sent")


def test_flush_without_a_daemon_delivers_in_process(upstream: UpstreamServer) -> None:
    rc_for(upstream.port)
    first = submit("-odq")
    second = submit("-odq")
    upstream.fail("RCPT", Fault(reply="451 4.3.0 later"))
    only_first = run_relayd("queue", "flush", first)
    assert only_first.returncode == 0, only_first.stderr
    assert b"no daemon running; delivered in-process: 0 sent, 1 queued" in only_first.stdout
    assert message(second).state == "queued" and message(second).next_attempt_at is not None
    upstream.clear_faults()
    everything = run_relayd("queue", "flush")
    assert everything.returncode == 0, everything.stderr
    assert b"2 sent, 0 queued, 0 held, 0 failed" in everything.stdout
    assert [m.state for m in stored_messages()] == ["sent", "sent"]
    assert len(upstream.transactions) == 2


def test_an_account_removed_from_msmtprc_holds_its_mail(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    write_msmtprc(
        f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n"
        f"account work\nhost 127.0.0.1\nport {upstream.port}\nfrom me@work.example\n"
    )
    gone = submit("-odq", "-a", "work")
    kept = submit("-odq")
    rc_for(upstream.port)  # `work` is no longer there
    start_daemon()
    eventually(state_is(gone, "held"), 5, "held")
    assert "work" in reason(gone) and "not found" in reason(gone)
    eventually(state_is(kept, "sent"), 5, "the other account's mail sent")


def test_a_second_daemon_on_the_same_queue_refuses(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    first = start_daemon()
    second = start_daemon(ready=False)
    code, err = second.wait(timeout=15)
    assert code == 75
    assert err.count("\n") == 1 and "already running" in err, err
    assert "READY=1" not in second.poll_notify()
    submit()  # the first one still owns the wake-up socket and delivers
    upstream.wait_for(1, timeout=5)
    assert first.proc.poll() is None


def test_sigterm_in_the_middle_of_data_requeues_within_10_s(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    upstream.fail("END", Fault(delay=15))  # the server sits on the final dot
    daemon = start_daemon()
    queue_id = submit()
    eventually(lambda: "DATA" in upstream.commands, 5, "DATA sent")
    eventually(state_is(queue_id, "sending"), 5, "state sending")
    signalled = time.monotonic()
    code, err = daemon.stop(timeout=12)
    assert time.monotonic() - signalled < 10
    assert code == 0, err
    assert message(queue_id).state == "queued"
    assert message(queue_id).recipients == [("you@example.org", "pending")]


def test_the_periodic_scan_finds_mail_queued_without_a_wake_up(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    start_daemon("--scan-interval", "0.5")
    queue_id = submit("-odq")
    upstream.wait_for(1, timeout=3)
    eventually(state_is(queue_id, "sent"), 3, "state sent")


def test_leases_left_by_a_dead_runner_return_at_start(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    queue_id = submit("-odq")
    far = time.time() + 3600  # a lease that has not expired: only the instance lock frees it
    with sqlite3.connect(queue_db()) as conn:
        conn.execute(
            "UPDATE messages SET state = 'sending', lease_owner = 'dead', lease_until = ?",
            (far,),
        )
    start_daemon()
    upstream.wait_for(1, timeout=5)
    eventually(state_is(queue_id, "sent"), 5, "state sent")


def test_watchdog_pings_when_asked(start_daemon: Callable[..., Daemon]) -> None:
    rc_for(_closed_port())
    daemon = start_daemon(WATCHDOG_USEC="200000")
    eventually(lambda: daemon.poll_notify().count("WATCHDOG=1") >= 3, 5, "three pings")
    assert any(s.startswith("STATUS=") for s in daemon.states)


def test_sighup_rereads_relayd_toml(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    rc_for(upstream.port)
    upstream.fail("RCPT", Fault(reply="451 4.3.0 later"))
    daemon = start_daemon()
    toml = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text('[retry]\nfirst = "10m"\nmax = "1h"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    eventually(lambda: daemon.poll_notify().count("READY=1") == 2, 5, "READY=1 after reload")
    assert "RELOADING=1" in daemon.states
    queue_id = submit()
    eventually(retried(queue_id), 5, "queued again after an attempt")
    delay = float(message(queue_id).next_attempt_at or 0) - float(
        column(queue_id, "created_at")  # type: ignore[arg-type]
    )
    assert 590 < delay < 660  # the reloaded `first`, not the default 60 s
    toml.write_text("[retry]\nfirst = nonsense\n")
    daemon.proc.send_signal(signal.SIGHUP)
    eventually(lambda: daemon.poll_notify().count("READY=1") == 3, 5, "READY=1 after reload")
    code, err = daemon.stop()
    assert code == 0
    assert "SIGHUP: keeping the current settings" in err and "relayd.toml" in err


def _settings_file(text: str) -> None:
    toml = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text(text)


def test_a_slow_account_does_not_delay_another(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    with UpstreamServer(timeout=20) as slow:
        slow.fail("END", Fault(delay=8))
        write_msmtprc(
            f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n"
            f"account slow\nhost 127.0.0.1\nport {slow.port}\nfrom me@slow.example\n"
        )
        daemon = start_daemon("--shutdown-grace", "0.5")
        stuck = submit("-a", "slow")
        eventually(lambda: "DATA" in slow.commands, 5, "the slow server in DATA")
        fast = submit()
        submitted = time.monotonic()
        upstream.wait_for(1, timeout=2)
        assert time.monotonic() - submitted < 1.0
        eventually(state_is(fast, "sent"), 5, "the fast account's mail sent")
        assert message(stuck).state == "sending"
        assert daemon.stop()[0] == 0
        assert message(stuck).state == "queued"


def test_connections_and_messages_per_connection(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    _settings_file("[delivery]\nconnections_per_account = 2\nmessages_per_connection = 2\n")
    rc_for(upstream.port)
    upstream.fail("END", Fault(delay=0.3))
    ids = [submit("-odq") for _ in range(5)]
    start_daemon()
    upstream.wait_for(5, timeout=10)
    for queue_id in ids:
        eventually(state_is(queue_id, "sent"), 5, "all sent")
    assert upstream.commands.count("CONNECT") == 3  # 2 + 2 on two connections at once, then 1
