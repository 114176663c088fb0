"""Host mode in tests: a root daemon serving the submit socket, and submitters that really are
other users (`setpriv` to `nobody`, to a user the test creates, to bare uids)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.sendmail_helpers import run_sendmail

NOBODY = 65534
TEST_USER = "relaydtest2"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="host mode tests switch users: they need root and setpriv",
)


def as_uid(uid: int, gid: int | None = None) -> list[str]:
    """A command prefix that runs as `uid` (no supplementary groups)."""
    group = NOBODY if gid is None else gid
    return ["setpriv", f"--reuid={uid}", f"--regid={group}", "--clear-groups"]


class Host:
    """A shared directory (0755, reachable by every user) holding the host's runtime directory
    and one home per submitting uid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run = root / "run"
        self.run.mkdir(mode=0o755)
        self.run.chmod(0o755)

    @property
    def socket(self) -> Path:
        return self.run / "submit"

    def home(self, uid: int) -> Path:
        """A private home for `uid` (created on first use, owned by it)."""
        home = self.root / f"home-{uid}"
        if not home.exists():
            home.mkdir(mode=0o700)
            os.chown(home, uid, -1)
        return home

    def user_env(self, uid: int, **extra: str) -> dict[str, str]:
        """A submitter's environment: its own HOME, the host's runtime directory, no queue."""
        home = self.home(uid)
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RELAYD_RUNTIME_DIR": str(self.run),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "RELAYD_MSMTPRC_SYSTEM": str(home / "no-system-msmtprc"),
        }
        env.update(extra)
        return env

    def sendmail(
        self, uid: int, args: Sequence[str], stdin: bytes, *, timeout: float = 30, **extra: str
    ) -> subprocess.CompletedProcess[bytes]:
        """`relayd-sendmail ARGS` as `uid`."""
        env = self.user_env(uid, **extra)
        return run_sendmail(args, stdin, env=env, prefix=as_uid(uid), timeout=timeout)

    def python(
        self, uid: int, code: str, *, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """A Python snippet run as `uid` (this virtualenv's interpreter)."""
        import sys

        env = self.user_env(uid)
        return subprocess.run(
            [*as_uid(uid), sys.executable, "-c", code],
            capture_output=True,
            env=env,
            cwd=env["HOME"],
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def host() -> Iterator[Host]:
    made = Path(tempfile.mkdtemp(prefix="relayd-host-"))
    made.chmod(0o755)
    try:
        yield Host(made)
    finally:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def test_user() -> Iterator[int]:
    """A system user made for this test (removed after): its uid."""
    subprocess.run(["userdel", TEST_USER], capture_output=True, check=False)
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a test user: {made.stderr.decode().strip()}")
    try:
        yield pwd.getpwnam(TEST_USER).pw_uid
    finally:
        subprocess.run(["userdel", TEST_USER], capture_output=True, check=False)
