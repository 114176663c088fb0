"""A getopt_long work-alike with GNU permutation, abbreviations and glibc's error texts."""

from __future__ import annotations

from relayd.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds at import: this is the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import ClassVar


class Named:
    """A named constant of a closed set: `enum` would cost relayd-sendmail 17 M instructions."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class Arg(Named):
    """Whether an option takes an argument (getopt's has_arg)."""

    __slots__ = ()
    NONE: ClassVar[Arg]
    REQUIRED: ClassVar[Arg]
    OPTIONAL: ClassVar[Arg]


Arg.NONE = Arg("none")
Arg.REQUIRED = Arg("required")
Arg.OPTIONAL = Arg("optional")


class Parsed:
    """One option occurrence: its canonical name (`-x` or `--long`) and its argument."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str | None) -> None:
        self.name = name
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Parsed) and (self.name, self.value) == (other.name, other.value)

    def __hash__(self) -> int:
        return hash((self.name, self.value))

    def __repr__(self) -> str:
        return f"Parsed({self.name!r}, {self.value!r})"


def parse_short_spec(spec: str) -> dict[str, Arg]:
    """`ab:c::` → {'a': NONE, 'b': REQUIRED, 'c': OPTIONAL}."""
    table: dict[str, Arg] = {}
    i = 0
    while i < len(spec):
        letter = spec[i]
        colons = 0
        while i + 1 + colons < len(spec) and spec[i + 1 + colons] == ":":
            colons += 1
        table[letter] = (Arg.NONE, Arg.REQUIRED, Arg.OPTIONAL)[min(colons, 2)]
        i += 1 + colons
    return table


def getopt_long(
    argv: Sequence[str], short: dict[str, Arg], long: dict[str, Arg]
) -> Iterator[Parsed]:
    """Parse like glibc getopt_long with permutation, lazily, so errors come in argv order.

    Options are yielded with their canonical name (`-x` or `--long`); operands (non-options,
    and everything after `--`) are yielded with the name "".
    """
    items = iter(argv)
    for item in items:
        if item == "--":
            yield from (Parsed("", rest) for rest in items)
        elif item.startswith("--"):
            yield _long_option(item, items, long)
        elif item.startswith("-") and item != "-":
            yield from _short_cluster(item, items, short)
        else:
            yield Parsed("", item)


def _long_option(item: str, rest: Iterator[str], table: dict[str, Arg]) -> Parsed:
    body = item[2:]
    name, eq, value = body.partition("=")
    matches = [name] if name in table else [n for n in table if n.startswith(name)]
    if not matches:
        raise UsageError(f"unrecognized option '{item}'")
    if len(matches) > 1:
        choices = " ".join(f"'--{m}'" for m in matches)
        raise UsageError(f"option '{item}' is ambiguous; possibilities: {choices}")
    full = matches[0]
    kind = table[full]
    if eq:
        if kind is Arg.NONE:
            raise UsageError(f"option '--{full}' doesn't allow an argument")
        return Parsed(f"--{full}", value)
    if kind is Arg.REQUIRED:
        following = next(rest, None)
        if following is None:
            raise UsageError(f"option '--{full}' requires an argument")
        return Parsed(f"--{full}", following)
    return Parsed(f"--{full}", None)


def _short_cluster(item: str, rest: Iterator[str], table: dict[str, Arg]) -> Iterator[Parsed]:
    i = 1
    while i < len(item):
        letter = item[i]
        kind = table.get(letter)
        if kind is None:
            raise UsageError(f"invalid option -- '{letter}'")
        tail = item[i + 1 :]
        if kind is Arg.NONE:
            yield Parsed(f"-{letter}", None)
            i += 1
            continue
        if tail:
            yield Parsed(f"-{letter}", tail)
        elif kind is Arg.REQUIRED:
            following = next(rest, None)
            if following is None:
                raise UsageError(f"option requires an argument -- '{letter}'")
            yield Parsed(f"-{letter}", following)
        else:
            yield Parsed(f"-{letter}", None)
        break
