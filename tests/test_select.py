"""Account selection and resolution: files, --account, envelope-from matching, environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relayd.accounts import resolve
from relayd.accounts.account import Account
from relayd.accounts.select import from_matches, select
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode


def write_rc(home: Path, text: str, mode: int = 0o600, name: str = ".msmtprc") -> Path:
    path = home / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def choose(**kwargs: object) -> tuple[Account, list[str]]:
    notes: list[str] = []
    args: dict[str, object] = {
        "account_id": None,
        "conffile": None,
        "envelope_from": None,
        "sendmail_mode": True,
    }
    args.update(kwargs)
    sel = select(emit=notes.append, **args)  # type: ignore[arg-type]
    if sel.using_line is not None:  # printed by the caller once the account passed its checks
        notes.append(sel.using_line)
    return sel.account, notes


RC = (
    "defaults\nport 587\naccount work\nhost w\nfrom *@work.example\n"
    "account home\nhost h\nfrom me@home.example\naccount default : home\n"
)


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("me@x.example", "ME@X.EXAMPLE", True),
        ("*@work.example", "boss@work.example", True),
        ("*@work.example", "boss@WORK.example", False),  # fnmatch is case-sensitive
        ("b?ss@w", "boss@w", True),
        ("[ab]oss@w", "boss@w", True),
        ("me@x.example", "me+tag@x.example", True),
        ("me@x.example", "ME+tag@X.example", True),
        ("*@x.example", "me+tag@x.example", False),  # wildcards never match sub-addresses
        ("me+a@x.example", "me+a@x.example", True),
        ("me@x.example", "you+tag@x.example", False),
    ],
)
def test_from_matching(pattern: str, address: str, expected: bool) -> None:
    assert from_matches(pattern, address) is expected


def test_user_file_and_notes(isolated_home: Path) -> None:
    rc = write_rc(isolated_home, RC)
    account, notes = choose(account_id="work")
    assert (account.id, account.host, account.port) == ("work", "w", 587)
    assert notes == [
        "ignoring system configuration file /etc/msmtprc: No such file or directory",
        f"loaded user configuration file {rc}",
        f"using account work from {rc}",
    ]


def test_envelope_from_then_default(isolated_home: Path) -> None:
    rc = write_rc(isolated_home, RC)
    account, notes = choose(envelope_from="boss@work.example")
    assert account.id == "work"
    assert notes[-2:] == [
        "account chosen by envelope from address boss@work.example: work",
        f"using account work from {rc}",
    ]
    account, notes = choose(envelope_from="nobody@else.example")
    assert account.id == "default" and account.host == "h"
    assert notes[-2:] == ["falling back to default account", f"using account default from {rc}"]


def test_xdg_file_used_only_without_dot_msmtprc(isolated_home: Path) -> None:
    xdg = write_rc(isolated_home, "account default\nhost x\n", name=".config/msmtp/config")
    account, notes = choose()
    assert account.host == "x" and f"loaded user configuration file {xdg}" in notes
    write_rc(isolated_home, "account default\nhost dot\n")
    assert choose()[0].host == "dot"


def test_system_file_accounts_merge_after_user_accounts(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = write_rc(
        isolated_home, "account s\nhost hs\naccount a\nhost sys-a\n", name="etc/msmtprc"
    )
    monkeypatch.setenv("RELAYD_MSMTPRC_SYSTEM", str(system))
    rc = write_rc(isolated_home, "account a\nhost user-a\n")
    assert choose(account_id="a")[0].host == "user-a"
    assert choose(account_id="s")[0].host == "hs"
    with pytest.raises(ConfigError) as info:
        choose(account_id="zz")
    assert info.value.message == f"account zz not found in {system} and {rc}"


def test_not_found_messages(isolated_home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        choose(account_id="x")
    assert info.value.message == "account x not found: no configuration file available"
    rc = write_rc(isolated_home, "account a\nhost h\n")
    with pytest.raises(ConfigError) as info:
        choose()
    assert info.value.message == f"account default not found in {rc}"


def test_missing_dash_c_file_is_an_io_error(isolated_home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        choose(conffile=str(isolated_home / "nope"))
    assert info.value.exit_code == ExitCode.IOERR
    assert info.value.message == f"{isolated_home / 'nope'}: No such file or directory"


def test_environment_fallback(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPSERVER", "smtp.example")
    with pytest.raises(ConfigError):
        choose()  # sendmail mode needs EMAIL or a from
    monkeypatch.setenv("EMAIL", "me@example")
    account, notes = choose()
    assert (account.host, account.from_) == ("smtp.example", "me@example")
    assert notes[-1] == "using environment variables EMAIL and SMTPSERVER"


@pytest.mark.skipif(os.geteuid() == 0, reason="msmtp skips the permission check for root")
def test_permission_check_for_files_with_passwords(isolated_home: Path) -> None:
    write_rc(isolated_home, "account default\nhost h\npassword x\n", mode=0o644)
    with pytest.raises(ConfigError) as info:
        choose()
    assert info.value.message.endswith(
        "contains secrets and therefore must have no more than user read/write permissions"
    )
    write_rc(isolated_home, "account default\nhost h\npasswordeval echo x\n", mode=0o644)
    assert choose()[0].host == "h"


def test_permission_check_logic(tmp_path: Path) -> None:
    from relayd.accounts import files

    path = write_rc(tmp_path, "x", mode=0o640)
    with pytest.raises(ConfigError, match="no more than user read/write"):
        files.check_permissions(str(path), path.stat())
    path.chmod(0o400)
    files.check_permissions(str(path), path.stat())
    fake = os.stat_result((0o100600, 0, 0, 1, os.geteuid() + 1, 0, 0, 0, 0, 0))
    with pytest.raises(ConfigError, match="must be owned by you"):
        files.check_permissions(str(path), fake)


def test_resolution_defaults_expansion_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "jdoe")
    monkeypatch.setenv("HOSTNAME", "box")
    acc = Account(
        id="a", conffile="/rc", host="h", from_="%U@%H", domain="%H", tls=True, tls_starttls=False
    )
    acc.proxy_host = "p"
    resolve.apply_defaults(acc)
    assert (acc.port, acc.from_, acc.domain, acc.proxy_port, acc.tls_trust_file) == (
        465,
        "jdoe@box",
        "box",
        1080,
        "system",
    )
    acc = Account(id="a", conffile="/rc", host="h")
    resolve.apply_defaults(acc)
    with pytest.raises(ConfigError) as info:
        resolve.check(acc, sendmail_mode=True)
    assert info.value.message == "account a from /rc: envelope-from address is missing"
    resolve.check(acc, sendmail_mode=False)
    lmtp = Account(id=None, conffile=None, host="h", protocol="lmtp")
    resolve.apply_defaults(lmtp)
    with pytest.raises(ConfigError, match=r"^port not set$"):
        resolve.check(lmtp, sendmail_mode=False)


def test_allow_from_override_blocks_only_the_command_line(isolated_home: Path) -> None:
    write_rc(
        isolated_home,
        "defaults\nallow_from_override off\naccount a\nhost h\nfrom a@x\naccount default : a\n",
    )
    account, _ = choose()
    # 1.8.24 semantics: `from` is still inherited through `account default : a`.
    assert account.from_ == "a@x"
    resolve.apply_overrides(
        account,
        Account(id=None, conffile=None),
        envelope_from="other@x",
        read_envelope_from=False,
        header_from=None,
    )
    assert account.from_ == "a@x"


def test_an_unchanged_file_is_parsed_once_and_any_change_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon reads the msmtprc for every SMTP message: a settled file (modified over two
    seconds ago) is kept by its identity and times; a rewrite, even of the same size and with
    its old modification time put back, or another $HOME (`~` expands to it), is read anew."""
    from relayd.accounts import files

    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_rc(tmp_path, "account default\nhost a.example\nfrom me@a.example\nlogfile ~/l\n")
    old = os.stat(path).st_mtime - 60
    os.utime(path, (old, old))
    first = files.load(str(path), check_secure=True)
    assert files.load(str(path), check_secure=True) is first
    path.write_text(path.read_text().replace("a.example", "b.example"))  # the same size
    os.utime(path, (old, old))
    second = files.load(str(path), check_secure=True)
    assert not isinstance(second, files.Unopenable) and second is not first
    assert [a.host for a in second.accounts] == ["b.example"]
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    third = files.load(str(path), check_secure=True)
    assert not isinstance(third, files.Unopenable)
    assert third.accounts[0].logfile == str(tmp_path / "elsewhere" / "l")
    path.write_text("account default\nhost c.example\n")  # modified now: not kept
    fresh = files.load(str(path), check_secure=True)
    assert files.load(str(path), check_secure=True) is not fresh
    path.unlink()
    assert isinstance(files.load(str(path), check_secure=True), files.Unopenable)


def test_remembered_choices_hold_until_a_file_or_the_environment_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SMTP listener's account choices (`Remembered`): the same sender's choice is kept
    while the files are unchanged, handed out as copies; a rewrite (same size, old mtime put
    back), a new ~/.msmtprc, another $EMAIL or a file modified just now means choosing again."""
    from relayd.accounts import select as select_module
    from relayd.accounts.select import Remembered

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    calls: list[str | None] = []
    real = select_module.select

    def counted(**kwargs: object) -> select_module.Selection:
        calls.append(kwargs["envelope_from"])  # type: ignore[arg-type]
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(select_module, "select", counted)
    path = write_rc(tmp_path / ".config" / "msmtp", RC, name="config")
    old = os.stat(path).st_mtime - 60
    os.utime(path, (old, old))
    remembered = Remembered()

    def chosen(sender: str) -> tuple[str | None, str | None]:
        args = {"account_id": None, "conffile": None, "sendmail_mode": True}
        found = remembered.select(envelope_from=sender, emit=lambda _: None, **args)  # type: ignore[arg-type]
        account = found.account
        account.set("host", "changed by the caller")  # a copy: the kept one stays as it was
        return account.id, account.from_

    assert chosen("boss@work.example") == ("work", "*@work.example")
    assert chosen("boss@work.example") == ("work", "*@work.example")
    assert chosen("me@home.example") == ("home", "me@home.example")
    assert calls == ["boss@work.example", "me@home.example"]
    fresh = remembered.select(
        account_id=None,
        conffile=None,
        envelope_from="boss@work.example",
        sendmail_mode=True,
        emit=lambda _: None,
    )
    assert fresh.account.host == "w"
    path.write_text(RC.replace("*@work.example", "*@WORK.example"))  # the same size
    os.utime(path, (old, old))
    assert chosen("boss@work.example") == ("default", "me@home.example")  # no match: default
    monkeypatch.setenv("EMAIL", "someone@example.org")
    assert chosen("boss@work.example") == ("default", "me@home.example")
    assert len(calls) == 4
    dot = write_rc(tmp_path, "account default\nhost d\nfrom d@example.org\n")  # ~/.msmtprc wins
    os.utime(dot, (old, old))
    assert chosen("boss@work.example") == ("default", "d@example.org")
    dot.write_text("account default\nhost e\nfrom e@example.org\n")  # modified now: not kept
    assert chosen("x@example.org") == ("default", "e@example.org")
    assert chosen("x@example.org") == ("default", "e@example.org")
    assert len(calls) == 7
