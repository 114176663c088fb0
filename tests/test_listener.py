"""The SMTP listener in `relayd daemon` (SPEC §5), with Python's smtplib as the real client and
the recording upstream server behind; each daemon is stopped in a finally."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sendmail_helpers import stored_messages, write_msmtprc
from tests.test_daemon import (
    RELAYD,
    Daemon,
    column,
    eventually,
    run_relayd,
    start_daemon,
    upstream,
)
from tests.upstream import UpstreamServer

__all__ = ["start_daemon", "upstream"]  # fixtures

# Date and Message-ID present: relayd adds nothing, so upstream must get these exact bytes.
MESSAGE = (
    b"From: Me <me@example.org>\r\nTo: you@example.org\r\nSubject: over SMTP\r\n"
    b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <smtp-1@example.org>\r\n\r\n"
    b"line one\r\n.leading dot\r\n\r\nlast line\r\n"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def listener(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> Iterator[Callable[..., tuple[Daemon, int]]]:
    """Start a daemon listening on a free loopback port of `host`, with extra `[listen]` lines;
    `ready=False` returns as soon as it started (to wait for it to fail)."""

    def start(
        *lines: str, submit: str = "", host: str = "127.0.0.1", ready: bool = True
    ) -> tuple[Daemon, int]:
        write_msmtprc(
            f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n"
            "account work\nhost 127.0.0.1\nport 1\nfrom *@work.example\n"
        )
        port = free_port(host)
        shown = f"[{host}]" if ":" in host else host
        config = tmp_path / "relayd.toml"
        config.write_text(
            f'[listen]\naddress = "{shown}:{port}"\n' + "\n".join(lines) + "\n" + submit
        )
        return start_daemon(RELAYD_CONFIG=str(config), ready=ready), port

    yield start


def test_a_message_over_smtp_is_queued_then_delivered_byte_for_byte(
    listener: Callable[..., tuple[Daemon, int]], upstream: UpstreamServer
) -> None:
    _, port = listener()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, features = client.ehlo("client.example")
        assert code == 250
        for feature in (
            "SIZE 134217728",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
        ):
            assert feature.encode() in features, features
        client.mail("me@example.org")
        client.rcpt("you@example.org")
        code, reply = client.data(MESSAGE)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as "), reply
    queue_id = reply.split()[-1].decode()
    assert {m.queue_id for m in stored_messages()} == {queue_id}
    eventually(lambda: upstream.transactions, 15, "delivery upstream")
    (txn,) = upstream.transactions
    assert txn.data == MESSAGE
    assert (txn.mail_from, list(txn.rcpt_tos)) == ("me@example.org", ["you@example.org"])


def test_mail_from_chooses_the_account_like_f_and_null_sender_is_accepted(
    listener: Callable[..., tuple[Daemon, int]],
) -> None:
    _, port = listener("require_account = true")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("boss@work.example", ["a@example.org"], MESSAGE)
        client.sendmail("", ["b@example.org"], MESSAGE)  # a bounce: MAIL FROM:<>
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("stranger@elsewhere.example", ["c@example.org"], MESSAGE)
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    accounts = sorted(str(column(m.queue_id, "account")) for m in stored_messages())
    assert accounts == ["default", "work"]


def test_limits_size_recipients_nul_and_sessions(
    listener: Callable[..., tuple[Daemon, int]],
) -> None:
    daemon, port = listener(
        "max_recipients = 2", "max_sessions = 2", submit="[submit]\nmax_size = 2000\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("me@example.org")
        assert client.rcpt("a@example.org")[0] == 250
        assert client.rcpt("b@example.org")[0] == 250
        code, reply = client.rcpt("c@example.org")
        assert (code, reply[:5]) == (452, b"4.5.3")
        code, reply = client.data(MESSAGE + (b"x" * 70 + b"\r\n") * 50)
        assert (code, reply[:5]) == (552, b"5.3.4"), reply
        client.rset()
        client.mail("me@example.org")
        client.rcpt("a@example.org")
        code, reply = client.data(b"Subject: nul\r\n\r\nbad\0byte\r\n")
        assert (code, reply[:5]) == (554, b"5.6.0"), reply
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as second:
            assert second.noop()[0] == 250
            with pytest.raises(smtplib.SMTPConnectError) as third:
                smtplib.SMTP("127.0.0.1", port, timeout=10)
            assert third.value.smtp_code == 421
    assert stored_messages() == []
    code, err = daemon.stop()
    assert code == 0 and "Traceback" not in err and "Exception in callback" not in err, err


def test_smtputf8_addresses(listener: Callable[..., tuple[Daemon, int]]) -> None:
    _, port = listener()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("me@example.org", ["jösé@exämple.org"], MESSAGE, mail_options=["SMTPUTF8"])
    (stored,) = stored_messages()
    assert [address for address, _ in stored.recipients] == ["jösé@exämple.org"]
    assert column(stored.queue_id, "needs_smtputf8") == 1


def test_a_kill_right_after_250_keeps_the_message(
    listener: Callable[..., tuple[Daemon, int]],
) -> None:
    daemon, port = listener()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("me@example.org")
        client.rcpt("you@work.example")
        code, reply = client.data(MESSAGE)
        daemon.proc.send_signal(signal.SIGKILL)
    assert code == 250
    daemon.proc.wait(10)
    queue_id = reply.split()[-1].decode()
    assert [m.queue_id for m in stored_messages()] == [queue_id]


def test_a_non_loopback_address_without_auth_and_tls_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "relayd.toml"
    config.write_text('[listen]\naddress = "0.0.0.0:2525"\n')
    env = dict(os.environ, RELAYD_CONFIG=str(config))
    checked = subprocess.run([RELAYD, "config", "check"], capture_output=True, env=env, timeout=30)
    assert checked.returncode == 78 and b"open relay" in checked.stdout + checked.stderr
    started = subprocess.run([RELAYD, "daemon"], capture_output=True, env=env, timeout=30)
    assert started.returncode == 78
    assert started.stderr.count(b"\n") == 1 and b"open relay" in started.stderr


def test_socket_activation_and_status_show_the_listener(
    upstream: UpstreamServer, tmp_path: Path
) -> None:
    """As relayd-smtp.socket does: systemd binds, the daemon serves the fd named `smtp`, with no
    [listen] address at all; `relayd status` shows where it listens."""
    import json

    from tests.sendmail_helpers import sendmail_env

    write_msmtprc(f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n")
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    bound.listen(16)
    port = bound.getsockname()[1]
    fd = bound.fileno()
    env = sendmail_env()
    wrapper = f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=smtp exec "$0" daemon'
    daemon = subprocess.Popen(
        ["bash", "-c", wrapper, RELAYD], pass_fds=[fd], env=env, stderr=subprocess.PIPE
    )
    try:
        # The socket was listening before the daemon: this connection waits for it.
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.sendmail("me@example.org", ["you@example.org"], MESSAGE)
        status = run_relayd("status", "--json")
        assert json.loads(status.stdout)["smtp_listener"] == [f"127.0.0.1:{port}"]
        plain = run_relayd("status")
        assert f"smtp listener: 127.0.0.1:{port}".encode() in plain.stdout
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
        bound.close()
    assert daemon.returncode == 0, err
    assert len(stored_messages()) == 1
    assert json.loads(run_relayd("status", "--json").stdout)["smtp_listener"] is None


def _reply(sock: socket.socket) -> bytes:
    """One whole SMTP reply (its last line has a space after the code)."""
    data = b""
    while not any(line[3:4] == b" " for line in data.split(b"\r\n")):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_data_read_in_blocks_over_a_real_connection(
    listener: Callable[..., tuple[Daemon, int]],
) -> None:
    """Pieces cut inside "CRLF.CRLF" and a stuffed dot, a bare "." message, a line over the
    limit (500), and a client gone mid-DATA: only the two whole messages are stored."""
    import time

    daemon, port = listener()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert _reply(sock).startswith(b"220")
        sock.sendall(b"EHLO client.example\r\n")
        assert _reply(sock).startswith(b"250")
        for pieces, expected in (
            ([b"Subject: a\r\n\r\n.", b".dot\r", b"\n.", b"\r\n"], b"250 2.0.0"),
            ([b".\r\n"], b"250 2.0.0"),
            ([b"x" * 1200 + b"\r\n.\r\n"], b"500 5.5.2"),
        ):
            sock.sendall(b"MAIL FROM:<me@example.org>\r\nRCPT TO:<you@example.org>\r\nDATA\r\n")
            replies = b""
            while replies.count(b"\r\n") < 3:
                replies += _reply(sock)
            assert replies.split(b"\r\n")[2].startswith(b"354"), replies
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.05)  # its own read on the daemon's side
            assert _reply(sock).startswith(expected)
        sock.sendall(b"MAIL FROM:<me@example.org>\r\nRCPT TO:<you@example.org>\r\nDATA\r\n")
        sock.sendall(b"Subject: cut off\r\n\r\nhalf a message\r\n")
    eventually(lambda: len(stored_messages()) == 2, 10, "two stored messages")
    stored = stored_messages()
    assert any(bytes(m.data).endswith(b"Subject: a\r\n\r\n.dot\r\n") for m in stored), stored
    code, err = daemon.stop()
    assert code == 0 and "Traceback" not in err, err
    assert len(stored_messages()) == 2


def test_a_long_command_line_is_refused_and_the_session_goes_on(
    listener: Callable[..., tuple[Daemon, int]],
) -> None:
    """The reader buffers more than a line (for DATA): a command line is still limited."""
    _, port = listener()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert _reply(sock).startswith(b"220")
        for size in (2_000, 70_000):
            sock.sendall(b"NOOP " + b"x" * size + b"\r\n")
            assert _reply(sock).startswith(b"500 "), size
        sock.sendall(b"EHLO client.example\r\nQUIT\r\n")
        assert _reply(sock).startswith(b"250")


@pytest.mark.parametrize("workers", ["workers = 0", "workers = 2"])
def test_a_silent_client_times_out_and_a_busy_one_does_not(
    listener: Callable[..., tuple[Daemon, int]], workers: str
) -> None:
    """`[listen] timeout` counts from the last command: a session that keeps sending commands
    outlives several timeouts; one that falls silent is closed once its timeout has passed."""
    import time

    _, port = listener("timeout = 1", workers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert _reply(sock).startswith(b"220")
        started = time.monotonic()
        while time.monotonic() - started < 2.6:  # commands 0.3 s apart, past 2 deadlines
            sock.sendall(b"NOOP\r\n")
            assert _reply(sock).startswith(b"250")
            time.sleep(0.3)
        silent = time.monotonic()
        assert sock.recv(100) == b""  # closed by the daemon (within the 10 s socket timeout)
        assert 0.7 < time.monotonic() - silent < 5
