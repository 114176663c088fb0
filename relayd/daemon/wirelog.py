"""Which claimed messages went on the wire: a journal per claim, for flagging duplicates exactly.

A runner killed mid-batch leaves up to `messages_per_connection` messages leased. Only those
whose data had started to go out may have reached the server; the others must come back
unflagged (SPEC §4: "possible duplicate" marks exactly the messages whose data may have
reached the server). Writing that fact to the queue before each message would cost an fsync
a message; instead, the runner appends the queue id to a small file before the message's
data goes out, without fsync. What a killed process wrote is in the kernel's page cache and
survives it; only a crash of the machine can lose it, so the file starts with the boot id and
a file from another boot (or a missing one) proves nothing: then every leased message of that
claim is flagged, as before. Files live in the runtime directory (`wire/`, private), one per
claim, named after the claim's owner, and are removed once the claim's results are committed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from relayd import paths

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_HEADER = "relayd-wire 1 "


def directory() -> str:
    return os.path.join(paths.runtime_dir(), "wire")


def boot_id() -> str:
    """This boot's id (Linux); a constant elsewhere, where nothing can tell boots apart."""
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def _path(where: str, owner: str) -> str:
    # Owners look like `daemon-HOST-PID/N`: keep them readable, and one file name.
    safe = "".join(c if c.isalnum() or c in "-._" else "+" for c in owner)
    return os.path.join(where, safe)


class WireLog:
    """The journal of one claim: `sending(queue_id)` before each message's data.

    If the file cannot be made or written, it is removed (so that its claim counts as
    unknown, every message flagged); if even that fails, sending stops with the OSError.
    """

    def __init__(self, owner: str, where: str | None = None) -> None:
        self.owner = owner
        self.path = _path(where or directory(), owner)
        self._fd: int | None = None
        try:
            paths.ensure_private_dir(os.path.dirname(self.path))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # no journal: the claim is "unknown", every message flagged if killed
        self._fd = fd
        self._write(f"{_HEADER}{boot_id()}\n")

    def sending(self, queue_id: str) -> None:
        """Note that `queue_id`'s data is about to go out (call before sending it)."""
        if self._fd is not None:
            self._write(f"{queue_id}\n")

    def _write(self, text: str) -> None:
        assert self._fd is not None
        data = text.encode("ascii", "replace")
        try:
            if os.write(self._fd, data) == len(data):
                return
        except OSError:
            pass
        self._give_up()

    def _give_up(self) -> None:
        """A write failed: without a whole journal the claim must count as unknown."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        os.unlink(self.path)  # if this fails too, the OSError stops the sending

    def close(self, *, keep: bool = False) -> None:
        """Done with the claim: remove the journal, unless `keep` (results not committed)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def on_wire(owner: str, where: str | None = None) -> set[str] | None:
    """The queue ids whose data went out under `owner`'s claim, as its journal says; None when
    that cannot be known (no journal here, another boot's, unreadable)."""
    try:
        with open(_path(where or directory(), owner), encoding="ascii", errors="replace") as f:
            header = f.readline()
            if header != f"{_HEADER}{boot_id()}\n":
                return None
            return {line.rstrip("\n") for line in f if line.endswith("\n")}
    except OSError:
        return None


def forget(owners: Iterable[str], where: str | None = None) -> None:
    """Remove the journals of claims whose leases have been returned."""
    for owner in owners:
        with contextlib.suppress(OSError):
            os.unlink(_path(where or directory(), owner))


def prune(leased_owners: Iterable[str], where: str | None = None) -> int:
    """Remove the journals of claims that hold no lease any more (a process killed between its
    last commit and removing its journal); how many. Removing one only ever makes its claim
    count as unknown, so a journal being made this instant is safe to lose."""
    folder = where or directory()
    keep = {os.path.basename(_path(folder, owner)) for owner in leased_owners}
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def interrupted(leases: Iterable[tuple[str, str]], where: str | None = None) -> set[str]:
    """Of (queue id, owner) leases left by runners that are gone, those that may have reached
    the server: the ones their claim's journal names, or all of a claim without a journal."""
    by_owner: dict[str, list[str]] = {}
    for queue_id, owner in leases:
        by_owner.setdefault(owner, []).append(queue_id)
    found: set[str] = set()
    for owner, queue_ids in by_owner.items():
        sent = on_wire(owner, where)
        found.update(queue_ids if sent is None else (q for q in queue_ids if q in sent))
    return found
