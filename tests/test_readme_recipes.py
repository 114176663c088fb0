"""README.rst's recipes for mailx (bsd-mailx, s-nail) and PHP, run as written with Debian's
programs, and what the README may point at (users have only the repository).

Each recipe line is read from the README itself and run by bash with the install's bin
directory in PATH, as after `pipx install .`; the message must then be in the queue.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sendmail_helpers import queue_db, sendmail_env, stored_messages, write_msmtprc
from tests.store_helpers import REPO

README = REPO / "README.rst"
BIN = Path(sys.executable).parent  # where the install put relayd-sendmail
RC = "account default\nhost 127.0.0.1\nport 2525\nfrom me@example.org\n"


def recipe(marker: str) -> str:
    """The one literal-block line of the README that contains `marker`, comment dropped."""
    found = [
        line.strip()
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("    ") and marker in line
    ]
    assert len(found) == 1, f"README.rst: {len(found)} recipe lines with {marker!r}"
    return found[0].split("   #")[0].strip()


def environment(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment after the install: its bin directory in PATH."""
    env = sendmail_env(**extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    assert env["HOME"] == str(home)
    return env


def run_line(line: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, env=env, cwd=env["HOME"], timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def needs(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        why = f"{program} is not installed (apt-get install {program}; .ci/run does)"
        if os.environ.get("CI"):  # .ci/run installed it: a skip there would hide a failure
            pytest.fail(why)
        pytest.skip(why)
    return found


def assert_queued(subject: str, recipient: str = "you@example.org") -> None:
    (stored,) = stored_messages()
    assert stored.state == "queued"
    assert [address for address, _ in stored.recipients] == [recipient]
    assert f"Subject: {subject}\r\n".encode() in stored.data


def mail(program: str, subject: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """`PROGRAM -s SUBJECT you@example.org` with a one-line body, as a user types it."""
    return subprocess.run(
        [program, "-s", subject, "you@example.org"],
        input=b"hello\n",
        capture_output=True,
        env=env,
        cwd=env["HOME"],
        timeout=60,
    )


def test_bsd_mailx_recipe(isolated_home: Path) -> None:
    mailx = needs("bsd-mailx")
    write_msmtprc(RC)
    env = environment(isolated_home)
    run_line(recipe('"set sendmail=$(command -v relayd-sendmail)"'), env)
    assert (isolated_home / ".mailrc").read_text() == f"set sendmail={BIN}/relayd-sendmail\n"
    done = mail(mailx, "from bsd-mailx", env)
    assert done.returncode == 0, done.stderr
    assert_queued("from bsd-mailx")


def test_bsd_mailx_needs_the_absolute_path(isolated_home: Path) -> None:
    """Why the recipe: the bare name, in PATH, is not found (bsd-mailx does not search it)."""
    mailx = needs("bsd-mailx")
    write_msmtprc(RC)
    (isolated_home / ".mailrc").write_text("set sendmail=relayd-sendmail\n")
    done = mail(mailx, "bare", environment(isolated_home))
    assert b"relayd-sendmail: No such file or directory" in done.stderr
    assert stored_messages() == []


def test_s_nail_recipe(isolated_home: Path) -> None:
    snail = needs("s-nail")
    write_msmtprc(RC)
    extra: dict[str, str] = {"DEAD": str(isolated_home / "dead.letter")}
    if os.geteuid() == 0:
        # s-nail run by root ignores HOME, for itself and for the program it runs (README): the
        # ~/.mailrc is named, and relayd-sendmail finds the account in a "system" msmtprc.
        extra["MAILRC"] = str(isolated_home / ".mailrc")
        extra["RELAYD_MSMTPRC_SYSTEM"] = str(isolated_home / ".msmtprc")
    env = environment(isolated_home, **extra)
    run_line(recipe('"set mta=$(command -v relayd-sendmail)"'), env)
    assert (isolated_home / ".mailrc").read_text() == f"set mta={BIN}/relayd-sendmail\n"
    done = mail(snail, "from s-nail", env)
    assert done.returncode == 0, done.stderr
    assert_queued("from s-nail")
    assert not (isolated_home / "dead.letter").exists()


def test_php_recipe(isolated_home: Path) -> None:
    php = needs("php")
    write_msmtprc(RC)
    env = environment(isolated_home)
    line = run_line(recipe("sendmail_path = "), env).strip()
    found = re.fullmatch(r'sendmail_path = "(\S+) -t -i"', line)
    assert found is not None, line
    assert found.group(1) == f"{BIN}/relayd-sendmail"  # a path the install created
    assert Path(found.group(1)).is_file()
    ini = isolated_home / "php.ini"
    ini.write_text(line + "\n")
    script = (
        'exit(mail("you@example.org", "from PHP", "hello\\n", "From: me@example.org") ? 0 : 1);'
    )
    done = subprocess.run(
        [php, "-n", "-c", str(ini), "-r", script],
        capture_output=True,
        env=env,
        cwd=isolated_home,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert_queued("from PHP")  # -t: the recipient came from the To: header PHP wrote
    assert queue_db().exists()


def test_the_readme_points_only_inside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    for outside in ("../shared", "SPEC.md", "DESIGN.md", "/work/"):
        assert outside not in text, f"README.rst names {outside!r}, which users do not have"
    # every repository file it names as ``path/…`` exists
    named = set(re.findall(r"``((?:systemd|contrib|benchmarks|tests)/[\w./-]+)``", text))
    assert named, "the scan found no paths"
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, missing
