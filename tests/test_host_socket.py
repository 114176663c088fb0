"""Host mode (SPEC §7): other users submit through the system daemon's socket, as themselves.

A root `relayd daemon` serves the submit socket; submitters are real other users (`setpriv`):
`nobody`, a user the test creates, bare uids. Every daemon is stopped in a finally; every wait
has a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd.submission import spooled
from tests.host_helpers import NOBODY, Host, as_uid, host, needs_root, test_user
from tests.sendmail_helpers import SENDMAIL, stored_messages, write_msmtprc
from tests.test_daemon import Daemon, column, eventually, start_daemon, upstream
from tests.upstream import UpstreamServer

__all__ = ["host", "start_daemon", "test_user", "upstream"]  # fixtures

pytestmark = needs_root
MESSAGE = b"From: someone@example.org\nTo: you@example.org\nSubject: hi\n\nhello\n"


@pytest.fixture
def host_daemon(
    host: Host, upstream: UpstreamServer, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> Iterator[Callable[..., Daemon]]:
    """Start the host daemon (root, its own ~/.msmtprc) with extra `[submit]` lines."""

    def start(*submit_lines: str) -> Daemon:
        write_msmtprc(
            f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom host@example.org\n"
            "account other\nhost 127.0.0.1\nport 1\nfrom other@example.org\n"
        )
        config = tmp_path / "relayd.toml"
        config.write_text("[submit]\nlisten = true\n" + "\n".join(submit_lines) + "\n")
        daemon = start_daemon(RELAYD_RUNTIME_DIR=str(host.run), RELAYD_CONFIG=str(config))
        eventually(host.socket.exists, 10, "the submit socket")
        return daemon

    yield start


def _owners() -> dict[str, tuple[object, object]]:
    return {
        m.queue_id: (column(m.queue_id, "submitted_uid"), column(m.queue_id, "submitted_user"))
        for m in stored_messages()
    }


def test_a_user_submits_through_the_socket_as_itself(
    host: Host, host_daemon: Callable[..., Daemon], upstream: UpstreamServer
) -> None:
    daemon = host_daemon()
    mode = host.socket.stat().st_mode & 0o777
    assert mode == 0o666
    result = host.sendmail(NOBODY, ["you@example.org"], MESSAGE)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    (queue_id,) = _owners()
    assert _owners()[queue_id] == (NOBODY, "nobody")
    # Delivered by the host daemon through the host's account, not the user's.
    eventually(lambda: upstream.transactions, 15, "delivery")
    (txn,) = upstream.transactions
    assert list(txn.rcpt_tos) == ["you@example.org"]
    # Nothing went to a queue of the user's own.
    assert not list(host.home(NOBODY).rglob("*.sqlite3"))
    assert daemon.proc.poll() is None


def test_the_owner_is_the_kernels_word_not_the_clients(
    host: Host, host_daemon: Callable[..., Daemon], test_user: int
) -> None:
    """A client that claims to be root in its hello is still recorded as who it is."""
    host_daemon()
    code = f"""
import socket, sys
from relayd.submission import client, protocol
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({str(host.socket)!r})
hello = {{"version": 1, "op": "submit", "argv": ["you@example.org"], "uid": 0, "user": "root"}}
sock.sendall(protocol.json_frame(protocol.HELLO, hello))
sock.sendall(protocol.frame(protocol.DATA, b"Subject: s\\n\\nbody\\n"))
sock.sendall(protocol.frame(protocol.END))
reply = client.read_reply(sock, None)
print(reply.code, reply.line)
"""
    result = host.python(test_user, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"0 queued as "), result.stdout
    assert list(_owners().values()) == [(test_user, "relaydtest2")]


@pytest.mark.parametrize(
    "args",
    [
        ["-C", "/etc/passwd"],
        ["--passwordeval=touch {marker}"],
        ["--host=127.0.0.1", "--port=1"],
        ["--tls-trust-file=/etc/shadow"],
        ["--aliases=/etc/shadow"],
        ["--tls-certcheck=off"],
        ["--user=admin"],
        ["--proxy-host=127.0.0.1"],
    ],
)
def test_options_naming_commands_files_or_the_connection_are_refused(
    host: Host, host_daemon: Callable[..., Daemon], args: list[str]
) -> None:
    host_daemon()
    marker = host.root / "ran"
    argv = [a.format(marker=marker) for a in args] + ["you@example.org"]
    result = host.sendmail(NOBODY, argv, MESSAGE)
    assert result.returncode == 77, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    # The daemon refuses too, whatever a client skips: speak the protocol by hand.
    reply = _raw_submit(host, argv)
    assert reply["code"] == 77, reply
    assert stored_messages() == []
    assert not marker.exists()


def _raw_submit(host: Host, argv: list[str], data: bytes = b"Subject: s\n\nb\n") -> Any:
    """Submit as nobody with a hand-made client (no client-side checks); the reply object."""
    code = f"""
import json, socket
from relayd.submission import client, protocol
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({str(host.socket)!r})
hello = {{"version": 1, "op": "submit", "argv": {argv!r}}}
sock.sendall(protocol.json_frame(protocol.HELLO, hello))
try:
    sock.sendall(protocol.frame(protocol.DATA, {data!r}) + protocol.frame(protocol.END))
except OSError:
    pass
r = client.read_reply(sock, None)
print(json.dumps({{"code": r.code, "line": r.line, "warnings": r.warnings}}))
"""
    result = host.python(NOBODY, code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_logging_options_are_ignored_with_a_warning(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    host_daemon()
    log = host.root / "user.log"
    result = host.sendmail(
        NOBODY, [f"--logfile={log}", "--syslog=on", "-odi", "you@example.org"], MESSAGE
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 3 and all("warning:" in line for line in lines), lines
    (stored,) = stored_messages()
    assert json.loads(str(column(stored.queue_id, "overrides"))) == []


def test_accounts_are_the_hosts_and_a_and_f_choose_among_them(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    host_daemon()
    # The user's own ~/.msmtprc is never read by the daemon.
    write_msmtprc(
        "account mine\nhost 127.0.0.1\nport 1\nfrom mine@example.org\n",
        host.home(NOBODY) / ".msmtprc",
    )
    os.chown(host.home(NOBODY) / ".msmtprc", NOBODY, -1)
    assert host.sendmail(NOBODY, ["-a", "other", "you@example.org"], MESSAGE).returncode == 0
    assert (
        host.sendmail(NOBODY, ["-f", "other@example.org", "x@example.org"], MESSAGE).returncode == 0
    )
    missing = host.sendmail(NOBODY, ["-a", "mine", "you@example.org"], MESSAGE)
    assert missing.returncode == 78, missing
    assert b"mine" in missing.stderr
    accounts = sorted(str(column(m.queue_id, "account")) for m in stored_messages())
    assert accounts == ["other", "other"]


def test_an_oversized_message_is_refused_and_nothing_stored(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    host_daemon("max_size = 4096")
    big = b"Subject: big\n\n" + b"x" * 70 + b"\n"
    result = host.sendmail(NOBODY, ["you@example.org"], big * 2000)
    assert result.returncode == 65, result
    assert result.stderr.decode().count("\n") == 1
    assert "max_size" in result.stderr.decode()
    assert stored_messages() == []
    ok = host.sendmail(NOBODY, ["you@example.org"], big)
    assert ok.returncode == 0, ok.stderr


def test_a_malformed_frame_and_a_client_that_leaves_store_nothing(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    daemon = host_daemon()
    code = f"""
import socket
from relayd.submission import client, protocol
def connect():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect({str(host.socket)!r})
    return sock
bad = connect()
bad.sendall(b"Zjunkjunkjunk")
print(client.read_reply(bad, None).code)
gone = connect()
hello = {{"version": 1, "op": "submit", "argv": ["a@example.org"]}}
gone.sendall(protocol.json_frame(protocol.HELLO, hello))
gone.sendall(protocol.frame(protocol.DATA, b"Subject: half"))
gone.close()
old = connect()
old.sendall(protocol.json_frame(protocol.HELLO, {{"version": 9, "op": "submit", "argv": []}}))
print(client.read_reply(old, None).code)
"""
    result = host.python(NOBODY, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"76", b"76"]
    # Still serving, and nothing stored.
    assert host.sendmail(NOBODY, ["you@example.org"], MESSAGE).returncode == 0
    assert len(stored_messages()) == 1
    _, err = daemon.stop()
    assert err.count("malformed request") == 1, err
    assert err.count("ended before the message did") == 1, err


def test_a_silent_client_times_out_with_75_and_the_daemon_serves_on(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    daemon = host_daemon('timeout = "1s"')
    code = f"""
import socket, time
from relayd.submission import client, protocol
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({str(host.socket)!r})
hello = {{"version": 1, "op": "submit", "argv": ["a@example.org"]}}
sock.sendall(protocol.json_frame(protocol.HELLO, hello))
sock.sendall(protocol.frame(protocol.DATA, b"Subject: half"))
started = time.monotonic()
reply = client.read_reply(sock, None)
print(reply.code, round(time.monotonic() - started))
"""
    result = host.python(NOBODY, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"75", b"1"]  # answered after the timeout, not before
    assert stored_messages() == []
    assert host.sendmail(NOBODY, ["you@example.org"], MESSAGE).returncode == 0
    _, err = daemon.stop()
    assert err.count("sent nothing for 1s") == 1, err


def test_a_slow_writer_keeps_the_daemon_waiting_past_its_timeout(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    # The client holds back at most one block: a mail written line by line, slower in all than
    # the daemon's silence timeout, reaches it as it is written.
    host_daemon('timeout = "2s"')
    env = host.user_env(NOBODY)
    with subprocess.Popen(
        [*as_uid(NOBODY), SENDMAIL, "you@example.org"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=env["HOME"],
    ) as proc:
        assert proc.stdin is not None
        for line in MESSAGE.splitlines(keepends=True):  # 5 lines, 1 s apart
            proc.stdin.write(line)
            proc.stdin.flush()
            time.sleep(1)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else b""
    (stored,) = stored_messages()
    assert stored.data.endswith(b"\r\n\r\nhello\r\n")  # every line, the last one too


def test_a_message_the_daemon_cannot_compose_is_answered_and_not_stored(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    host_daemon()
    # The client does not compose: no recipient is found by the daemon, in the commit's thread.
    big = (
        MESSAGE + b"x" * 79 + b"\n" * (2 * spooled.IN_MEMORY // 80)
    )  # composed in a thread of its own
    for mail in (MESSAGE, big):
        result = host.sendmail(NOBODY, [], mail)
        assert result.returncode == 64, result
        assert result.stderr.decode().splitlines() == ["relayd-sendmail: no recipients found"]
    unknown = host.sendmail(NOBODY, ["-a", "none", "you@example.org"], MESSAGE)
    assert unknown.returncode == 78, unknown
    assert "none" in unknown.stderr.decode()
    assert stored_messages() == []
    assert host.sendmail(NOBODY, ["you@example.org"], MESSAGE).returncode == 0
    assert len(stored_messages()) == 1


def test_a_user_over_the_rate_limit_gets_75(host: Host, host_daemon: Callable[..., Daemon]) -> None:
    host_daemon("rate = 3")
    codes = [host.sendmail(NOBODY, ["you@example.org"], MESSAGE).returncode for _ in range(4)]
    assert codes == [0, 0, 0, 75]
    assert len(stored_messages()) == 3


def test_a_daemon_restart_with_clients_connected_gives_them_75_never_0(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    daemon = host_daemon()
    env = host.user_env(NOBODY)
    from tests.host_helpers import as_uid
    from tests.sendmail_helpers import SENDMAIL

    clients = [
        subprocess.Popen(
            [*as_uid(NOBODY), SENDMAIL, "you@example.org"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=env["HOME"],
        )
        for _ in range(3)
    ]
    try:
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(b"Subject: slow\n\nfirst half\n")
            client.stdin.flush()
        eventually(lambda: _connections(host.socket) >= 3, 20, "three clients connected")
        code, _ = daemon.stop()
        assert code == 0
        results = []
        for client in clients:
            assert client.stdin is not None
            try:
                client.stdin.write(b"second half\n")
                client.stdin.close()
            except BrokenPipeError:
                pass
            client.wait(30)
            assert client.stderr is not None
            results.append((client.returncode, client.stderr.read()))
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait(10)
    assert [code for code, _ in results] == [75, 75, 75], results
    assert all(err.count(b"\n") == 1 for _, err in results), results
    assert stored_messages() == []


def _connections(path: Path) -> int:
    """Connected sockets the daemon accepted on `path` (from /proc/net/unix: state 03)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.endswith(" " + str(path)) and line.split()[5] == "03")


def test_without_any_daemon_the_mail_waits_in_the_users_queue_with_one_line(
    host: Host,
) -> None:
    rc = write_msmtprc(
        "account default\nhost 127.0.0.1\nport 1\nfrom me@example.org\n",
        host.home(NOBODY) / ".msmtprc",
    )
    os.chown(rc, NOBODY, -1)
    result = host.sendmail(NOBODY, ["you@example.org"], MESSAGE)
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "no relayd daemon delivers this queue" in err, err
    assert list(host.home(NOBODY).rglob("queue.sqlite3"))


def test_many_users_submit_in_parallel_nothing_lost(
    host: Host, host_daemon: Callable[..., Daemon], test_user: int
) -> None:
    """20 users (nobody, a created user, 18 bare uids), 50 submissions each at once."""
    host_daemon()
    uids = [NOBODY, test_user, *range(61001, 61019)]
    code = """
import io, os, sys
from relayd.submission import client, route
failures = 0
for n in range(50):
    way = route.decide()
    assert way.sock is not None, "no host socket"
    r, w = os.pipe()
    os.write(w, b"Subject: load " + str(n).encode() + b"\\n\\nbody\\n")
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    if client.submit(way.sock, ["you@example.org"], "load") != 0:
        failures += 1
print(failures)
"""
    workers = []
    for uid in uids:
        env = host.user_env(uid)
        import sys

        from tests.host_helpers import as_uid

        workers.append(
            subprocess.Popen(
                [*as_uid(uid), sys.executable, "-c", code],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=env["HOME"],
            )
        )
    outputs = [worker.communicate(timeout=240) for worker in workers]
    assert [out.strip() for out, _ in outputs] == [b"0"] * 20, outputs
    owners = [column(m.queue_id, "submitted_uid") for m in stored_messages()]
    assert len(owners) == 1000
    assert set(owners) == set(uids)
    assert all(owners.count(uid) == 50 for uid in uids)


def _relayd(host: Host, uid: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`relayd ARGS` as `uid`, a user of the host queue."""
    from tests.host_helpers import as_uid
    from tests.test_daemon import RELAYD

    env = host.user_env(uid)
    return subprocess.run(
        [*as_uid(uid), RELAYD, *args],
        capture_output=True,
        env=env,
        cwd=env["HOME"],
        timeout=60,
        check=False,
    )


def test_users_see_only_their_own_envelopes_and_act_only_on_their_own_mail(
    host: Host, host_daemon: Callable[..., Daemon], test_user: int
) -> None:
    host_daemon()
    secret = b"From: a@example.org\nSubject: secret plans\n\nbody\n"
    args = ["-a", "other", "-f", "other@example.org"]
    assert host.sendmail(NOBODY, [*args, "mine@example.org"], MESSAGE).returncode == 0
    assert host.sendmail(test_user, [*args, "theirs@example.org"], secret).returncode == 0
    owners = {uid: queue_id for queue_id, (uid, _) in _owners().items()}
    mine, theirs = owners[NOBODY], owners[test_user]

    listed = _relayd(host, NOBODY, "queue", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = {r["queue_id"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert records[mine]["recipients"][0]["address"] == "mine@example.org"
    assert records[theirs]["hidden"] is True and records[theirs]["owner"] == "relaydtest2"
    assert records[theirs]["sender"] is None and records[theirs]["recipients"] is None
    mailq = _relayd(host, NOBODY, "queue", "list")
    assert b"mine@example.org" in mailq.stdout and b"theirs@example.org" not in mailq.stdout
    assert b"(another user's message)" in mailq.stdout
    from tests.host_helpers import as_uid
    from tests.sendmail_helpers import SENDMAIL

    env = host.user_env(NOBODY)
    bp = subprocess.run(
        [*as_uid(NOBODY), SENDMAIL, "-bp"],
        capture_output=True,
        env=env,
        cwd=env["HOME"],
        timeout=30,
        check=False,
    )
    assert bp.returncode == 0, bp.stderr
    assert b"mine@example.org" in bp.stdout and b"theirs@example.org" not in bp.stdout

    refused = _relayd(host, NOBODY, "queue", "show", theirs)
    assert refused.returncode == 77 and b"secret" not in refused.stdout, refused
    assert len(refused.stderr.splitlines()) == 1
    shown = _relayd(host, NOBODY, "queue", "show", mine)
    assert shown.returncode == 0 and b"mine@example.org" in shown.stdout, shown
    raw = _relayd(host, NOBODY, "queue", "show", "--raw", mine)
    assert raw.returncode == 0 and raw.stdout.endswith(b"hello\r\n"), raw
    for action in ("hold", "release", "delete"):
        other = _relayd(
            host, NOBODY, "queue", action, *(["--yes"] if action == "delete" else []), theirs
        )
        assert other.returncode == 77, (action, other)
        assert b"another user's message" in other.stderr
    assert _relayd(host, NOBODY, "queue", "hold", mine).returncode == 0
    assert str(column(mine, "state")) == "held"
    assert _relayd(host, NOBODY, "queue", "release", mine).returncode == 0
    assert _relayd(host, NOBODY, "queue", "flush").returncode == 0
    assert _relayd(host, NOBODY, "queue", "flush", theirs).returncode == 77
    assert _relayd(host, NOBODY, "queue", "delete", "--yes", mine).returncode == 0
    assert set(_owners()) == {theirs}
    # Root acts on anything, directly on the queue.
    from tests.test_daemon import run_relayd

    assert run_relayd("queue", "hold", theirs).returncode == 0


def test_socket_activation_serves_the_socket_systemd_passed(
    host: Host, upstream: UpstreamServer, tmp_path: Path
) -> None:
    """As relayd-submit.socket does: the socket exists before the daemon, a submission made
    while it starts waits for it, and the daemon leaves the socket to its owner at its stop."""
    import socket

    from tests.sendmail_helpers import sendmail_env
    from tests.test_daemon import RELAYD

    write_msmtprc(f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom h@example.org\n")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(host.socket))
    host.socket.chmod(0o666)
    listener.listen(16)
    config = tmp_path / "relayd.toml"
    config.write_text("[submit]\nlisten = false\n")  # only what systemd passes
    env = sendmail_env(RELAYD_RUNTIME_DIR=str(host.run), RELAYD_CONFIG=str(config))
    fd = listener.fileno()
    wrapper = f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=submit exec "$0" daemon'
    daemon = subprocess.Popen(
        ["bash", "-c", wrapper, RELAYD],
        pass_fds=[fd],
        env=env,
        cwd=env["HOME"],
        stderr=subprocess.PIPE,
    )
    try:
        result = host.sendmail(NOBODY, ["you@example.org"], MESSAGE, timeout=8)
    except subprocess.TimeoutExpired:
        daemon.terminate()
        raise AssertionError(daemon.communicate(timeout=30)) from None
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert result.returncode == 0, (result.stderr, err)
    assert list(_owners().values()) == [(NOBODY, "nobody")]
    assert daemon.returncode == 0, err
    assert host.socket.exists()  # systemd's socket: not removed by the daemon
    listener.close()


def _peak_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_big_message_streams_through_the_daemon_in_bounded_memory(
    host: Host, host_daemon: Callable[..., Daemon]
) -> None:
    """SPEC §6: the daemon spools what arrives and stores it a chunk at a time. Holding a
    20 MB message once would raise its peak by 20 MiB (the old code held it twice); a few
    64 KiB pieces, the 1 MiB in-memory spools and SQLite's cache stay under 10 MiB."""
    daemon = host_daemon()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmnopqrstuvwxyz\n"
    head = b"From: someone@example.org\nDate: Fri, 20 Nov 2026 16:34:59 +0000\n"
    head += b"Message-ID: <big@example.org>\nSubject: big\n\n"
    warm = host.sendmail(NOBODY, ["-odq", "you@example.org"], head + line * 140)
    assert warm.returncode == 0, warm.stderr
    before = _peak_kib(daemon.proc.pid)
    big = head + line * (20_000_000 // len(line))
    result = host.sendmail(NOBODY, ["-odq", "you@example.org"], big, timeout=120)
    assert result.returncode == 0, result.stderr
    growth = _peak_kib(daemon.proc.pid) - before
    assert growth < 10 * 1024, f"the daemon's peak RSS grew by {growth} KiB"
    stored = stored_messages()[-1]
    assert stored.data == big.replace(b"\n", b"\r\n") and stored.size == len(stored.data)
