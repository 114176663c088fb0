"""msmtp's netrc parser and search (netrc.c, from fetchmail)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at import
if TYPE_CHECKING:
    from collections.abc import Iterable

_SPACE = " \t\n\v\f\r"  # C isspace() in the C locale
_KEYWORDS = {
    "login": "login",
    "user": "login",
    "password": "password",
    "passwd": "password",
    "machine": "machine",
    "macdef": "macdef",
    "account": "account",
}


class NetrcEntry:
    """One `machine` (host set) or `default` (host None) entry."""

    __slots__ = ("host", "login", "password")

    def __init__(self) -> None:
        self.host: str | None = None
        self.login: str | None = None
        self.password: str | None = None

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "<hidden>"
        return f"NetrcEntry(host={self.host!r}, login={self.login!r}, password={shown})"


def _netrc_token(line: str, pos: int) -> tuple[str, int]:
    """The token starting at `pos` and the position after it: quotes (" or ') group and vanish."""
    out: list[str] = []
    quote = ""
    while pos < len(line) and (quote or line[pos] not in _SPACE):
        char = line[pos]
        if quote:
            if char == quote:
                quote = ""
            else:
                out.append(char)
        elif char in "\"'":
            quote = char
        else:
            out.append(char)
        pos += 1
    return "".join(out), pos


def parse_netrc(text: str) -> list[NetrcEntry]:
    """The entries of a netrc file, in file order, as msmtp's parser keeps them.

    Entries without a login are dropped; `default` starts an entry with no host (never matched);
    keywords `login`/`user`, `password`/`passwd`, `account` (ignored), `macdef` (the rest of its
    line and the following lines up to a blank line are skipped); `#` at the start of a token
    ends the line; a keyword's value may be on the next line. Unknown tokens are ignored.
    """
    entries: list[NetrcEntry] = []
    current: NetrcEntry | None = None
    expecting = ""  # the keyword whose value comes next; "macdef" while skipping a macro

    def finish() -> NetrcEntry:
        if current is not None and current.login is not None:
            entries.append(current)
        return NetrcEntry()

    for raw in text.split("\n"):
        line = raw.rstrip(_SPACE)
        if not line:
            if expecting == "macdef":
                expecting = ""
            continue
        pos = 0
        while pos < len(line) and expecting != "macdef":
            while pos < len(line) and line[pos] in _SPACE:
                pos += 1
            if pos >= len(line) or line[pos] == "#":
                break
            token, pos = _netrc_token(line, pos)
            if expecting:
                if expecting == "machine":
                    current = finish()
                    current.host = token
                elif current is not None and expecting == "login":
                    current.login = token
                elif current is not None and expecting == "password":
                    current.password = token
                expecting = ""  # a value for account, or one before any machine: ignored
            elif token == "default":
                current = finish()
            else:
                expecting = _KEYWORDS.get(token, "")
    finish()
    return entries


def search_netrc(entries: Iterable[NetrcEntry], host: str, user: str) -> NetrcEntry | None:
    """The first entry for `host` with login `user` (exact, case-sensitive), as msmtp searches."""
    return next((e for e in entries if e.host == host and e.login == user), None)


def netrc_password(path: str, host: str, user: str) -> str | None:
    """The password of the first matching entry in the netrc file `path`, or None.

    An unreadable or missing file is no answer; its permissions are not checked (msmtp does
    not). A first match without a password is no answer from this file.
    """
    try:
        with open(path, "rb") as fp:
            data = fp.read()
    except OSError:
        return None
    entry = search_netrc(parse_netrc(data.decode("utf-8", "surrogateescape")), host, user)
    return entry.password if entry is not None else None
