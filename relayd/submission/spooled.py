"""Messages that wait in temporary files: composed a block at a time, replayed for the store.

The host submit socket and the SMTP listener take a message before they can compose it; a big
one waits in a private temporary file (never whole in memory), is composed from there a block
at a time into a second file holding its wire form, and the store reads that back a chunk at
a time (again from its start if a group commit is retried).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from relayd.store import BODY_CHUNK
from relayd.store.records import NewMessage
from relayd.submission.cmdline import Invocation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from relayd.accounts.select import Remembered

IN_MEMORY = 1 << 20  # a message up to this size waits in memory, a bigger one in a file


def wire_file() -> tempfile.SpooledTemporaryFile[bytes]:
    """A file for a composed message's wire form (in memory up to IN_MEMORY bytes)."""
    return tempfile.SpooledTemporaryFile(IN_MEMORY)


def compose(
    inv: Invocation,
    read: Callable[[int], bytes],
    wire: IO[bytes],
    *,
    envelope: list[str] | None = None,
    require_account: bool = False,
    remembered: Remembered | None = None,
) -> NewMessage:
    """The stored message, made as relayd-sendmail makes it from the message `read` gives (a
    block at a time, like os.read); its wire form is written to `wire` and replayed from there.
    `envelope`: the SMTP client's recipients (None: the command line's, or -t); `remembered`:
    account choices kept from earlier messages."""
    from relayd.submission import sendmail, submit

    source = submit.Input(read, sys.maxsize)  # the size limit was checked as it arrived
    head = source.head()
    account, recipients, scan = sendmail.prepare(
        inv,
        head,
        sendmail.Output(False),
        envelope=envelope,
        require_account=require_account,
        remembered=remembered,
    )
    new = submit.build(inv, account, head, scan, recipients, time.time(), source.rest())
    for piece in new.body or ():
        wire.write(piece)
    new.body = Replay(wire)
    return new


class Replay:
    """A file's bytes, from its start, BODY_CHUNK at a time, each time it is iterated."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def __iter__(self) -> Iterator[bytes]:
        self.file.seek(0)
        while block := self.file.read(BODY_CHUNK):
            yield block
