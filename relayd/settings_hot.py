"""The relayd.toml keys a submission needs (`database`, `[submit] max_size`), read once a process.

On the sendmail hot path: no dataclasses, no validation of the keys a submission does not use
(the daemon and `relayd config check` check the whole file through `relayd.settings`), and no
tomllib (~7 ms to import) for a file written in plain `key = value` lines: a small scanner reads
those (dotted table headers and one-line arrays of plain strings included, as `[limits.work]`
and `messages = ["30/1m", "2000/1d"]`), and anything it does not know for certain (other
arrays, inline tables, dotted or quoted keys, escapes, multi-line strings, a repeated key) goes
to tomllib, so the values and the syntax errors are tomllib's. The values it does read are
checked as `relayd.settings` checks them, with the same one-line errors.
"""

from __future__ import annotations

import os

from relayd import paths
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Mapping

# The hot path's keys: (table, key) with "" for the top level.
DATABASE = ("", "database")
MAX_SIZE = ("submit", "max_size")


class HotSettings:
    """What a submission takes from relayd.toml: the file, `database` and `[submit] max_size`
    as checked values (None: the file does not set it)."""

    __slots__ = ("database", "file", "max_size")

    def __init__(self, file: str | None, database: str | None, max_size: int | None) -> None:
        self.file, self.database, self.max_size = file, database, max_size


_cache: dict[tuple[str, int, int, int], HotSettings] = {}


def load(environ: Mapping[str, str] | None = None) -> HotSettings:
    """The hot-path settings of the relayd.toml `paths.settings_file()` finds; the file is read
    once a process (again only if it changed)."""
    env = os.environ if environ is None else environ
    path = paths.settings_file(env)[0]
    if path is None:
        return HotSettings(None, None, None)
    try:
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _cache:
        return _cache[key]
    found = _parse(read(path), path)
    if key is not None:
        _cache.clear()
        _cache[key] = found
    return found


def database_url(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The queue: `$RELAYD_DATABASE_URL`, else relayd.toml's `database`, else the default."""
    env = os.environ if environ is None else environ
    found = load(env)  # a broken `database` in the file is reported even when the variable wins
    override = env.get("RELAYD_DATABASE_URL")
    if override:
        return database_override(override)
    if found.database is not None:
        return found.database
    return paths.default_database_url(env, uid)


def database_override(url: str) -> str:
    """The value of $RELAYD_DATABASE_URL if it can name a queue, else ConfigError naming it."""
    try:
        return paths.check_database_url(url)
    except ConfigError as exc:
        raise ConfigError(f"RELAYD_DATABASE_URL: {exc.message}") from None


def read(path: str) -> str:
    """The text of the relayd.toml at `path`; ConfigError (EX_IOERR) saying why if unreadable."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read: {reason}", ExitCode.IOERR) from None


def toml_error(message: str) -> tuple[str, int | None]:
    """tomllib's "… (at line 3, column 5)" as msmtp-style ("…", 3); (message, None) without."""
    text, sep, where = message.rpartition(" (at line ")
    line, comma, column = where.removesuffix(")").partition(", column ")
    if not (sep and comma and where.endswith(")") and line.isdigit() and column.isdigit()):
        return message, None
    return f"{text[:1].lower()}{text[1:]}", int(line)


def _parse(text: str, path: str) -> HotSettings:
    document = _scan(text)
    if document is None:
        document = _toml(text, path)
    table = document.get("submit")
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: submit: expected a table ([submit])")
    database = document.get("database")
    size = None if table is None else table.get("max_size")
    from relayd import settings_values  # only for a file that sets one of them

    try:
        url = None if database is None else settings_values.database_url(database)
    except settings_values.Invalid as exc:
        raise ConfigError(f"{path}: database: {exc}") from None
    try:
        limit = None if size is None else settings_values.size(size)
    except settings_values.Invalid as exc:
        raise ConfigError(f"{path}: submit.max_size: {exc}") from None
    return HotSettings(path, url, limit)


def _toml(text: str, path: str) -> dict[str, object]:
    import tomllib  # only for a file the scanner does not read for certain

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = toml_error(str(exc))
        where = "" if line is None else f"line {line}: "
        raise ConfigError(f"{path}: {where}{message}") from None


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _bare(key: str) -> bool:
    return bool(key) and _BARE.issuperset(key)


def _scan(text: str) -> dict[str, object] | None:
    """The document of a relayd.toml made only of comments, `[table]` headers and `key =
    value` lines with a bare key and a one-line string, integer or boolean value; None for
    anything else (tomllib decides then)."""
    document: dict[str, object] = {}
    table = document
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if "\r" in line or not _printable(line):
            return None
        line = line.strip(" \t")
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            found = _table(document, line)
            if found is None:
                return None
            table = found
            continue
        key, equals, rest = line.partition("=")
        key = key.strip(" \t")
        if not equals or not _bare(key) or key in table:
            return None
        value = _value(rest.strip(" \t"))
        if value is None:
            return None
        table[key] = value
    return document


def _table(document: dict[str, object], line: str) -> dict[str, object] | None:
    """The new table a `[name]` or `[dotted.name]` header line starts in `document`; None when
    the scanner cannot be sure (an array of tables, a table defined again or over a value, a
    super-table defined after its sub-table)."""
    if line.startswith("[["):
        return None
    name, close, rest = line[1:].partition("]")
    parts = [part.strip(" \t") for part in name.split(".")]
    if not close or not all(map(_bare, parts)) or not _is_comment(rest):
        return None
    parent = document
    for part in parts[:-1]:
        child = parent.setdefault(part, {})  # a super-table, defined by this header
        if not isinstance(child, dict):
            return None
        parent = child
    if parts[-1] in parent:
        return None
    table: dict[str, object] = {}
    parent[parts[-1]] = table
    return table


def _printable(line: str) -> bool:
    """No control characters but tab (TOML allows none, in comments or strings)."""
    return line.isprintable() or all(c == "\t" or (c >= " " and c != "\x7f") for c in line)


def _is_comment(rest: str) -> bool:
    rest = rest.strip(" \t")
    return not rest or rest[0] == "#"


def _value(text: str) -> str | int | bool | list[str] | None:
    """A one-line TOML value the scanner knows for certain, with an optional comment after it;
    None for any other."""
    if text[:1] == "[":
        return _strings(text)
    if text[:1] in ('"', "'"):
        quote = text[0]
        body, closed, rest = text[1:].partition(quote)
        if not closed or (quote == '"' and "\\" in body) or not _is_comment(rest):
            return None
        return body
    word, _, rest = text.partition("#")
    word = word.strip(" \t")
    if rest and not word:
        return None
    if word in ("true", "false"):
        return word == "true"
    digits = word[1:] if word[:1] in "+-" else word
    if digits.isdigit() and digits.isascii() and (digits == "0" or digits[0] != "0"):
        return int(word)
    return None


def _strings(text: str) -> list[str] | None:
    """A one-line array of one-line strings without escapes (`["30/1m", '1d']`, a trailing
    comma allowed), with an optional comment after it; None for any other."""
    items: list[str] = []
    at = 1
    while True:
        at = _skip_blanks(text, at)
        if text[at : at + 1] == "]":
            break
        quote = text[at : at + 1]
        if quote not in ('"', "'"):
            return None
        end = text.find(quote, at + 1)
        if end < 0 or (quote == '"' and "\\" in text[at + 1 : end]):
            return None
        items.append(text[at + 1 : end])
        at = _skip_blanks(text, end + 1)
        if text[at : at + 1] == ",":
            at += 1
        elif text[at : at + 1] != "]":
            return None
    return items if _is_comment(text[at + 1 :]) else None


def _skip_blanks(text: str, at: int) -> int:
    while text[at : at + 1] in (" ", "\t"):
        at += 1
    return at
