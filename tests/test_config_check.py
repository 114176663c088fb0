"""`relayd config check`: every msmtprc and relayd.toml problem, one `FILE: line N:` line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from relayd import paths, settings
from relayd.accounts import files, msmtprc
from relayd.cli import app, configcheck
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode
from tests.test_text import assert_harmless

SECRET = "hunter2-do-not-print"
GOOD_RC = (
    "defaults\nport 587\ntls on\n"
    "account work\nhost smtp.work.example\nfrom me@work.example\n"
    "account home\nhost smtp.home.example\nfrom me@home.example\n"
    "account default : home\n"
)


@pytest.fixture(autouse=True)
def _no_system_files(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the machine's /etc/msmtprc or /etc/relayd/relayd.toml."""
    monkeypatch.setenv(files.SYSTEM_FILE_ENV, str(tmp_path / "etc-msmtprc"))
    monkeypatch.setattr(paths, "SYSTEM_SETTINGS_FILE", str(tmp_path / "etc-relayd.toml"))


def write_rc(home: Path, text: str, mode: int = 0o600) -> Path:
    path = home / ".msmtprc"
    path.write_text(text)
    path.chmod(mode)
    return path


def write_toml(text: str) -> Path:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "relayd" / "relayd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check(*args: str) -> Result:
    return CliRunner().invoke(app, ["config", "check", *args])


def problems(result: Result) -> list[dict[str, object]]:
    """The --json output, every line parsed."""
    return [json.loads(line) for line in result.stdout.splitlines()]


def act_as_owner(path: Path, monkeypatch: pytest.MonkeyPatch, *, owner: bool = True) -> None:
    """msmtp skips the permission check for root: run it as the file's (non-root) owner."""
    uid = os.geteuid()
    if uid == 0:
        uid = 4242
        os.chown(path, uid, -1)
    monkeypatch.setattr(os, "geteuid", lambda: uid if owner else uid + 1)


def test_clean_configuration_exits_0_with_a_summary(isolated_home: Path) -> None:
    rc = write_rc(isolated_home, GOOD_RC)
    toml = write_toml('[retry]\nfirst = "2m"\n')
    result = check()
    assert result.exit_code == 0, result.output
    assert f"checked {rc}" in result.stdout
    assert f"checked {toml}" in result.stdout
    assert "accounts: work, home, default" in result.stdout
    assert "default account: default" in result.stdout
    assert result.stdout.rstrip().endswith("configuration OK")
    assert result.stderr == ""
    assert check("--json").stdout == ""


def test_every_msmtprc_error_with_its_line(isolated_home: Path) -> None:
    rc = write_rc(
        isolated_home,
        "account a\n"  # 1
        "host h\n"  # 2
        "frobnicate x\n"  # 3
        "Host h\n"  # 4
        "tls maybe\n"  # 5
        "account b : nosuch\n"  # 6
        "port 99999\n"  # 7 (on the stand-in for b: still checked)
        "account a\n"  # 8
        "defaults x\n"  # 9
        "host " + "x" * 600 + "\n"  # 10
        "account c\n"  # 11
        "host\n"  # 12
        "account d : b\n",  # 13: b was never defined
    )
    result = check()
    assert result.exit_code == ExitCode.CONFIG
    expected = [
        (3, "unknown command frobnicate"),
        (4, "unknown command Host"),
        (5, "invalid argument maybe for command tls"),
        (6, "account nosuch not (yet) defined"),
        (7, "invalid argument 99999 for command port"),
        (8, "account a was already defined"),
        (9, "command defaults does not take an argument"),
        (10, "line longer than 500 characters"),
        (11, "account c: host not set"),
        (12, "command host needs an argument"),
        (13, "account b not (yet) defined"),
    ]
    assert result.stdout.splitlines() == [f"{rc}: line {n}: {text}" for n, text in expected]
    assert result.stderr == f"relayd: {len(expected)} problems found\n"


def test_existing_callers_still_get_the_first_error_only() -> None:
    text = b"account a\nfrobnicate\naccount b : x\n"
    with pytest.raises(ConfigError) as info:
        msmtprc.parse("/rc", text)
    assert (info.value.message, info.value.line) == ("/rc: line 2: unknown command frobnicate", 2)
    assert info.value.exit_code == ExitCode.CONFIG
    collected: list[ConfigError] = []
    conf = msmtprc.parse("/rc", text, problems=collected)
    assert [err.message for err in collected] == [
        "/rc: line 2: unknown command frobnicate",
        "/rc: line 3: account x not (yet) defined",
    ]
    assert [a.id for a in conf.accounts] == ["a"]
    assert conf.lines == {"a": 1}

    toml = '[retry]\nfirst = "5x"\nbogus = 1\n[delivery]\ntimeout = 0\n'
    with pytest.raises(ConfigError) as info:
        settings.parse(toml, "/r.toml", default_database="sqlite:///q")
    assert info.value.message.startswith("/r.toml: retry.first: invalid duration '5x'")
    found, mistakes = settings.check(toml, "/r.toml", default_database="sqlite:///q")
    assert [m.key for m in mistakes] == ["retry.first", "retry.bogus", "delivery.timeout"]
    assert mistakes[0].text("/r.toml") == info.value.message
    assert found.database == "sqlite:///q"


def test_every_relayd_toml_problem(isolated_home: Path) -> None:
    write_rc(isolated_home, GOOD_RC)
    toml = write_toml(
        "database = 'queue.sqlite3'\n"  # 1
        "[retry]\n"  # 2
        'frist = "1m"\n'  # 3
        'first = "5x"\n'  # 4
        "lifetime = 1.5\n"  # 5
        "[delivery]\n"  # 6
        "connections_per_account = 0\n"  # 7
        "[bounce]\n"  # 8
        'mode = "sometimes"\n'  # 9
        "[colour]\n"  # 10
        "x = 1\n"  # 11
        "listen = { address = 'localhost' }\n"  # 12: inline table, its key on this line
    )
    result = check("--json")
    assert result.exit_code == ExitCode.CONFIG
    got = problems(result)
    assert {p["file"] for p in got} == {str(toml)}
    lines_keys = [(p["line"], str(p["message"]).split(":")[0]) for p in got]
    assert lines_keys == [
        (1, "database"),
        (3, "unknown key retry.frist"),
        (4, "retry.first"),
        (5, "retry.lifetime"),
        (7, "delivery.connections_per_account"),
        (9, "bounce.mode"),
        (10, "unknown key colour"),
    ]


def test_bad_toml_syntax_gives_its_line(isolated_home: Path) -> None:
    write_rc(isolated_home, GOOD_RC)
    toml = write_toml('[retry]\nfirst = "1m"\nmax = \n')
    result = check()
    assert result.exit_code == ExitCode.CONFIG
    assert result.stdout == f"{toml}: line 3: invalid value\n"


def test_database_url_problems(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_rc(isolated_home, GOOD_RC)
    toml = write_toml("# the queue\ndatabase = 'postgresql+nosuch://db.example/relayd'\n")
    monkeypatch.setenv("RELAYD_DATABASE_URL", "nonsense")
    got = problems(check("--json"))
    assert got == [
        {
            "file": str(toml),
            "line": 2,
            "message": "database: no database dialect 'postgresql+nosuch'",
        },
        {
            "file": None,
            "line": None,
            "message": "RELAYD_DATABASE_URL: expected a database URL such as sqlite:///PATH, "
            "not 'nonsense'",
        },
    ]


def test_insecure_permissions_of_a_file_with_a_password(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc = write_rc(isolated_home, GOOD_RC + f"password {SECRET}\n", mode=0o644)
    act_as_owner(rc, monkeypatch)
    result = check()
    assert result.exit_code == ExitCode.CONFIG
    assert result.stdout == (
        f"{rc}: contains secrets and therefore must have no more than user read/write permissions\n"
    )
    rc.chmod(0o600)
    assert check().exit_code == 0
    act_as_owner(rc, monkeypatch, owner=False)
    assert check().stdout == f"{rc}: contains secrets and therefore must be owned by you\n"


def test_passwordeval_alone_needs_no_private_file(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = isolated_home / "passwordeval-ran"
    rc = write_rc(
        isolated_home, GOOD_RC + f"auth on\nuser me\npasswordeval touch {marker}\n", mode=0o644
    )
    act_as_owner(rc, monkeypatch)
    result = check()
    assert result.exit_code == 0, result.output
    assert not marker.exists()  # the check never runs passwordeval


def test_missing_tls_files(isolated_home: Path) -> None:
    rc = write_rc(
        isolated_home,
        GOOD_RC
        + "account pinned : work\ntls_trust_file ~/nope.pem\n"  # 11
        + "account client : work\ntls_cert_file /no/cert.pem\ntls_key_file /no/key.pem\n"  # 13
        + "account half : work\ntls_key_file /no/key.pem\n"  # 16
        + "account plain : work\ntls off\ntls_trust_file /nope.pem\n",  # 18: TLS off, unused
    )
    got = problems(check("--json"))
    trust = isolated_home / "nope.pem"
    assert got == [
        {
            "file": str(rc),
            "line": 11,
            "message": f"account pinned: cannot set X509 trust file {trust} for TLS session: "
            f"Error while reading file. ({trust}: No such file or directory)",
        },
        {
            "file": str(rc),
            "line": 13,
            "message": "account client: cannot set X509 key file /no/key.pem and/or X509 cert "
            "file /no/cert.pem for TLS session: Error while reading file. "
            "(/no/cert.pem: No such file or directory) (/no/key.pem: No such file or directory)",
        },
        {
            "file": str(rc),
            "line": 16,
            "message": "account half: tls_key_file requires tls_cert_file",
        },
    ]


def test_unreadable_files_say_why(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_home / ".msmtprc").mkdir()
    result = check()
    assert result.exit_code == ExitCode.CONFIG
    assert result.stdout == f"{isolated_home / '.msmtprc'}: Is a directory\n"
    missing = isolated_home / "missing-rc"
    result = check("-C", str(missing))
    assert (result.exit_code, result.stdout) == (
        ExitCode.CONFIG,
        f"{missing}: No such file or directory\n",
    )
    (isolated_home / ".msmtprc").rmdir()
    write_rc(isolated_home, GOOD_RC)
    toml = isolated_home / "relayd.toml"
    toml.mkdir()
    monkeypatch.setenv("RELAYD_CONFIG", str(toml))
    result = check()
    assert (result.exit_code, result.stdout) == (
        ExitCode.CONFIG,
        f"{toml}: cannot read: Is a directory\n",
    )


def test_no_configuration_at_all(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = isolated_home / "etc-msmtprc"
    monkeypatch.setenv("RELAYD_MSMTPRC_SYSTEM", str(system))
    result = check("--json")
    assert result.exit_code == ExitCode.CONFIG
    looked_for = (
        f"{isolated_home}/.msmtprc or {os.environ['XDG_CONFIG_HOME']}/msmtp/config, and {system}"
    )
    assert problems(result) == [
        {
            "file": None,
            "line": None,
            "message": f"no account defined: no configuration file available (looked for"
            f" {looked_for})",
        }
    ]
    plain = check()
    assert plain.stdout == (
        f"no account defined: no configuration file available (looked for {looked_for})\n"
    )
    monkeypatch.setenv("SMTPSERVER", "smtp.example")  # msmtp's environment fallback
    assert check().exit_code == 0


def test_no_default_account_is_not_a_problem(isolated_home: Path) -> None:
    # msmtp then needs -a or a matching -f: mail can still go, so it is not an error.
    write_rc(isolated_home, "account work\nhost w\nfrom me@w.example\n")
    result = check()
    assert result.exit_code == 0, result.output
    assert f"default account: {configcheck.NO_DEFAULT}" in result.stdout


def test_the_user_file_shadows_the_system_file(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "system-msmtprc"
    system.write_text("account work\n\naccount other\nhost o\nbogus\n")
    monkeypatch.setenv(files.SYSTEM_FILE_ENV, str(system))
    write_rc(isolated_home, GOOD_RC)
    result = check()
    # the system `work` (no host) is never used: only its syntax error counts
    assert result.stdout == f"{system}: line 5: unknown command bogus\n"
    system.write_text("account other\nhost o\n")
    result = check()
    assert "accounts: work, home, default, other" in result.stdout


def test_xdg_msmtp_config_and_eval(isolated_home: Path) -> None:
    xdg = Path(os.environ["XDG_CONFIG_HOME"]) / "msmtp" / "config"
    xdg.parent.mkdir(parents=True)
    xdg.write_text(
        "account default\neval echo host h.example\nfrom a@b\neval true\neval echo tls maybe\n"
    )
    result = check()
    assert result.stdout.splitlines() == [
        f"{xdg}: line 4: cannot read output of 'true'",
        f"{xdg}: line 5: invalid argument maybe for command tls",
    ]


def test_no_password_in_any_message(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc = write_rc(
        isolated_home,
        f"account a\npassword {SECRET}\ntls {SECRET}x\naccount b : a\npasswordeval echo {SECRET}\n"
        f"password\n{SECRET} {SECRET}\n",
        mode=0o640,
    )
    act_as_owner(rc, monkeypatch)
    write_toml(f"[listen]\nusers = {{ alice = 1, bob = '{SECRET}' }}\naddress = 5\n")
    monkeypatch.setenv("RELAYD_DATABASE_URL", f"postgresql+psycopg://me:{SECRET}@db/relayd")
    result = check()
    assert result.exit_code == ExitCode.CONFIG
    assert "unknown command" in result.stdout and "listen.users" in result.stdout
    assert SECRET not in result.output
    # a clean configuration's summary hides the database password too
    write_rc(isolated_home, GOOD_RC + f"password {SECRET}\n")
    write_toml("")
    result = check()
    assert result.exit_code == 0, result.output
    assert "queue database: postgresql+psycopg://me:***@db/relayd" in result.stdout
    assert SECRET not in result.output
    # a block whose account line failed still hides its password
    write_rc(isolated_home, f"account bad,name\npassword {SECRET}\nport {SECRET}\n", mode=0o600)
    result = check()
    assert "invalid argument" in result.stdout and SECRET not in result.output


def test_colour_on_a_terminal_only(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_rc(isolated_home, "account a\nbogus\n")
    plain = CliRunner().invoke(app, ["config", "check"], color=True)
    assert "\x1b[" not in plain.stdout  # CliRunner's stdout is no terminal
    monkeypatch.setattr("relayd.cli.config.on_terminal", lambda: True)
    coloured = CliRunner().invoke(app, ["config", "check"], color=True)
    assert "\x1b[1m" in coloured.stdout and "unknown command bogus" in coloured.stdout


def test_hostile_file_contents_reach_no_terminal(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = "bo\x9b31m\u202egus\x85\u2066x\x1b[2J"
    write_rc(isolated_home, f"account a\n{bogus}\n")
    plain, as_json = check(), check("--json")
    monkeypatch.setattr("relayd.cli.config.on_terminal", lambda: True)
    coloured = CliRunner().invoke(app, ["config", "check"], color=True).stdout
    escaped = "bo\\x9b31m\\u202egus\\x85\\u2066x\\x1b[2J"
    assert f"unknown command {escaped}" in plain.stdout
    assert f"unknown command {escaped}" in coloured
    for output in (plain.stdout, as_json.stdout, coloured.replace("\x1b[", "")):
        assert_harmless(output)
    messages = [problem["message"] for problem in problems(as_json)]
    assert f"unknown command {bogus}" in messages  # exact in the JSON


def test_key_line_best_effort() -> None:
    text = '# c\n[retry]\nfirst = "1m"\n[listen]\nusers = { a = "x" }\n"quoted" = 1\n'
    assert configcheck.key_line(text, "retry.first") == 3
    assert configcheck.key_line(text, "retry") == 2
    assert configcheck.key_line(text, "listen.users.a") == 5
    assert configcheck.key_line(text, "listen.quoted") == 6
    assert configcheck.key_line(text, "retry.max") == 2  # not there: its table
    assert configcheck.key_line(text, "nowhere") is None


def test_the_console_script(isolated_home: Path) -> None:
    relayd = Path(sys.executable).with_name("relayd")
    rc = write_rc(isolated_home, "account a\nfrobnicate\nhost h\nport 0\n")
    toml = write_toml('[retry]\nmax = "1x"\n')
    env = dict(os.environ)
    env["RELAYD_CONFIG"] = str(toml)  # so the real /etc/relayd/relayd.toml is never read
    proc = subprocess.run(
        [str(relayd), "config", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"file": str(rc), "line": 2, "message": "unknown command frobnicate"},
        {"file": str(rc), "line": 4, "message": "invalid argument 0 for command port"},
        {
            "file": str(toml),
            "line": 2,
            "message": 'retry.max: invalid duration \'1x\' (use e.g. "90s", "5m", "1h", "5d")',
        },
    ]
    write_rc(isolated_home, GOOD_RC)
    toml.write_text("")
    proc = subprocess.run(
        [str(relayd), "config", "check", "-C", str(rc)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\x1b[" not in proc.stdout  # piped: plain text
    assert proc.stdout.endswith("configuration OK\n")
