"""relayd-sendmail under load and under SIGKILL: many parallel submitters on one fresh queue,
and submitters killed at random moments. The real console script, the queue read back with
stdlib sqlite3."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.sendmail_helpers import (
    SENDMAIL,
    Stored,
    check_consistent,
    run_sendmail,
    sendmail_env,
    stored_messages,
    write_msmtprc,
)

WORKERS = 20
PER_WORKER = 50
BODY = b"x" * 1000 + b"\n"
SUBJECT_RE = re.compile(rb"^Subject: (\S+)\r$", re.MULTILINE)


def subject_of(message: Stored) -> str:
    found = SUBJECT_RE.findall(message.data)
    assert len(found) == 1, message.data[:300]
    return str(found[0].decode())


def test_twenty_parallel_submitters_store_a_thousand_messages() -> None:
    """20 threads each run 50 relayd-sendmail processes one after another, all starting on a
    queue that does not exist yet (so the first ones also race to create and migrate it)."""
    write_msmtprc()
    env = sendmail_env()

    def submitter(worker: int) -> list[tuple[str, int, bytes]]:
        outcomes = []
        for number in range(PER_WORKER):
            tag = f"{worker}-{number}"
            result = run_sendmail(
                [f"r{tag}@example.org", "all@example.org"],
                b"Subject: %s\n\n" % tag.encode() + BODY,
                env=env,
                timeout=60,
            )
            outcomes.append((tag, result.returncode, result.stdout + result.stderr))
        return outcomes

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = [o for batch in pool.map(submitter, range(WORKERS)) for o in batch]
    elapsed = time.monotonic() - started

    failed = [outcome for outcome in outcomes if outcome[1] != 0 or outcome[2]]
    assert failed == [], f"{len(failed)} submissions failed or printed, e.g. {failed[:3]}"
    stored = stored_messages()
    assert len(stored) == WORKERS * PER_WORKER
    assert len({message.queue_id for message in stored}) == WORKERS * PER_WORKER
    by_tag = {subject_of(message): message for message in stored}
    assert sorted(by_tag) == sorted(tag for tag, _, _ in outcomes)
    for tag, message in by_tag.items():
        assert message.recipients == [
            (f"r{tag}@example.org", "pending"),
            ("all@example.org", "pending"),
        ]
        assert message.state == "queued" and message.data.endswith(
            b"\r\n\r\n" + BODY[:-1] + b"\r\n"
        )
    check_consistent()
    print(f"{WORKERS * PER_WORKER} submissions in {elapsed:.1f} s")


def start_killable(args: list[str], message: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(message, "rb") as stdin:
        return subprocess.Popen(
            [SENDMAIL, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=env["HOME"],
        )


def kill_after(child: subprocess.Popen[bytes], delay: float) -> tuple[int, bytes]:
    """SIGKILL `child` after `delay` seconds unless it exited first (Popen.send_signal reaps
    an exited child instead of signalling it); (exit status, stdout + stderr)."""
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    return child.returncode, out + err


def timed_submission(env: dict[str, str], tmp_path: Path) -> float:
    """Seconds one successful submission takes from start to exit."""
    message = tmp_path / "timing"
    message.write_bytes(b"Subject: timing\n\nbody\n")
    started = time.monotonic()
    child = start_killable(["timing@example.org"], message, env)
    out, err = child.communicate(timeout=60)
    assert (child.returncode, out, err) == (0, b"", b"")
    return time.monotonic() - started


def test_sigkill_while_submitting_leaves_whole_messages_or_none(tmp_path: Path) -> None:
    """Submitters killed at random moments, many of them around the commit: every one that
    exited 0 by itself has its message stored; nothing stored is partial."""
    write_msmtprc()
    env = sendmail_env()
    timed_submission(env, tmp_path)  # creates and migrates the queue
    typical = min(timed_submission(env, tmp_path) for _ in range(3))
    # A submission is killed anywhere from before Python starts to after it exits.
    window = max(0.06, 2 * typical)
    rng = random.Random(20240611)
    seen: dict[str, int] = {}
    for number in range(25):
        tag = f"crash-{number}"
        message = tmp_path / tag
        message.write_bytes(b"Subject: %s\n\n" % tag.encode() + BODY)
        args = [f"{tag}-{n}@example.org" for n in range(3)]
        code, output = kill_after(start_killable(args, message, env), rng.uniform(0, window))
        assert code in (0, -signal.SIGKILL), (code, output)
        assert code != 0 or output == b"", output
        seen[tag] = code

    stored = {
        subject_of(m): m
        for m in stored_messages()
        if m.recipients != [("timing@example.org", "pending")]
    }
    completed = {tag for tag, code in seen.items() if code == 0}
    assert completed <= set(stored), "a submitter exited 0 but its message is missing"
    assert set(stored) <= set(seen)
    for tag, m in stored.items():
        assert m.recipients == [(f"{tag}-{n}@example.org", "pending") for n in range(3)]
        assert m.state == "queued" and m.size == len(m.data)
        assert m.data.endswith(b"Subject: %s\r\n\r\n" % tag.encode() + BODY[:-1] + b"\r\n")
    check_consistent()
    killed = len(seen) - len(completed)
    assert completed and killed, f"the kill window {window:.3f} s missed: {seen}"
    print(
        f"{len(completed)} exited 0, {killed} killed, {len(stored) - len(completed)} stored anyway"
    )


def test_sigkill_during_the_first_use_migration(tmp_path: Path) -> None:
    """A submitter killed while it creates and migrates a new queue (one transaction) leaves a
    queue the next submitter can use."""
    write_msmtprc()
    first = timed_submission(sendmail_env(), tmp_path)  # a fresh queue: includes the migration
    rng = random.Random(7)
    for number in range(5):
        db = tmp_path / f"queue{number}" / "queue.sqlite3"
        env = sendmail_env(RELAYD_DATABASE_URL=f"sqlite:///{db}")
        message = tmp_path / f"first-{number}"
        message.write_bytes(b"Subject: first\n\nbody\n")
        child = start_killable(["first@example.org"], message, env)
        code, output = kill_after(child, rng.uniform(0.3, 1.1) * first)
        assert code in (0, -signal.SIGKILL), (code, output)
        result = run_sendmail(["second@example.org"], b"Subject: second\n\nbody\n", env=env)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
        both = ["first@example.org", "second@example.org"]
        # Killed after its commit but before exiting, the first one may be stored anyway.
        allowed = [both] if code == 0 else [both, both[1:]]
        assert [m.recipients[0][0] for m in stored_messages(db)] in allowed
        check_consistent(db)
