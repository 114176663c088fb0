"""The daemon's resident memory: one malloc arena, no pydantic, SCRAM's library only for SCRAM."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import scramp

from relayd.daemon import malloc
from relayd.delivery import auth
from relayd.delivery.classify import Failure
from relayd.delivery.result import Event, Reply
from tests.sendmail_helpers import write_msmtprc
from tests.test_daemon import Daemon, start_daemon, submit, upstream
from tests.upstream import UpstreamServer

__all__ = ["start_daemon", "upstream"]  # fixtures used by name below

THREAD_HEAP = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit

# Four threads each allocate and free bodies of 10 KiB (malloc, not the interpreter's own
# allocator), as the daemon's workers do; malloc_stats() prints one "Arena N:" block per arena.
ARENAS = """
import ctypes, sys, threading
from relayd.daemon import malloc
print(malloc.one_arena() if sys.argv[1] == "one" else "default", flush=True)
def work():
    for _ in range(200):
        kept = [bytes(10240) for _ in range(50)]
        del kept
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()
"""

glibc = pytest.mark.skipif(
    not malloc._glibc(), reason="M_ARENA_MAX is glibc's; this C library is not glibc"
)


def _arenas(mode: str, env: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


def _env_without_arena_max() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}


@glibc
def test_the_daemons_threads_share_one_malloc_arena() -> None:
    env = _env_without_arena_max()
    assert _arenas("default", env)[1] > 1  # the test can tell: glibc's default makes more
    assert _arenas("one", env) == ("True", 1)


@glibc
def test_a_users_malloc_arena_max_is_kept() -> None:
    env = dict(_env_without_arena_max(), MALLOC_ARENA_MAX="3")
    told, arenas = _arenas("one", env)
    assert told == "False" and arenas > 1


def _thread_heaps(pid: int) -> int:
    """glibc's arenas other than the main one, in /proc/PID/maps: each is a heap of 64 MiB
    reserved at a 64 MiB boundary, its used part rw-p and the rest ---p, with no file."""
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        maps.append((low, high, fields[1], len(fields) > 5))
    ends = {low: (high, perms, named) for low, high, perms, named in maps}
    count = 0
    for low, high, perms, named in maps:
        if named or low % THREAD_HEAP or perms != "rw-p":
            continue
        rest = ends.get(high)
        if rest is not None and not rest[2] and rest[1] == "---p":
            high = rest[0]
        count += high - low == THREAD_HEAP
    return count


@glibc
@pytest.mark.parametrize(("arena_max", "heaps"), [(None, 0), ("8", 1)])
def test_a_delivering_daemon_keeps_one_malloc_arena_unless_the_user_says(
    upstream: UpstreamServer,
    start_daemon: Callable[..., Daemon],
    arena_max: str | None,
    heaps: int,
) -> None:
    """`relayd daemon` limits glibc to one arena before its first thread; a MALLOC_ARENA_MAX
    in its environment is the user's choice (then its worker threads get arenas of their own)."""
    write_msmtprc(f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n")
    env = {"MALLOC_ARENA_MAX": arena_max} if arena_max else {}
    daemon = start_daemon(**env)
    for _ in range(5):
        submit()
    upstream.wait_for(5, timeout=20)
    found = _thread_heaps(daemon.proc.pid)
    assert (found >= 1) if heaps else (found == 0), found


def test_the_daemon_loads_no_pydantic_for_its_options(
    upstream: UpstreamServer, start_daemon: Callable[..., Daemon]
) -> None:
    """typer 0.29 and later validate option values through pydantic (~13 MiB for good in the
    daemon): the pinned typer converts them without it."""
    write_msmtprc(f"account default\nhost 127.0.0.1\nport {upstream.port}\nfrom me@example.org\n")
    daemon = start_daemon("--scan-interval", "30", "--shutdown-grace", "2")
    submit()
    upstream.wait_for(1, timeout=20)
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "pydantic" not in maps


def test_the_daemon_loads_no_scram_library_until_an_account_uses_scram() -> None:
    modules = (
        "relayd.cli, relayd.cli.daemon, relayd.daemon.lifecycle, relayd.delivery.session,"
        " relayd.submission.listener, relayd.submission.server"
    )
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if 'scramp' in m"
    code += " or 'asn1crypto' in m))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_server_that_does_not_know_the_user_is_refused_by_scram() -> None:
    """The server-final signature proves the server knows the password: a forged one fails
    the login (msmtp: authentication failed), after scramp is loaded on first use."""
    mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
    server = mechanism.make_server(lambda user: mechanism.make_auth_info("secret"))
    replies: list[str] = []

    async def exchange(line: str, secret: bool) -> Reply:
        if line.startswith("AUTH "):
            return Reply(334, ("",))
        sent = base64.b64decode(line).decode()
        if not replies:
            server.set_client_first(sent)
            replies.append(server.get_server_first())
        else:
            server.set_client_final(sent)  # the proof is right: the password is "secret"
            replies.append("v=" + base64.b64encode(bytes(32)).decode())  # a forged signature
        return Reply(334, (base64.b64encode(replies[-1].encode()).decode(),))

    mech = auth.mechanism("SCRAM-SHA-256", "user", "secret", "127.0.0.1", 25)
    failure = asyncio.run(auth.authenticate(mech, exchange))
    assert isinstance(failure, Failure) and failure.event is Event.AUTH_REJECTED
