"""NewMessage: what front ends (relayd-sendmail, the listener, the host socket) hand the queue.

On the sendmail hot path, so it imports nothing: the states (an enum) are in
`relayd.store.records`, the records read back from the store in `relayd.store.queued`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds: this is on the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Iterable


class NewMessage:
    """What a front end (relayd-sendmail, the listener) hands the store to queue.

    `overrides` are the msmtp command-line options that change the account, as (option, value)
    pairs in command-line order, e.g. (("host", "mx.example"), ("port", "2525")); they are stored
    as a structured list and never re-split. `sender` is the envelope sender, '' for `<>`.
    `data` is exactly what goes on the wire before dot-stuffing (CRLF line ends); a big message
    comes as `body` instead, those bytes in pieces of any size read only while the store writes
    them (its size and 8-bit flag are counted then; `eightbit` may only add to it). A body that
    must survive a retried transaction iterates afresh each time. `uid` is the
    submitting user (None when unknown; the sendmail front end passes `os.getuid()`) and `user`
    that uid's name in the password database (None when unknown or it has no entry).

    A plain class with slots: `dataclasses` costs 5 ms to import on the sendmail hot path.
    """

    __slots__ = (
        "account",
        "body",
        "config_file",
        "data",
        "eightbit",
        "overrides",
        "recipients",
        "sender",
        "smtputf8",
        "uid",
        "user",
    )

    def __init__(
        self,
        account: str,
        overrides: tuple[tuple[str, str | None], ...],
        sender: str,
        recipients: tuple[str, ...],
        data: bytes | bytearray = b"",
        smtputf8: bool = False,
        eightbit: bool = False,
        config_file: str | None = None,
        uid: int | None = None,
        user: str | None = None,
        body: Iterable[bytes] | None = None,
    ) -> None:
        if not recipients:
            raise ValueError("a queued message needs at least one recipient")
        self.account = account
        self.overrides = overrides
        self.sender = sender
        self.recipients = recipients
        self.data = data
        self.smtputf8 = smtputf8
        self.eightbit = eightbit
        self.config_file = config_file
        self.uid = uid
        self.user = user
        self.body = body

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NewMessage) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        size = "streamed" if self.body is not None else len(self.data)
        return f"NewMessage(account={self.account!r}, sender={self.sender!r}, size={size})"
