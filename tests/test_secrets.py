"""Password lookup in msmtp's order: password, passwordeval, Secret Service, python keyring,
~/.netrc, /etc/netrc, the /dev/tty prompt. No real keyring, D-Bus, netrc or terminal is used."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import keyring
import keyring.core
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail, null
from keyring.backends.chainer import ChainerBackend
from keyring.errors import InitError

from relayd.accounts import secrets
from relayd.accounts.account import Account
from relayd.accounts.secrets import PasswordEvalError, PasswordResult, Source
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

FAIL = fail.Keyring()  # type: ignore[no-untyped-call]
NULL = null.Keyring()  # type: ignore[no-untyped-call]
HOST = "smtp.example.org"
USER = "alice"


# --- fakes -------------------------------------------------------------------------------------


class MemoryKeyring(KeyringBackend):
    """An in-memory python keyring backend."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.store: dict[tuple[str, str], str] = {}
        self.asked: list[tuple[str, str]] = []

    def get_password(self, service: str, username: str) -> str | None:
        self.asked.append((service, username))
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[service, username] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


class PlaintextAltKeyring(MemoryKeyring):
    """Looks like keyrings.alt's PlaintextKeyring to relayd's backend filter."""

    __module__ = "keyrings.alt.file"


class FailingKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise InitError("Failed to create the collection: Prompt dismissed")


class HangingKeyring(MemoryKeyring):
    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def get_password(self, service: str, username: str) -> str | None:
        self.release.wait(30)
        return "too-late"


class FakeItem:
    def __init__(
        self,
        attributes: dict[str, str],
        secret: bytes,
        *,
        locked: bool = False,
        dismiss: bool = False,
    ) -> None:
        self.attributes = attributes
        self.secret = secret
        self.locked = locked
        self.dismiss = dismiss
        self.unlock_calls = 0

    def is_locked(self) -> bool:
        return self.locked

    def unlock(self, timeout: float | None = None) -> bool:
        self.unlock_calls += 1
        if self.dismiss:
            return True
        self.locked = False
        return False

    def get_secret(self) -> bytes:
        if self.locked:
            raise AssertionError("get_secret on a locked item")
        return self.secret


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeSecretStorage:
    """A secretstorage-like module: SearchItems matches items whose attributes include the query."""

    def __init__(self, *items: FakeItem) -> None:
        self.items = list(items)
        self.queries: list[dict[str, str]] = []
        self.connections: list[FakeConnection] = []

    def dbus_init(self) -> FakeConnection:
        connection = FakeConnection()
        self.connections.append(connection)
        return connection

    def search_items(self, connection: Any, attributes: dict[str, str]) -> Iterator[FakeItem]:
        assert not connection.closed
        self.queries.append(dict(attributes))
        for item in self.items:
            if all(item.attributes.get(k) == v for k, v in attributes.items()):
                yield item


MSMTP_ATTRS = {"host": HOST, "service": "smtp", "user": USER}
COMPAT_ATTRS = {"user": USER, "protocol": "smtp", "server": HOST}


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_real_keyrings(monkeypatch: pytest.MonkeyPatch) -> MemoryKeyring:
    """No session bus, and an empty in-memory python keyring (restored afterwards)."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    return memory


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session bus address, so the (fake) Secret Service is consulted."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/relayd-test-bus")


@pytest.fixture
def home(isolated_home: Path) -> Path:
    return isolated_home


@pytest.fixture
def etc_netrc(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "netrc"


def account(**settings: object) -> Account:
    fields: dict[str, object] = {"host": HOST, "user": USER, "auth": ""}
    fields.update(settings)
    return Account("test", None, **fields)


def write_netrc(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


class Lookup:
    """lookup_password with the test's /etc/netrc and no terminal unless given."""

    def __init__(self, etc_netrc: Path, tmp_path: Path) -> None:
        self.etc_netrc = etc_netrc
        self.no_tty = str(tmp_path / "no-tty")

    def __call__(self, acc: Account, **kwargs: Any) -> PasswordResult:
        kwargs.setdefault("system_netrc", str(self.etc_netrc))
        kwargs.setdefault("tty", self.no_tty)
        kwargs.setdefault("keyring_timeout", 2.0)
        return secrets.lookup_password(acc, **kwargs)


@pytest.fixture
def lookup(etc_netrc: Path, tmp_path: Path) -> Lookup:
    return Lookup(etc_netrc, tmp_path)


@pytest.fixture
def no_prompt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records prompt attempts (and fails them): the prompt must not be reached."""
    calls: list[str] = []

    def spy(prompt: str, *, tty: str = secrets.TTY) -> str | None:
        calls.append(prompt)
        return None

    monkeypatch.setattr(secrets, "prompt_password", spy)
    return calls


# --- when a password is needed -----------------------------------------------------------------


def test_auth_off_needs_nothing_and_runs_nothing(lookup: Lookup, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = lookup(account(auth=None, passwordeval=f"touch {marker}; echo pw"))
    assert (result.password, result.source) == (None, Source.NOT_NEEDED)
    assert not marker.exists()
    result = lookup(account(auth=None, password="literal"))
    assert (result.password, result.source) == (None, Source.NOT_NEEDED)


@pytest.mark.parametrize("method", ["EXTERNAL", "GSSAPI"])
def test_methods_without_password_consult_no_store(lookup: Lookup, home: Path, method: str) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account(auth=method))
    assert (result.password, result.source) == (None, Source.NOT_NEEDED)


def test_no_user_means_no_stored_lookup(lookup: Lookup, home: Path, no_prompt: list[str]) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account(user=None), interactive=True)
    assert (result.password, result.source) == (None, Source.NOT_FOUND)
    assert result.notes == ("stored passwords not searched: no user",)
    assert no_prompt == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, True),
        ({"auth": "PLAIN"}, True),
        ({"auth": None}, False),
        ({"auth": "EXTERNAL"}, False),
        ({"auth": "GSSAPI"}, False),
        ({"user": None}, False),
        ({"host": None}, False),
        ({"host": None, "socket": "/run/smtp.sock"}, True),
    ],
)
def test_needs_password(settings: dict[str, object], expected: bool) -> None:
    assert secrets.needs_password(account(**settings)) is expected


# --- password and passwordeval -----------------------------------------------------------------


def test_password_wins_and_passwordeval_is_not_run(lookup: Lookup, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = lookup(account(password="literal", passwordeval=f"touch {marker}; echo evaluated"))
    assert (result.password, result.source) == ("literal", Source.PASSWORD)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("printf 'first\\nsecond\\n'", "first"),
        ("printf 'crlf\\r\\nnext\\r\\n'", "crlf"),
        ("printf 'no newline'", "no newline"),
        ("echo ' spaced  '", " spaced  "),
        ("echo exit-ignored; exit 3", "exit-ignored"),
        ("echo to-stderr >&2; echo stdout", "stdout"),
        ("echo", ""),  # an empty first line is an (empty) password, as in msmtp
    ],
)
def test_passwordeval_first_line_exit_status_ignored(
    lookup: Lookup, command: str, expected: str
) -> None:
    result = lookup(account(passwordeval=command))
    assert (result.password, result.source) == (expected, Source.PASSWORDEVAL)


@pytest.fixture
def stdin_holding_mail() -> Iterator[None]:
    """File descriptor 0 is a pipe holding text, as in relayd-sendmail (pytest's is empty)."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"Subject: the mail on stdin\n")
    os.close(write_end)
    saved = os.dup(0)
    os.dup2(read_end, 0)
    os.close(read_end)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@pytest.mark.usefixtures("stdin_holding_mail")
def test_passwordeval_reads_no_stdin(lookup: Lookup) -> None:
    result = lookup(account(passwordeval="printf 'read [%s]\\n' \"$(cat)\""))
    assert result.password == "read []"


@pytest.mark.parametrize("command", ["true", "exit 1", "echo gone >&2"])
def test_passwordeval_without_output_is_msmtps_error(lookup: Lookup, command: str) -> None:
    with pytest.raises(PasswordEvalError) as info:
        lookup(account(passwordeval=command))
    assert str(info.value) == f"cannot read output of '{command}'"
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == ExitCode.CONFIG
    assert info.value.command == command


def test_passwordeval_wins_over_stores(
    lookup: Lookup, home: Path, no_real_keyrings: MemoryKeyring
) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    no_real_keyrings.set_password(f"smtp://{HOST}", USER, "fromkeyring")
    result = lookup(account(passwordeval="echo evaluated"))
    assert (result.password, result.source) == ("evaluated", Source.PASSWORDEVAL)
    assert no_real_keyrings.asked == []


# --- the order of all sources ------------------------------------------------------------------


def test_sources_in_msmtps_order(
    lookup: Lookup,
    home: Path,
    etc_netrc: Path,
    bus: None,
    no_real_keyrings: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prompted: list[str] = []

    def fake_prompt(prompt: str, *, tty: str = secrets.TTY) -> str | None:
        prompted.append(prompt)
        return "typed"

    monkeypatch.setattr(secrets, "prompt_password", fake_prompt)
    store = FakeSecretStorage(FakeItem(MSMTP_ATTRS, b"from-secret-service"))
    no_real_keyrings.set_password(f"smtp://{HOST}", USER, "from-keyring")
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password from-home-netrc\n")
    write_netrc(etc_netrc, f"machine {HOST} login {USER} password from-etc-netrc\n")
    acc = account(password="from-password", passwordeval="echo from-passwordeval")

    def step(expected: str, source: Source) -> None:
        result = lookup(acc, interactive=True, secret_service=store)
        assert (result.password, result.source) == (expected, source)

    step("from-password", Source.PASSWORD)
    acc.password = None
    step("from-passwordeval", Source.PASSWORDEVAL)
    acc.passwordeval = None
    step("from-secret-service", Source.SECRET_SERVICE)
    store.items.clear()
    step("from-keyring", Source.KEYRING)
    no_real_keyrings.store.clear()
    step("from-home-netrc", Source.NETRC)
    (home / ".netrc").unlink()
    step("from-etc-netrc", Source.SYSTEM_NETRC)
    etc_netrc.unlink()
    assert prompted == []
    step("typed", Source.PROMPT)
    assert prompted == [f"password for {USER} at {HOST}: "]


def test_nothing_found(lookup: Lookup, no_prompt: list[str]) -> None:
    result = lookup(account())
    assert (result.password, result.source, result.found) == (None, Source.NOT_FOUND, False)
    assert no_prompt == []


def test_socket_account_looks_up_under_the_socket_path(lookup: Lookup, home: Path) -> None:
    write_netrc(home / ".netrc", f"machine /run/smtp.sock login {USER} password viasocket\n")
    result = lookup(account(host=None, socket="/run/smtp.sock"))
    assert (result.password, result.source) == ("viasocket", Source.NETRC)


# --- Secret Service ----------------------------------------------------------------------------


def test_secret_service_msmtp_attributes(lookup: Lookup, bus: None) -> None:
    store = FakeSecretStorage(FakeItem(MSMTP_ATTRS | {"xdg:schema": "x"}, b"s3cret"))
    result = lookup(account(), secret_service=store)
    assert (result.password, result.source) == ("s3cret", Source.SECRET_SERVICE)
    assert store.queries == [MSMTP_ATTRS]
    assert all(c.closed for c in store.connections)


def test_secret_service_compat_schema_second(lookup: Lookup, bus: None) -> None:
    store = FakeSecretStorage(FakeItem(COMPAT_ATTRS, b"compat"))
    result = lookup(account(), secret_service=store)
    assert (result.password, result.source) == ("compat", Source.SECRET_SERVICE)
    assert store.queries == [MSMTP_ATTRS, COMPAT_ATTRS]
    assert len(store.connections) == 1 and store.connections[0].closed


def test_secret_service_queries() -> None:
    assert secrets.secret_service_queries("h", "u") == (
        {"host": "h", "service": "smtp", "user": "u"},
        {"user": "u", "protocol": "smtp", "server": "h"},
    )


@pytest.mark.parametrize(
    "attributes",
    [
        {"service": f"smtp://{HOST}", "username": USER},  # how python keyring stores
        {"host": HOST, "service": "pop3", "user": USER},  # mpop's item
        {"host": HOST, "service": "smtp", "user": "bob"},
        {"host": "other.example.org", "service": "smtp", "user": USER},
        {"user": USER, "protocol": "imap", "server": HOST},
    ],
)
def test_secret_service_other_items_not_matched(
    lookup: Lookup, bus: None, attributes: dict[str, str]
) -> None:
    store = FakeSecretStorage(FakeItem(attributes, b"wrong"))
    result = lookup(account(), secret_service=store)
    assert (result.password, result.source) == (None, Source.NOT_FOUND)


def test_secret_service_prefers_an_unlocked_item(lookup: Lookup, bus: None) -> None:
    locked = FakeItem(MSMTP_ATTRS, b"locked", locked=True)
    store = FakeSecretStorage(locked, FakeItem(MSMTP_ATTRS, b"open"))
    result = lookup(account(), secret_service=store, interactive=True)
    assert result.password == "open"
    assert locked.unlock_calls == 0


def test_secret_service_locked_item_not_unlocked_by_the_daemon(
    lookup: Lookup, bus: None, home: Path
) -> None:
    locked = FakeItem(MSMTP_ATTRS, b"locked", locked=True)
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account(), secret_service=FakeSecretStorage(locked))
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert locked.unlock_calls == 0
    assert "secret service: matching item is locked" in result.notes


def test_secret_service_locked_item_unlocked_when_interactive(lookup: Lookup, bus: None) -> None:
    locked = FakeItem(MSMTP_ATTRS, b"unlocked-now", locked=True)
    result = lookup(account(), secret_service=FakeSecretStorage(locked), interactive=True)
    assert (result.password, result.source) == ("unlocked-now", Source.SECRET_SERVICE)
    assert locked.unlock_calls == 1


def test_secret_service_dismissed_prompt_moves_on(
    lookup: Lookup, bus: None, home: Path, no_prompt: list[str]
) -> None:
    locked = FakeItem(MSMTP_ATTRS, b"never", locked=True, dismiss=True)
    compat = FakeItem(COMPAT_ATTRS, b"compat")
    store = FakeSecretStorage(locked, compat)
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account(), secret_service=store, interactive=True)
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert "secret service: unlock prompt dismissed" in result.notes
    assert store.queries == [MSMTP_ATTRS]  # no second unlock prompt for the compat item


def test_secret_service_not_utf8_is_skipped(lookup: Lookup, bus: None) -> None:
    store = FakeSecretStorage(FakeItem(MSMTP_ATTRS, b"\xffsecret\xfe"))
    result = lookup(account(), secret_service=store)
    assert (result.password, result.source) == (None, Source.NOT_FOUND)
    assert "secret service: secret is not UTF-8 text" in result.notes
    assert not any("\\xff" in note or "secret\\xfe" in note for note in result.notes)


def test_no_session_bus_skips_at_once(lookup: Lookup, home: Path) -> None:
    class Untouchable(FakeSecretStorage):
        def dbus_init(self) -> FakeConnection:
            raise AssertionError("D-Bus must not be touched without a session bus")

    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    started = time.monotonic()
    result = lookup(account(), secret_service=Untouchable())
    assert time.monotonic() - started < 1
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert "secret service: no session bus (DBUS_SESSION_BUS_ADDRESS unset)" in result.notes


def test_unreachable_bus_with_real_secretstorage_falls_through(
    lookup: Lookup, bus: None, home: Path
) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    started = time.monotonic()
    result = lookup(account())
    assert time.monotonic() - started < 2
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    (note,) = [n for n in result.notes if n.startswith("secret service: ")]
    assert "timed out" not in note  # the connection failed at once (FileNotFoundError here)


def test_secret_service_error_moves_on(lookup: Lookup, bus: None, home: Path) -> None:
    class Broken(FakeSecretStorage):
        def search_items(self, connection: Any, attributes: dict[str, str]) -> Iterator[FakeItem]:
            raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown")

    store = Broken()
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account(), secret_service=store)
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert "secret service: RuntimeError: org.freedesktop.DBus.Error.ServiceUnknown" in (
        result.notes
    )
    assert store.connections[0].closed


def test_hanging_secret_service_is_abandoned_at_the_deadline(
    lookup: Lookup, bus: None, home: Path
) -> None:
    release = threading.Event()

    class Hanging(FakeSecretStorage):
        def dbus_init(self) -> FakeConnection:
            release.wait(30)
            return super().dbus_init()

    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    try:
        started = time.monotonic()
        result = lookup(account(), secret_service=Hanging(), keyring_timeout=0.2)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < 1.5
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert "secret service: timed out after 0.2s" in result.notes


# --- python keyring ----------------------------------------------------------------------------


def test_keyring_service_and_username(lookup: Lookup, no_real_keyrings: MemoryKeyring) -> None:
    no_real_keyrings.set_password(f"smtp://{HOST}", USER, "kr-secret")
    no_real_keyrings.set_password(f"smtp://{HOST}", "bob", "bobs")
    no_real_keyrings.set_password(HOST, USER, "bare-host")
    result = lookup(account())
    assert (result.password, result.source) == ("kr-secret", Source.KEYRING)
    assert no_real_keyrings.asked == [(f"smtp://{HOST}", USER)]


def test_keyring_other_entries_not_matched(lookup: Lookup, no_real_keyrings: MemoryKeyring) -> None:
    no_real_keyrings.set_password(f"smtp://{HOST}", "bob", "bobs")
    no_real_keyrings.set_password(HOST, USER, "bare-host")
    no_real_keyrings.set_password(f"imap://{HOST}", USER, "imap")
    result = lookup(account())
    assert (result.password, result.source) == (None, Source.NOT_FOUND)


@pytest.mark.parametrize(
    "backend",
    [FAIL, NULL, PlaintextAltKeyring()],
    ids=["fail", "null", "keyrings.alt"],
)
def test_unusable_keyring_backends_are_skipped(
    lookup: Lookup, home: Path, backend: KeyringBackend
) -> None:
    if isinstance(backend, MemoryKeyring):
        backend.set_password(f"smtp://{HOST}", USER, "base64-on-disk")
    keyring.set_keyring(backend)
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account())
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    name = f"{type(backend).__module__}.{type(backend).__qualname__}"
    assert f"python keyring: no usable backend ({name})" in result.notes
    if isinstance(backend, MemoryKeyring):
        assert backend.asked == []


def test_usable_backend() -> None:
    assert secrets.usable_backend(MemoryKeyring())
    assert not secrets.usable_backend(FAIL)
    assert not secrets.usable_backend(NULL)
    assert not secrets.usable_backend(PlaintextAltKeyring())


def test_keyring_chainer_skips_unusable_members(lookup: Lookup) -> None:
    good = MemoryKeyring()
    good.set_password(f"smtp://{HOST}", USER, "chained")
    alt = PlaintextAltKeyring()
    alt.set_password(f"smtp://{HOST}", USER, "plaintext")

    class Chain(ChainerBackend):
        backends: ClassVar[list[KeyringBackend]] = [FAIL, alt, good]

    keyring.set_keyring(Chain())  # type: ignore[no-untyped-call]
    result = lookup(account())
    assert (result.password, result.source) == ("chained", Source.KEYRING)
    assert alt.asked == []


def test_keyring_error_moves_on(lookup: Lookup, home: Path) -> None:
    keyring.set_keyring(FailingKeyring())
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account())
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert any("InitError: Failed to create the collection" in n for n in result.notes)


def test_hanging_keyring_is_abandoned_at_the_deadline(lookup: Lookup, home: Path) -> None:
    release = threading.Event()
    keyring.set_keyring(HangingKeyring(release))
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    try:
        started = time.monotonic()
        result = lookup(account(), keyring_timeout=0.2)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < 1.5
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert "python keyring: timed out after 0.2s" in result.notes


def test_secret_service_before_keyring(
    lookup: Lookup, bus: None, no_real_keyrings: MemoryKeyring
) -> None:
    no_real_keyrings.set_password(f"smtp://{HOST}", USER, "from-keyring")
    store = FakeSecretStorage(FakeItem(COMPAT_ATTRS, b"from-secret-service"))
    result = lookup(account(), secret_service=store)
    assert (result.password, result.source) == ("from-secret-service", Source.SECRET_SERVICE)
    assert no_real_keyrings.asked == []


# --- netrc -------------------------------------------------------------------------------------


def find(text: str, host: str = HOST, user: str = USER) -> str | None:
    entry = secrets.search_netrc(secrets.parse_netrc(text), host, user)
    return None if entry is None else entry.password


def test_netrc_home_file(lookup: Lookup, home: Path) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password p1\n")
    result = lookup(account())
    assert (result.password, result.source) == ("p1", Source.NETRC)


def test_netrc_home_before_etc(lookup: Lookup, home: Path, etc_netrc: Path) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password home\n")
    write_netrc(etc_netrc, f"machine {HOST} login {USER} password etc\n")
    assert lookup(account()).password == "home"


def test_netrc_etc_when_home_has_no_match(lookup: Lookup, home: Path, etc_netrc: Path) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login bob password bobs\n")
    write_netrc(etc_netrc, f"machine {HOST} login {USER} password etc\n", mode=0o644)
    result = lookup(account())
    assert (result.password, result.source) == ("etc", Source.SYSTEM_NETRC)


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o666])
def test_netrc_mode_not_checked(lookup: Lookup, home: Path, mode: int) -> None:
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password open\n", mode=mode)
    assert lookup(account()).password == "open"


def test_netrc_host_and_login_must_match() -> None:
    text = (
        f"machine {HOST} login bob password bobs\n"
        f"machine other.example.org login {USER} password x\n"
    )
    assert find(text) is None
    assert find(text, user="bob") == "bobs"
    assert find(text, host="other.example.org") == "x"


def test_netrc_match_is_case_sensitive() -> None:
    text = f"machine SMTP.Example.Org login {USER} password upper\n"
    assert find(text) is None
    assert find(text, host="SMTP.Example.Org") == "upper"
    assert find(f"machine {HOST} login Alice password cap\n") is None


def test_netrc_first_match_wins() -> None:
    text = (
        f"machine {HOST} login {USER} password first\nmachine {HOST} login {USER} password second\n"
    )
    assert find(text) == "first"


def test_netrc_keeps_every_login_of_a_host() -> None:
    """Python's netrc module keeps only the last entry per host; msmtp keeps them all."""
    text = f"machine {HOST} login {USER} password alices\nmachine {HOST} login bob password bobs\n"
    assert find(text) == "alices"
    assert find(text, user="bob") == "bobs"


def test_netrc_default_ignored() -> None:
    assert find(f"default login {USER} password fallback\n") is None
    text = f"machine other login {USER} password o\ndefault login {USER} password d\n"
    assert find(text) is None
    text = f"default login {USER} password d\nmachine {HOST} login {USER} password real\n"
    assert find(text) == "real"


def test_netrc_quoted_tokens() -> None:
    assert find(f'machine {HOST} login {USER} password "with spaces"\n') == "with spaces"
    assert find(f"machine {HOST} login {USER} password 'single quoted'\n") == "single quoted"
    assert find(f'machine {HOST} login {USER} password pa"ss wo"rd\n') == "pass word"
    assert find(f'machine {HOST} login {USER} password "it\'s"\n') == "it's"
    assert find(f'machine "{HOST}" login "{USER}" password ""\n') == ""
    assert find(f'machine {HOST} login {USER} password "# not a comment"\n') == "# not a comment"


def test_netrc_macdef_skipped_until_blank_line() -> None:
    text = (
        "macdef init password trap\n"
        f"machine {HOST} login {USER} password inmacro\n"
        "cd /pub\n"
        "\n"
        f"machine {HOST} login {USER} password real\n"
    )
    assert find(text) == "real"
    text = (
        f"machine {HOST} login {USER}\n"
        "macdef init\n"
        "password inmacro\n"
        "   \t\n"  # whitespace only counts as blank
        "password afterwards\n"
    )
    assert find(text) == "afterwards"


def test_netrc_macdef_without_blank_line_hides_the_rest() -> None:
    text = f"macdef init\nquit\nmachine {HOST} login {USER} password hidden\n"
    assert find(text) is None


def test_netrc_comments() -> None:
    text = (
        f"# machine {HOST} login {USER} password commented\n"
        f"machine {HOST} login {USER} password real # trailing comment\n"
    )
    assert find(text) == "real"
    assert find(f"machine {HOST} login {USER} password a#b\n") == "a#b"


def test_netrc_tokens_across_lines_and_synonyms() -> None:
    assert find(f"machine\n{HOST}\n  login\t{USER}\npassword\n  multi\n") == "multi"
    assert find(f"machine {HOST} user {USER} passwd synonyms\n") == "synonyms"
    assert find(f"machine {HOST} login {USER} account acct password p\n") == "p"
    assert find(f"machine {HOST} login {USER} port 587 password p\n") == "p"
    assert find(f"machine {HOST} login {USER} password crlf\r\n") == "crlf"


def test_netrc_entries_need_a_machine_and_a_login() -> None:
    assert find(f"machine {HOST} password nologin\n") is None
    assert find(f"login {USER} password early\nmachine {HOST} password p\n") is None
    text = f"login {USER} password early\nmachine {HOST} login {USER} password late\n"
    assert find(text) == "late"


def test_netrc_first_match_without_password_answers_nothing(
    lookup: Lookup, home: Path, etc_netrc: Path
) -> None:
    write_netrc(
        home / ".netrc",
        f"machine {HOST} login {USER}\nmachine {HOST} login {USER} password later\n",
    )
    assert find((home / ".netrc").read_text()) is None
    write_netrc(etc_netrc, f"machine {HOST} login {USER} password etc\n")
    result = lookup(account())
    assert (result.password, result.source) == ("etc", Source.SYSTEM_NETRC)


def test_netrc_unreadable_files(tmp_path: Path) -> None:
    assert secrets.netrc_password(str(tmp_path / "missing"), HOST, USER) is None
    assert secrets.netrc_password(str(tmp_path), HOST, USER) is None  # a directory


def test_netrc_bytes_kept(tmp_path: Path) -> None:
    path = tmp_path / "netrc"
    path.write_bytes(f"machine {HOST} login {USER} password p\xe4ss\n".encode("latin-1"))
    password = secrets.netrc_password(str(path), HOST, USER)
    assert password is not None
    assert password.encode("utf-8", "surrogateescape") == "p\xe4ss".encode("latin-1")


def test_netrc_entry_repr_hides_password() -> None:
    (entry,) = secrets.parse_netrc(f"machine {HOST} login {USER} password hunter2\n")
    assert "hunter2" not in repr(entry)
    assert HOST in repr(entry)


# --- the prompt --------------------------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def read_until(fd: int, wanted: bytes, timeout: float = 5.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            seen += os.read(fd, 1024)
    return seen


def drain(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_prompt_on_the_terminal_without_echo(lookup: Lookup, pty_pair: tuple[int, str]) -> None:
    master, tty = pty_pair
    results: list[PasswordResult] = []
    worker = threading.Thread(
        target=lambda: results.append(lookup(account(), interactive=True, tty=tty))
    )
    worker.start()
    try:
        shown = read_until(master, b": ")
        assert shown == f"password for {USER} at {HOST}: ".encode()
        os.write(master, b"typed secret\n")
        worker.join(5)
        after = drain(master)
    finally:
        worker.join(5)
    assert b"typed secret" not in shown + after  # not echoed
    assert after == b"\r\n"
    assert len(results) == 1
    assert (results[0].password, results[0].source) == ("typed secret", Source.PROMPT)


def test_no_prompt_when_not_interactive(
    lookup: Lookup, pty_pair: tuple[int, str], no_prompt: list[str]
) -> None:
    master, tty = pty_pair
    result = lookup(account(), interactive=False, tty=tty)
    assert (result.password, result.source) == (None, Source.NOT_FOUND)
    assert no_prompt == []
    assert drain(master) == b""


def test_no_prompt_without_a_terminal(
    lookup: Lookup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoStdin:
        def read(self, *args: object) -> str:
            raise AssertionError("stdin (the mail) must never be read for a password")

        readline = read

    monkeypatch.setattr(sys, "stdin", NoStdin())
    missing = tmp_path / "no-tty"
    result = lookup(account(), interactive=True, tty=str(missing))
    assert (result.password, result.source) == (None, Source.NOT_FOUND)
    assert f"prompt: cannot open {missing}" in result.notes
    plain = tmp_path / "plain-file"
    plain.write_text("not a terminal\n")
    assert secrets.prompt_password("password: ", tty=str(plain)) is None
    assert plain.read_text() == "not a terminal\n"


def test_stored_sources_before_the_prompt(
    lookup: Lookup, home: Path, pty_pair: tuple[int, str]
) -> None:
    master, tty = pty_pair
    write_netrc(home / ".netrc", f"machine {HOST} login {USER} password fromnetrc\n")
    result = lookup(account(), interactive=True, tty=tty)
    assert (result.password, result.source) == ("fromnetrc", Source.NETRC)
    assert drain(master) == b""


# --- secrecy and import cost -------------------------------------------------------------------


def test_result_repr_hides_the_password() -> None:
    result = PasswordResult("hunter2", Source.NETRC, ("a note",))
    assert "hunter2" not in repr(result)
    assert "hunter2" not in str(result)
    assert "NETRC" in repr(result) and "<hidden>" in repr(result)
    assert "password=None" in repr(PasswordResult(None, Source.NOT_FOUND))


def test_notes_never_hold_passwords(lookup: Lookup, bus: None, home: Path, etc_netrc: Path) -> None:
    locked = FakeItem(MSMTP_ATTRS, b"hunter2", locked=True)
    write_netrc(home / ".netrc", f"machine {HOST} login bob password hunter2\n")
    write_netrc(etc_netrc, f"machine {HOST} login {USER} password hunter3\n")
    result = lookup(account(), secret_service=FakeSecretStorage(locked))
    assert result.password == "hunter3"
    assert not any("hunter" in note for note in result.notes)
    assert "hunter" not in repr(result)


def test_import_is_light() -> None:
    code = (
        "import sys, json\nimport relayd.accounts.secrets\nprint(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert loaded.isdisjoint({"keyring", "secretstorage", "jeepney", "subprocess", "termios"})
