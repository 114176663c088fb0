"""The host socket's parts on their own: frames, the option screen, the rate limit, the
`[submit]` settings, socket activation's variables, and where a submission goes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd import paths, settings
from relayd.daemon import activation
from relayd.errors import ConfigError
from relayd.submission import privilege, protocol, route
from relayd.submission.cmdline import Delivery, parse
from relayd.submission.limits import RateLimit
from relayd.sysexits import ExitCode


def test_frames_carry_exact_arguments_and_enforce_limits() -> None:
    argv = ["-f", "caf\udce9@example.org", "--", "x@example.org"]  # a byte that is not UTF-8
    data = protocol.json_frame(protocol.HELLO, {"version": 1, "argv": argv})
    kind, length = protocol.parse_header(data[: protocol.HEADER_SIZE])
    assert kind == protocol.HELLO and length == len(data) - protocol.HEADER_SIZE
    assert protocol.load_json(data[protocol.HEADER_SIZE :])["argv"] == argv
    protocol.check_header(protocol.DATA, protocol.MAX_CHUNK, protocol.DATA)
    with pytest.raises(protocol.ProtocolError, match="too long"):
        protocol.check_header(protocol.DATA, protocol.MAX_CHUNK + 1, protocol.DATA)
    with pytest.raises(protocol.ProtocolError, match="unexpected frame"):
        protocol.check_header(b"Z", 0, protocol.DATA + protocol.END)
    for bad in (b"[1, 2]", b"{", b"\xff", b"{} {}", b"", b'{"a": nul}'):
        with pytest.raises(protocol.ProtocolError):
            protocol.load_json(bad)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_the_frames_json_is_jsons_own(value: object) -> None:
    """The light JSON (the C accelerator without the json package) writes what json.dumps
    writes and reads what json.loads reads, surrogate escapes included."""
    text = protocol.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert protocol.loads(text) == json.loads(text)
    assert protocol.loads(f" \n{json.dumps(value, indent=1)}\t") == json.loads(text)


@pytest.mark.parametrize("option", sorted(privilege.REFUSED))
def test_every_refused_option_is_refused_with_77(option: str) -> None:
    from relayd.accounts.options import ACCOUNT_OPTIONS

    assert option in ACCOUNT_OPTIONS
    values = {"port": "25", "proxy-port": "1080", "timeout": "5", "connect-timeout": "5"}
    values |= {"protocol": "smtp", "auth": "on", "tls": "on", "tls-starttls": "on"}
    values |= {"tls-certcheck": "off", "tls-min-dh-prime-bits": "1024"}
    values |= {"tls-fingerprint": "00:" * 31 + "00"}
    inv = parse([f"--{option}={values.get(option, 'x')}", "a@example.org"])
    with pytest.raises(privilege.NotPermitted) as caught:
        privilege.screen(inv)
    assert caught.value.exit_code == ExitCode.NOPERM and f"--{option}" in caught.value.message


def test_a_configuration_file_is_refused() -> None:
    with pytest.raises(privilege.NotPermitted, match="-C"):
        privilege.screen(parse(["-C", "/etc/shadow", "a@example.org"]))


def test_logging_options_debug_and_odi_are_dropped_with_warnings() -> None:
    inv = parse(["-X", "/tmp/log", "--syslog=on", "-d", "-odi", "-f", "me@example.org", "a@x.org"])
    warnings = privilege.screen(inv)
    assert len(warnings) == 4, warnings
    assert inv.overrides == [] and inv.cmdline.logfile is None
    assert inv.delivery is Delivery.BACKGROUND and not inv.debug
    assert inv.envelope_from == "me@example.org"


def test_allowed_options_pass_untouched() -> None:
    args = ["-a", "work", "-t", "-N", "failure", "--set-from-header=on", "-F", "Me", "a@x.org"]
    inv = parse(args)
    assert privilege.screen(inv) == []
    assert inv.account_id == "work" and ("dsn-notify", "failure") in inv.overrides


def test_the_rate_limit_is_per_uid_and_refills() -> None:
    limit = RateLimit()
    assert [limit.take(1000, 3, 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.take(1001, 3, 0.0)  # another user has its own bucket
    assert not limit.take(1000, 3, 10.0)  # half a token back
    assert limit.take(1000, 3, 20.0)  # one token a 20 s at 3 a minute


def test_submit_settings(tmp_path: Path) -> None:
    text = (
        '[submit]\nlisten = true\nmax_size = "10MiB"\nmax_clients = 5\nrate = 10\ntimeout = "30s"\n'
    )
    parsed = settings.parse(text, "relayd.toml", default_database="sqlite:///q")
    assert parsed.submit == settings.Submit(
        listen=True, max_size=10 << 20, max_clients=5, rate=10, timeout=30
    )
    assert settings.parse(None, None, default_database="sqlite:///q").submit.max_size == 128 << 20
    assert settings.size("100KiB") == 102400 and settings.size(1000) == 1000
    for bad, key in (('max_size = "12XB"', "max_size"), ('listen = "yes"', "listen")):
        with pytest.raises(ConfigError, match=rf"submit\.{key}"):
            settings.parse(f"[submit]\n{bad}\n", "relayd.toml", default_database="sqlite:///q")
    with pytest.raises(ConfigError, match=r"unknown key submit\.nope"):
        settings.parse("[submit]\nnope = 1\n", "relayd.toml", default_database="sqlite:///q")


def test_activation_takes_only_this_processs_sockets() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "submit:"}
    assert activation._parse(env) == [(3, "submit"), (4, "unknown")]
    assert activation._parse({**env, "LISTEN_PID": str(os.getpid() + 1)}) == []
    other = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert activation.inherited(other) == {} and other == {}  # unset for children, as systemd


def _bound(path: Path, kind: socket.SocketKind) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(str(path))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


def test_route_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"HOME": str(tmp_path), "RELAYD_RUNTIME_DIR": str(tmp_path / "run")}
    uid = 4242
    # Nothing listens: the user's own queue, with the note.
    way = route.decide(env, uid)
    assert way.sock is None and way.note
    # The host socket answers: through it.
    host = _bound(Path(paths.submit_socket(env)), socket.SOCK_STREAM)
    way = route.decide(env, uid)
    assert way.sock is not None
    way.sock.close()
    # A wake-up socket that answers but belongs to someone else (the host daemon's) does not
    # count as this user's daemon; one of its own does.
    wake = _bound(Path(paths.wake_socket(env, uid)), socket.SOCK_DGRAM)
    way = route.decide(env, uid)
    assert way.sock is not None
    way.sock.close()
    os.chown(paths.wake_socket(env, uid), uid, -1)
    way = route.decide(env, uid)
    assert way.sock is None and not way.note
    # A named queue wins over everything.
    way = route.decide({**env, "RELAYD_DATABASE_URL": "sqlite:///x"}, uid)
    assert way.sock is None and not way.note
    host.close()
    wake.close()
    # root writes the host queue itself; the note only when no daemon answers.
    assert route.decide(env, 0).sock is None


def test_json_records_of_hidden_messages() -> None:
    from relayd.store.listing import Listed, ListedRecipient
    from relayd.submission import queuelist
    from relayd.submission.ops import wire_listed

    message = Listed(
        "ID1",
        "queued",
        "acc",
        "s@x.org",
        10,
        0.0,
        None,
        0,
        "451 busy",
        1000,
        "alice",
        (ListedRecipient("r@x.org", "pending", None, None),),
    )
    for uid, hidden in ((1000, False), (0, False), (1001, True)):
        row = wire_listed(message, uid)
        *fields, recipients = json.loads(json.dumps(row))
        back = Listed._make([*fields, tuple(ListedRecipient(*r) for r in recipients)])
        record = queuelist.json_record(back)
        assert record["hidden"] is hidden
        assert (record["sender"] is None) is hidden and (record["reason"] is None) is hidden
        lines = queuelist.message_lines(back, {})
        assert ("r@x.org" in "\n".join(lines)) is not hidden
