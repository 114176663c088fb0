"""relayd.toml settings (SPEC §2) and the default locations of relayd's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relayd import paths, settings
from relayd.errors import ConfigError
from relayd.settings import Bounce, Settings
from relayd.store import location
from relayd.sysexits import ExitCode

USER = 1000
# the hash of "secret"
HASH = (
    "scrypt$n=16384,r=8,p=1$wreEONpXeLg+TBEA7GfwlA==$Lhzq1g0rO/e7TYB6RPTj8LdN0YJfK/mE65sSQQhyAXY="
)


@pytest.fixture(autouse=True)
def _no_database_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest points RELAYD_DATABASE_URL at a temp queue; these tests check the defaults."""
    monkeypatch.delenv("RELAYD_DATABASE_URL", raising=False)


def write_config(text: str) -> Path:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(**env: str) -> Settings:
    return settings.load({**os.environ, **env}, uid=USER)


def config_error(text: str) -> ConfigError:
    write_config(text)
    with pytest.raises(ConfigError) as caught:
        load()
    return caught.value


def test_defaults_without_any_file() -> None:
    got = load()
    state = os.environ["XDG_STATE_HOME"]
    assert got.database == f"sqlite:///{state}/relayd/queue.sqlite3"
    assert (got.retry.first, got.retry.max, got.retry.lifetime, got.retry.warn_after) == (
        60,
        3600,
        5 * 86400,
        None,
    )
    assert (got.delivery.connections_per_account, got.delivery.messages_per_connection) == (2, 100)
    assert (got.delivery.timeout, got.bounce, got.notify_command) == (60, Bounce("none"), None)
    assert (got.listen.address, got.listen.users) == ((), None)
    assert (got.retain.sent, got.retain.failed) == (7 * 86400, 30 * 86400)
    assert (got.file, got.explicit) == (None, frozenset())


def test_root_queues_in_the_spool_directory() -> None:
    got = settings.load(dict(os.environ), uid=0)
    assert got.database == "sqlite:////var/spool/relayd/queue.sqlite3"


def test_every_key_is_read() -> None:
    path = write_config(
        """
        database = "postgresql+psycopg://relayd@db.example/relayd"
        [retry]
        first = "90s"
        max = "1h30m"
        lifetime = "5d"
        warn_after = "4h"
        [delivery]
        connections_per_account = 4
        messages_per_connection = 50
        timeout = 30
        [bounce]
        mode = "maildir:~/Maildir"
        [notify]
        command = "notify-send relayd"
        [listen]
        address = ["[::1]:2525", "127.0.0.1:2525"]
        users = { alice = "HASH", bob = "keyring" }
        tls_cert = "/etc/relayd/cert.pem"
        tls_key = "/etc/relayd/key.pem"
        max_recipients = 50
        max_sessions = 8
        require_account = true
        timeout = "2m"
        [retain]
        sent = "2w"
        failed = "30d"
        """.replace("HASH", HASH)
    )
    got = load()
    assert got.database == "postgresql+psycopg://relayd@db.example/relayd"
    assert (got.retry.first, got.retry.max, got.retry.lifetime, got.retry.warn_after) == (
        90,
        5400,
        432000,
        14400,
    )
    assert (got.delivery.connections_per_account, got.delivery.messages_per_connection) == (4, 50)
    assert got.delivery.timeout == 30
    assert got.bounce == Bounce("maildir", os.path.expanduser("~/Maildir"))
    assert got.notify_command == "notify-send relayd"
    assert got.listen == settings.Listen(
        address=("[::1]:2525", "127.0.0.1:2525"),
        users=(("alice", HASH), ("bob", "keyring")),
        tls_cert="/etc/relayd/cert.pem",
        tls_key="/etc/relayd/key.pem",
        max_recipients=50,
        max_sessions=8,
        require_account=True,
        timeout=120,
    )
    assert (got.retain.sent, got.retain.failed) == (14 * 86400, 30 * 86400)
    assert got.file == str(path)
    assert "retry.first" in got.explicit and "retry.warn_after" in got.explicit
    assert "delivery.timeout" in got.explicit and "database" in got.explicit


def test_environment_overrides_and_explicit_file(tmp_path: Path) -> None:
    write_config('[retry]\nfirst = "5m"\n')
    other = tmp_path / "other.toml"
    other.write_text('[retry]\nfirst = "7m"\n')
    assert load().retry.first == 300
    assert load(RELAYD_CONFIG=str(other)).retry.first == 420
    got = load(RELAYD_DATABASE_URL="sqlite:////srv/q.sqlite3")
    assert got.database == "sqlite:////srv/q.sqlite3"
    with pytest.raises(ConfigError) as caught:
        load(RELAYD_CONFIG=str(tmp_path / "missing.toml"))
    assert caught.value.exit_code == ExitCode.IOERR and "missing.toml" in caught.value.message
    with pytest.raises(ConfigError):
        load(RELAYD_DATABASE_URL="sqlite://")


def test_database_url_for_the_sendmail_path(tmp_path: Path) -> None:
    env = dict(os.environ)
    state = os.environ["XDG_STATE_HOME"]
    assert location.database_url(env, USER) == f"sqlite:///{state}/relayd/queue.sqlite3"
    env["RELAYD_DATABASE_URL"] = "sqlite:////srv/q.sqlite3"
    assert location.database_url(env, USER) == "sqlite:////srv/q.sqlite3"
    write_config('database = "sqlite:////etc-chosen/q.sqlite3"\n')
    assert location.database_url(env, USER) == "sqlite:////srv/q.sqlite3"  # the variable wins
    del env["RELAYD_DATABASE_URL"]
    assert location.database_url(env, USER) == "sqlite:////etc-chosen/q.sqlite3"
    # The hot path checks only the keys it reads (the daemon and `config check` the rest) ...
    write_config('database = "sqlite:////etc-chosen/q.sqlite3"\n[retry]\nfrist = 1\n')
    assert location.database_url(env, USER) == "sqlite:////etc-chosen/q.sqlite3"
    # ... but a broken `database`, or a file that is not TOML, is reported even here.
    for text in ('database = "q.sqlite3"\n', "[retry]\nfirst = \n"):
        write_config(text)
        with pytest.raises(ConfigError):
            location.database_url(env, USER)
    with pytest.raises(ConfigError) as caught:
        location.database_url(
            {
                **env,
                "RELAYD_CONFIG": "",
                "XDG_CONFIG_HOME": str(tmp_path),
                "RELAYD_DATABASE_URL": "queue.sqlite3",
            },
            USER,
        )
    assert caught.value.message.startswith("RELAYD_DATABASE_URL: expected a database URL")


def test_system_file_is_the_last_resort(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "etc-relayd.toml"
    system.write_text('[delivery]\ntimeout = "2m"\n')
    monkeypatch.setattr(paths, "SYSTEM_SETTINGS_FILE", str(system))
    assert load().delivery.timeout == 120
    write_config("")
    assert load().delivery.timeout == 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[retry]\nfrist = "1m"\n', "unknown key retry.frist"),
        ("colour = 3\n", "unknown key colour"),
        ("[retry]\nfirst = \n", "line 2: invalid value"),
        ('[retry]\nfirst = "5x"\n', "retry.first: invalid duration '5x'"),
        ('[retry]\nfirst = "0s"\n', "retry.first: duration '0s' must be positive"),
        ("[retry]\nfirst = 1.5\n", "retry.first: expected a duration"),
        ("[retry]\nfirst = true\n", "retry.first: expected a duration"),
        ('[retry]\nfirst = "2h"\n', "retry.first (7200s) is longer than retry.max"),
        ("[delivery]\nconnections_per_account = 0\n", "delivery.connections_per_account"),
        ('[bounce]\nmode = "sometimes"\n', "bounce.mode: expected none, sender or maildir:PATH"),
        ('[listen]\naddress = "localhost"\n', "listen.address: expected HOST:PORT"),
        ('[listen]\naddress = "0.0.0.0:25"\n', "would be an open relay"),
        ('[listen]\naddress = "192.0.2.1:25"\nusers = {a = "keyring"}\n', "needs listen.tls_cert"),
        ('[listen]\nusers = {a = "s3cret"}\n', "listen.users.a: not a hash (plaintext passwords"),
        ('[listen]\nusers = {a = "scrypt$n=3,r=8,p=1$AAAA$AAAA"}\n', "a malformed scrypt hash"),
        ('[listen]\ntls_cert = "/c.pem"\n', "go together"),
        ('[listen]\naddress = "::1:25"\n', "in brackets"),
        ('[listen]\nusers = "alice"\n', "listen.users"),
        ('database = "queue.sqlite3"\n', "database: expected a database URL"),
        ("retry = 5\n", "retry: expected a table"),
    ],
)
def test_mistakes_name_the_file_and_the_key(text: str, expected: str) -> None:
    error = config_error(text)
    assert error.exit_code == ExitCode.CONFIG
    assert error.message.startswith(f"{os.environ['XDG_CONFIG_HOME']}/relayd/relayd.toml: ")
    assert expected in error.message


def test_warn_after_can_be_off() -> None:
    write_config('[retry]\nwarn_after = "off"\n')
    assert load().retry.warn_after is None


def test_duration_units() -> None:
    assert [settings.duration(v) for v in ("90s", "5m", "1h", "5d", "1w", "1h30m", 42)] == [
        90,
        300,
        3600,
        432000,
        604800,
        5400,
        42,
    ]


def test_state_and_runtime_locations(tmp_path: Path) -> None:
    env = {"HOME": "/home/u", "XDG_STATE_HOME": "/s", "XDG_RUNTIME_DIR": "/r"}
    assert paths.state_dir(env, USER) == "/s/relayd"
    assert paths.state_dir({"HOME": "/home/u", "XDG_STATE_HOME": "relative"}, USER) == (
        "/home/u/.local/state/relayd"
    )
    assert paths.state_dir(env, 0) == "/var/spool/relayd"
    assert paths.default_database_url(env, USER) == "sqlite:////s/relayd/queue.sqlite3"
    assert paths.wake_socket(env, USER) == "/r/relayd/wake"
    assert paths.wake_socket(env, 0) == "/run/relayd/wake"
    no_runtime = paths.runtime_dir({"HOME": "/home/u"}, 4_000_000)
    assert no_runtime == "/home/u/.local/state/relayd"  # no /run/user/4000000 here


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/q.sqlite3", "/var/q.sqlite3"),
        ("sqlite+pysqlite:////var/q.sqlite3", "/var/q.sqlite3"),
        ("sqlite:///relative.sqlite3", "relative.sqlite3"),
        ("/plain/path.sqlite3", "/plain/path.sqlite3"),
        ("postgresql+psycopg://u@h/db", None),
    ],
)
def test_sqlite_paths_from_urls(url: str, path: str | None) -> None:
    assert paths.sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:////q.db?mode=ro"])
def test_sqlite_urls_that_cannot_hold_a_queue(url: str) -> None:
    with pytest.raises(ConfigError):
        paths.sqlite_path(url)


def test_private_directory_and_file(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "a" / "b" / "queue.sqlite3"
        assert paths.ensure_private_file(str(target))
        assert not paths.ensure_private_file(str(target))
    finally:
        os.umask(old)
    assert (target.parent.stat().st_mode & 0o777, target.stat().st_mode & 0o777) == (0o700, 0o600)
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o750)
    existing.chmod(0o750)
    paths.ensure_private_dir(str(existing))
    assert existing.stat().st_mode & 0o777 == 0o750  # an administrator's choice is kept
