"""Where the PostgreSQL fast path connects: a `postgresql+psycopg://` URL and libpq's environment.

Read as SQLAlchemy and libpq (under psycopg) read them, for the settings `pgwire` handles: user,
password, host or Unix socket directory (the URL's host or a `host=` query parameter), port,
database, `sslmode`, `sslrootcert`, `options`, `application_name`, and the PGHOST, PGPORT,
PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGOPTIONS, PGAPPNAME variables, and
the password file (PGPASSFILE or ~/.pgpass). Anything else (several hosts, `hostaddr`, client
certificates, a service file, GSSAPI, other PG* variables…) raises Unsupported and the
submission goes through SQLAlchemy and psycopg, which handle all of libpq. No `urllib.parse`,
no `re`: both cost milliseconds on this path.
"""

from __future__ import annotations

import os

SCHEME = "postgresql+psycopg"
# libpq's compiled-in socket directory (psycopg's wheels and Debian's libpq agree).
DEFAULT_SOCKET_DIR = "/var/run/postgresql"
DEFAULT_PORT = 5432
_QUERY_KEYS = frozenset(
    {"host", "sslmode", "sslrootcert", "options", "application_name", "connect_timeout"}
)
# connect_timeout is accepted and ignored: SQLAlchemy's path overrides it with the lock timeout.
_ENV_KEYS = {
    "PGHOST": "host",
    "PGPORT": "port",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGDATABASE": "dbname",
    "PGSSLMODE": "sslmode",
    "PGSSLROOTCERT": "sslrootcert",
    "PGOPTIONS": "options",
    "PGAPPNAME": "application_name",
    "PGCONNECT_TIMEOUT": "",
    "PGPASSFILE": "",  # read by `password_from_file`
}
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class Unsupported(Exception):
    """The URL or environment asks for what only psycopg does: take the SQLAlchemy path."""


class Error(Exception):
    """The server cannot be reached, or refused us, or failed: try again later (str: why)."""


class Target:
    """One server to connect to, as libpq would resolve it (`where` names it, no password)."""

    __slots__ = (
        "application_name",
        "dbname",
        "host",
        "options",
        "password",
        "port",
        "sslmode",
        "sslrootcert",
        "user",
        "where",
    )

    def __init__(self, settings: dict[str, str], where: str) -> None:
        self.where = where
        self.host = settings.get("host") or DEFAULT_SOCKET_DIR
        if "," in self.host or self.host.startswith("@"):
            raise Unsupported("several hosts, or an abstract socket")
        port = settings.get("port") or str(DEFAULT_PORT)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise Unsupported("not a port number")
        self.port = int(port)
        self.user = settings.get("user") or _login_name()
        self.dbname = settings.get("dbname") or self.user
        self.password = settings.get("password")
        self.sslmode = settings.get("sslmode") or "prefer"
        if self.sslmode not in SSLMODES:
            raise Unsupported(f"sslmode {self.sslmode}")
        self.sslrootcert = settings.get("sslrootcert")
        self.options = settings.get("options")
        self.application_name = settings.get("application_name")

    @property
    def unix_socket(self) -> str | None:
        """The socket's path when the host is a directory (libpq never uses TLS there)."""
        if self.host.startswith("/"):
            return f"{self.host}/.s.PGSQL.{self.port}"
        return None


def _login_name() -> str:
    import pwd  # a builtin module: already loaded by the submission

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise Unsupported("no user name") from None


def unquote(text: str) -> str:
    """Percent-decoding as urllib.parse.unquote does it (UTF-8; a bad escape stays as it is)."""
    if "%" not in text:
        return text
    out, start = bytearray(), 0
    while (at := text.find("%", start)) >= 0:
        out += text[start:at].encode()
        pair = text[at + 1 : at + 3]
        if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            out.append(int(pair, 16))
            start = at + 3
        else:
            out += b"%"
            start = at + 1
    out += text[start:].encode()
    return out.decode("utf-8", "replace")


def _query(text: str) -> dict[str, str]:
    """The query string's parameters as SQLAlchemy reads them (urllib's parse_qsl: blank values
    dropped); a repeated one (several hosts) is Unsupported."""
    found: dict[str, str] = {}
    for field in text.split("&"):
        key, equals, value = field.partition("=")
        if not equals or not value:
            continue
        key, value = unquote(key.replace("+", " ")), unquote(value.replace("+", " "))
        if key in found or key not in _QUERY_KEYS:
            raise Unsupported(f"URL parameter {key}")
        found[key] = value
    return found


def parse_url(url: str) -> tuple[dict[str, str], str]:
    """The settings a `postgresql+psycopg://` URL gives (libpq's names), and the URL with its
    password hidden. Unsupported for other schemes and for URLs this parser is not sure of."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != SCHEME:
        raise Unsupported(f"scheme {scheme}")
    rest, _, query = rest.partition("?")
    settings: dict[str, str] = {}
    shown = url
    if rest.count("@") > 1:
        raise Unsupported("an @ in the user name")
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if "/" in user:
            raise Unsupported("a / in the user name")
        if user:
            settings["user"] = unquote(user)
        if colon:
            settings["password"] = unquote(password)
            shown = f"{scheme}://{user}:***@{hostpart}" + (f"?{query}" if query else "")
    authority, _, database = hostpart.partition("/")
    if database:
        settings["dbname"] = unquote(database)
    host, port = authority, ""
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise Unsupported("an IPv6 address")
        port = port[1:]
    elif authority.count(":") > 1:
        raise Unsupported("a host with colons")
    else:
        host, _, port = authority.partition(":")
    if host:
        settings["host"] = host
    if port:
        settings["port"] = port
    for key, value in _query(query).items():
        if key == "host" and ":" in value and not value.startswith("/"):
            raise Unsupported("host:port in the query")  # SQLAlchemy's multi-host form
        settings[key] = value
    return settings, shown


def target(url: str, environ: dict[str, str] | os._Environ[str] | None = None) -> Target:
    """The server `url` names, with libpq's environment variables for what it leaves out."""
    env = os.environ if environ is None else environ
    settings, shown = parse_url(url)
    for name, value in env.items():
        if not name.startswith("PG"):
            continue
        if name not in _ENV_KEYS:
            raise Unsupported(f"environment variable {name}")
        key = _ENV_KEYS[name]
        if key and value and key not in settings:
            settings[key] = value
    return Target(settings, shown)


def _pgpass_fields(line: str) -> list[str]:
    """A password file line's fields: `:` separates them, a backslash escapes `:` or itself."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def password_from_file(target: Target) -> str | None:
    """The password libpq would read for `target` from PGPASSFILE or ~/.pgpass (ignored, as
    libpq ignores it, when others may read it); None when there is none."""
    path = os.environ.get("PGPASSFILE") or os.path.expanduser("~/.pgpass")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            if os.fstat(handle.fileno()).st_mode & 0o077:
                return None
            lines = handle.read().splitlines()
    except OSError:
        return None
    host = "localhost" if target.host == DEFAULT_SOCKET_DIR else target.host
    wanted = (host, str(target.port), target.dbname, target.user)
    for line in lines:
        if not line or line.startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields, wanted, strict=False)):
            return fields[4]
    return None
