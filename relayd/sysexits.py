"""The sysexits(3) exit codes relayd and msmtp use: ints with names, without the enum module.

Why not `enum.IntEnum`: importing enum (with functools and operator) costs relayd-sendmail about
17 M instructions, a fifth of a whole submission; ExitCode keeps IntEnum's surface that relayd
uses: `ExitCode.TEMPFAIL`, `ExitCode(75)` (ValueError for a value that is not a member), `.name`,
`.value`, iteration in value order, `str()` and formatting as the number.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at import: this module is on the hot path
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import ClassVar


class _Members(type):
    """The metaclass that makes `list(ExitCode)` and `len(ExitCode)` work as with an enum."""

    _by_value: dict[int, ExitCode]

    def __iter__(cls) -> Iterator[ExitCode]:
        return iter(sorted(cls._by_value.values()))

    def __len__(cls) -> int:
        return len(cls._by_value)


class ExitCode(int, metaclass=_Members):
    """sysexits.h values; names match msmtp's log (`exitcode=EX_…`) with `EX_` dropped."""

    __slots__ = ()

    OK: ClassVar[ExitCode]
    USAGE: ClassVar[ExitCode]
    DATAERR: ClassVar[ExitCode]
    NOINPUT: ClassVar[ExitCode]
    NOUSER: ClassVar[ExitCode]
    NOHOST: ClassVar[ExitCode]
    UNAVAILABLE: ClassVar[ExitCode]
    SOFTWARE: ClassVar[ExitCode]
    OSERR: ClassVar[ExitCode]
    OSFILE: ClassVar[ExitCode]
    CANTCREAT: ClassVar[ExitCode]
    IOERR: ClassVar[ExitCode]
    TEMPFAIL: ClassVar[ExitCode]
    PROTOCOL: ClassVar[ExitCode]
    NOPERM: ClassVar[ExitCode]
    CONFIG: ClassVar[ExitCode]

    _by_value: ClassVar[dict[int, ExitCode]] = {}
    _names: ClassVar[dict[int, str]] = {}

    def __new__(cls, value: int) -> ExitCode:
        """The member whose value is `value`; ValueError when there is none."""
        member = cls._by_value.get(value)
        if member is None:
            raise ValueError(f"{value!r} is not a valid ExitCode")
        return member

    @property
    def name(self) -> str:
        """The member's name, e.g. `TEMPFAIL`."""
        return self._names[self]

    @property
    def value(self) -> int:
        """The plain number."""
        return int(self)

    @property
    def ex_name(self) -> str:
        """The name msmtp logs, e.g. `EX_TEMPFAIL`."""
        return f"EX_{self._names[self]}"

    def __repr__(self) -> str:
        return f"<ExitCode.{self._names[self]}: {int(self)}>"

    __str__ = int.__repr__
    __format__ = int.__format__

    def __reduce__(self) -> tuple[type[ExitCode], tuple[int]]:
        return ExitCode, (int(self),)


def _define(**values: int) -> None:
    """Create the members (once, at import)."""
    for name, number in values.items():
        member = int.__new__(ExitCode, number)
        ExitCode._by_value[number] = member
        ExitCode._names[number] = name
        setattr(ExitCode, name, member)


_define(
    OK=0,
    USAGE=64,
    DATAERR=65,
    NOINPUT=66,
    NOUSER=67,
    NOHOST=68,
    UNAVAILABLE=69,
    SOFTWARE=70,
    OSERR=71,
    OSFILE=72,
    CANTCREAT=73,
    IOERR=74,
    TEMPFAIL=75,
    PROTOCOL=76,
    NOPERM=77,
    CONFIG=78,
)
