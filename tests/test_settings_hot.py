"""The hot path's relayd.toml reader: the same values and the same errors as the full loader for
the keys a submission reads, without tomllib for plain files, the file read once a process."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from relayd import settings, settings_hot, settings_values
from relayd.errors import ConfigError

# Files the scanner reads itself (True) or hands to tomllib (False); both give tomllib's values.
FILES = [
    ('database = "sqlite:////q/a.sqlite3"\n[submit]\nmax_size = "64MiB"\n', True),
    ("# a comment\n\n[submit] # trailing\nmax_size = 1048576 # bytes\n", True),
    ("[submit]\r\nmax_size = 2048\r\n[retry]\r\nfirst = '1m'\r\n", True),
    ("database = 'sqlite:////q/lit\"eral.sqlite3'\n[listen]\nrequire_account = true\n", True),
    ('  [ submit ]  \n\tmax_size\t=\t"1KiB"\n[retry]\nwarn_after = false\n', True),
    ("[submit]\nmax_size = +4096\n", True),
    ('[listen]\naddress = ["127.0.0.1:2525", "[::1]:2525"]\n[submit]\nmax_size = 99\n', True),
    (
        "[limits.work]\nmessages = [\"30/1m\", '2000/1d',] # two\n[limits . home]\n"
        'recipients = ["100/1d"]\n[oauth2.gmail]\nprovider = "google"\nclient_id = "id"\n'
        'scopes = ["https://mail.google.com/"]\n[submit]\nmax_size = 7\n',
        True,
    ),
    ('submit.max_size = "1MiB"\n', False),
    ("submit = {max_size = 4096}\n", False),
    ('database = "sqlite:////q/\\u00e9.sqlite3"\n', False),
    ('"database" = "sqlite:////q/quoted.sqlite3"\n', False),
    ("[submit]\nmax_size = 1_000_000\n", False),
    (
        '[listen]\ntls_cert = "/c"\ntls_key = "/k"\n[listen.users]\nalice = "keyring"\n'
        "[submit]\nmax_size = 77\n",
        True,
    ),
    ('[notify]\ncommand = """\nmulti\n[submit]\nmax_size = 5\n"""\n', False),
]


# TOML the scanner reads itself (True, then exactly as tomllib) or leaves to tomllib (False).
SYNTAX = [
    ('x = ["a,b", "c]d", \'e"f\', ""]\ny = []\nz = [ "s" ] # c\n', True),
    ("[a]\nk = 'v'\n[a.b]\n[a.b.c]\nz = true\n[ d . e ]\n", True),
    ("[a.b]\n[a]\nk = 1\n", False),  # a super-table defined after its sub-table: valid TOML
    ("[[jobs]]\nname = 'x'\n", False),
    ("x = [1, 2]\n", False),
    ('x = ["a\\tb"]\n', False),
    ("x = [\n  'multi-line',\n]\n", False),
    ('x = ["""a"""]\n', False),
]


@pytest.mark.parametrize(("text", "scanned"), SYNTAX)
def test_the_scanner_reads_what_tomllib_reads(text: str, scanned: bool) -> None:
    document = tomllib.loads(text)
    assert settings_hot._scan(text) == (document if scanned else None)


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "relayd.toml"
    path.write_bytes(text.encode())
    env = {**os.environ, "RELAYD_CONFIG": str(path)}
    env.pop("RELAYD_DATABASE_URL", None)  # conftest's: it would win over the file's `database`
    return env


@pytest.mark.parametrize(("text", "scanned"), FILES)
def test_values_are_tomllib_s(tmp_path: Path, text: str, scanned: bool) -> None:
    env = write(tmp_path, text)
    document = tomllib.loads(text)
    full = settings.load(env)
    hot = settings_hot.load(env)
    sets_size = "max_size" in document.get("submit", {})
    assert hot.max_size == (full.submit.max_size if sets_size else None)
    assert hot.database == (full.database if "database" in full.explicit else None)
    assert (settings_hot._scan(text) is not None) is scanned
    if scanned:
        assert settings_hot._scan(text) == document


@pytest.mark.parametrize(
    "text",
    [
        'database = "queue.sqlite3"\n',
        "database = 5\n",
        'database = "sqlite://"\n',
        '[submit]\nmax_size = "lots"\n',
        "[submit]\nmax_size = 0\n",
        "[submit]\nmax_size = true\n",
        "[submit]\nmax_size = 1.5\n",
        "submit = 5\n",
        "[retry]\nfirst = \n",
        "[submit]\nmax_size = 1\nmax_size = 2\n",
        "[submit]\n[submit]\n",
        "database = 'x\n",
        "[submit\n",
        "[a]\nb = 1\n[a.b]\n",
        "[a.b]\n[a.b]\n",
        "x = [,]\n",
        'x = ["a",,]\n',
        'x = ["a" "b"]\n',
        "x = ['a'] y\n",
        "[a..b]\n",
        "key = 1 2\n",
        "a = 1\x01\n",
    ],
)
def test_errors_are_the_full_loader_s(tmp_path: Path, text: str) -> None:
    env = write(tmp_path, text)
    with pytest.raises(ConfigError) as full:
        settings.load(env)
    with pytest.raises(ConfigError) as hot:
        settings_hot.load(env)
    assert (hot.value.message, hot.value.exit_code) == (full.value.message, full.value.exit_code)


def test_unrelated_keys_are_not_checked(tmp_path: Path) -> None:
    env = write(tmp_path, '[retry]\nfrist = "1m"\n[listen]\naddress = "0.0.0.0:25"\n')
    with pytest.raises(ConfigError):
        settings.load(env)
    assert settings_hot.load(env).max_size is None


def test_an_unreadable_file_is_reported_as_before(tmp_path: Path) -> None:
    env = write(tmp_path, "")
    Path(env["RELAYD_CONFIG"]).write_bytes(b"\xff\n")
    with pytest.raises(ConfigError) as full:
        settings.load(env)
    with pytest.raises(ConfigError) as hot:
        settings_hot.load(env)
    assert (hot.value.message, hot.value.exit_code) == (full.value.message, full.value.exit_code)


def test_the_file_is_read_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = write(tmp_path, "[submit]\nmax_size = 100\n")
    reads: list[str] = []
    real = settings_hot.read

    def counting(path: str) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(settings_hot, "read", counting)
    for _ in range(3):
        assert settings_hot.load(env).max_size == 100
    assert len(reads) == 1
    write(tmp_path, "[submit]\nmax_size = 20000\n")
    assert settings_hot.load(env).max_size == 20000
    assert len(reads) == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("128MiB", 128 << 20),
        (" 12 kb ", 12000),
        ("5", 5),
        ("7 K", 7 << 10),
        ("x", None),
        ("12 x", None),
        ("12k b", None),
        ("", None),
        ("MiB", None),
        ("1 2", None),
        ("12k\u0131b", None),  # a dotless i upper-cases to I: still not a unit
        ("0", None),
    ],
)
def test_sizes_without_a_regular_expression(given: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(settings_values.Invalid):
            settings_values.size(given)
    else:
        assert settings_values.size(given) == expected
