"""msmtp's aliases file: local recipient names expanded to addresses (msmtp `aliases` command)."""

from __future__ import annotations

import os

from relayd.errors import ConfigError

TYPE_CHECKING = False  # keep typing-only imports off the hot path
if TYPE_CHECKING:
    from collections.abc import Sequence

# Limits of msmtp's reader (src/aliases.c), kept so a file one of them rejects the other does too.
_MAX_LINE = 511  # bytes per line, newline included
_MAX_DEPTH = 16  # nested expansions
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the C locale


def _is_alias(name: str) -> bool:
    return bool(name) and "@" not in name


def _parse(text: bytes) -> dict[str, list[str]]:
    """Parse the file; errors as msmtp words them (`line N: …`, raised as ValueError)."""
    aliases: dict[str, list[str]] = {}
    lines = [line + b"\n" for line in text.split(b"\n")]
    lines[-1] = lines[-1][:-1]  # the text after the last newline has none
    for number, raw_line in enumerate(lines, start=1):
        if not raw_line:
            break
        if len(raw_line) >= _MAX_LINE:
            raise ValueError(f"line {number}: longer than {_MAX_LINE} characters")
        line = raw_line.decode("utf-8", "surrogateescape").split("#", 1)[0].strip(_C_SPACE)
        if not line:
            continue
        parts = line.split(":")
        if len(parts) != 2:
            raise ValueError(f"line {number}: single ':' delimiter expected")
        name = parts[0].strip(_C_SPACE)
        if not _is_alias(name):
            raise ValueError(f"line {number}: invalid alias '{name}'")
        if name in aliases:
            raise ValueError(f"line {number}: duplicate alias '{name}'")
        # msmtp keeps empty entries (`a: x@y,,z@w`) and sends RCPT TO:<>; relayd drops them.
        entries = (entry.strip(_C_SPACE) for entry in parts[1].split(","))
        aliases[name] = [entry for entry in entries if entry]
    return aliases


def _expand(name: str, aliases: dict[str, list[str]], depth: int, out: list[str]) -> bool:
    """Append the expansion of `name`; False when nesting goes deeper than msmtp allows."""
    if depth > _MAX_DEPTH:
        return False
    entries = aliases.get(name)
    if entries is None:
        entries = aliases.get("default")
    if entries is None:
        out.append(name)
        return True
    for entry in entries:
        if not _is_alias(entry):
            out.append(entry)
        elif not _expand(entry, aliases, depth + 1, out):
            return False
    return True


def expand_aliases(recipients: Sequence[str], aliases_path: str | os.PathLike[str]) -> list[str]:
    """Replace each recipient without `@` by its expansion from the aliases file.

    As msmtp: `name: a@x, b@y` lines, `#` comments, `default:` catches unknown names,
    expansions nest (at most 16 deep), and the file is read only if some recipient lacks `@`.
    Unlike msmtp 1.8.23, expansions keep the file's order (msmtp reverses them), the recipient
    after an expanded alias is expanded too (msmtp skips it), and empty entries are dropped.
    Errors → ConfigError `FILE: reason`, as msmtp prints them (exit 78).
    """
    if not any(_is_alias(recipient) for recipient in recipients):
        return list(recipients)
    path = os.fspath(aliases_path)
    try:
        with open(path, "rb") as file:
            text = file.read()
    except IsADirectoryError:
        raise ConfigError(f"{path}: input error") from None  # msmtp opens it, then fails to read
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    try:
        aliases = _parse(text)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    expanded: list[str] = []
    for recipient in recipients:
        if not _is_alias(recipient):
            expanded.append(recipient)
        elif not _expand(recipient, aliases, 0, expanded):
            raise ConfigError(f"{path}: Too many redirects when expanding alias {recipient}.")
    return expanded
