"""msmtpq's `.msmtp` files: its space-joined msmtp arguments read back into an argv where
that is unambiguous, and refused with the reason where it is not.

msmtpq writes the arguments with `echo "$@"` (one line, joined by single spaces), so spaces
inside an argument are lost: `-F "Alice Smith" you@x` is stored as `-F Alice Smith you@x`, and
msmtpq itself replays it word-split, sending to a recipient `Smith`. Reading it back:

* words without `@` or `<` right after an option whose value is free text (a name, a command,
  a file name: TEXT_OPTIONS) belong to that value (`-F Alice Smith` is one name);
* words before a `<…>` address belong to it (`Alice Smith <a@x>` is one recipient);
* a lone word without `@` is a local recipient (msmtp's aliases), unless the line has a
  free-text option, where it may be the end of that value: then the line is ambiguous;
* a free-text value followed by a `<…>` address, an empty word (two spaces in a row) among the
  recipients, or no recipient left once words were joined to a value: ambiguous.
"""

from __future__ import annotations

import shlex

from relayd.errors import DataError
from relayd.submission.cmdline import LONG_OPTIONS, SHORT_OPTIONS, Invocation, parse
from relayd.submission.getopt import getopt_long

# Options (as getopt names them) whose value may hold spaces.
TEXT_OPTIONS = frozenset(
    {
        "-F",
        "-C",
        "--file",
        "-X",
        "--logfile",
        "--passwordeval",
        "--logfile-time-format",
        "--aliases",
        "--tls-trust-file",
        "--tls-crl-file",
        "--tls-key-file",
        "--tls-cert-file",
        "--socket",
        "--user",
    }
)
_NEXT = "\0next"  # stands for the following word: it shows whether an option takes it
_ODD_CHARACTERS = '"(),;:\\'  # in a lone word: part of a split display name or comment


class Arguments:
    """An msmtpq argument line read back: the argv, its parse, and whether words were joined."""

    def __init__(self, argv: list[str], invocation: Invocation, joined: bool) -> None:
        self.argv, self.invocation, self.joined = argv, invocation, joined

    def shown(self) -> str:
        """The argv as a shell would need it typed."""
        return shlex.join(self.argv)


class Ambiguous(DataError):
    """An argument line that cannot be split back with certainty (exit 65)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"ambiguous arguments: {why}")


def _option(word: str, following: str | None) -> tuple[str | None, bool]:
    """(the name of the option in `word` that takes a value, or None; whether it takes the
    following word). A bad option raises UsageError as relayd-sendmail would."""
    name: str | None = None
    takes_next = False
    for parsed in getopt_long([word, _NEXT], SHORT_OPTIONS, LONG_OPTIONS):
        if parsed.name == "":
            break  # the stand-in came back as an operand: nothing took it
        name = parsed.name if parsed.value is not None else None
        takes_next = parsed.value == _NEXT
    return name, takes_next and following is not None


def _bare(word: str) -> bool:
    return "@" not in word and "<" not in word


def split_line(line: str) -> Arguments:
    """The argv msmtpq's `echo "$@"` wrote as `line`; Ambiguous where it cannot be known,
    UsageError for an option relayd-sendmail refuses."""
    text = line.removesuffix("\n")
    words = text.split(" ") if text else []
    argv: list[str] = []
    value: int | None = None  # argv index of a free-text value that bare words extend
    option = ""  # the option whose value that is
    run: int | None = None  # argv index where a run of bare recipient words starts
    joined = has_text = False
    options = True
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if options and word == "--":
            argv.append(word)
            options, value, run = False, None, None
        elif options and word.startswith("-") and word != "-":
            following = words[index] if index < len(words) else None
            name, takes_next = _option(word, following)
            argv.append(word)
            if takes_next and following is not None:
                argv.append(following)
                index += 1
            text_value = name in TEXT_OPTIONS
            has_text = has_text or text_value
            value, run = (len(argv) - 1 if text_value else None), None
            option = name or ""
        elif value is not None and _bare(word):
            argv[value] += " " + word
            joined = True
        elif value is not None and "<" in word:
            raise Ambiguous(
                f"cannot tell where the value of {option} ends and {word!r}'s name begins"
            )
        elif "<" in word and run is not None:
            argv[run:] = [" ".join([*argv[run:], word])]
            run, joined = None, True
        else:
            value = None
            argv.append(word)
            run = (run if run is not None else len(argv) - 1) if _bare(word) else None
    invocation = parse(argv)
    _check_recipients(argv, invocation, has_text=has_text, joined=joined)
    return Arguments(argv, invocation, joined)


def _check_recipients(argv: list[str], inv: Invocation, *, has_text: bool, joined: bool) -> None:
    for recipient in inv.recipients:
        if recipient == "":
            raise Ambiguous("an empty recipient word (two spaces in a row)")
        if not _bare(recipient):
            continue
        if has_text:
            raise Ambiguous(
                f"{recipient!r} may be a recipient or the end of a free-text option's value"
            )
        if any(char in recipient for char in _ODD_CHARACTERS):
            raise Ambiguous(f"{recipient!r} looks like part of a split name or comment")
    if joined and not inv.recipients and not inv.read_recipients:
        raise Ambiguous(
            f"no recipient left in {shlex.join(argv)!r}: the last word may have been one"
        )
