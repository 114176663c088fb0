"""relayd.toml's value checks: durations, sizes, counts, flags, addresses, AUTH users, OAuth2.

Stdlib only, and re imported only by the checks that need it (the sendmail path checks
`database` and `[submit] max_size` with these, and re with enum costs it 2 ms): each validator
returns the value or raises Invalid with the text the loader puts after the file and key.
"""

from __future__ import annotations

import os

from relayd import paths
from relayd.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = r"(?:\d+[smhdw])+"  # compiled on first use (re caches it), not at import


class Invalid(Exception):
    """A value failed validation; the loader adds the file and key (and `key`, a sub-key such
    as the user of `listen.users`, when the fault is in one entry of a table)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def duration(value: object) -> int:
    """Seconds from `"90s"`, `"5m"`, `"1h30m"`, `"5d"`, `"2w"` or an integer of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f'expected a duration such as "90s", "5m", "1h", "5d", not {value!r}')
    import re  # here, not at import: see the module's docstring

    if isinstance(value, int):
        seconds = value
    elif re.fullmatch(_DURATION, value.strip()):
        seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))
    else:
        raise Invalid(f'invalid duration {value!r} (use e.g. "90s", "5m", "1h", "5d")')
    if seconds <= 0:
        raise Invalid(f"duration {value!r} must be positive")
    return seconds


def duration_or_off(value: object) -> int | None:
    if value is False or value == "off":
        return None
    return duration(value)


def count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"expected a positive integer, not {value!r}")
    return value


def flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, not {value!r}")
    return value


_SIZE_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
_SIZE_UNITS.update({"KB": 1000, "MB": 1000**2, "GB": 1000**3, "K": 1 << 10, "M": 1 << 20})


def size(value: object) -> int:
    """Bytes from an integer or a string with a unit (`"100KiB"`, `"128MiB"`, `"1GB"`)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f'expected a size such as 1048576 or "128MiB", not {value!r}')
    if isinstance(value, int):
        number = value
    else:
        # NUMBER [UNIT], spaces around either (no regular expression: the sendmail path)
        given = value.strip()
        digits = next((i for i, c in enumerate(given) if not c.isdecimal()), len(given))
        unit = given[digits:].lstrip()
        if not digits or not unit.isascii() or unit.upper() not in _SIZE_UNITS:
            raise Invalid(f'invalid size {value!r} (use e.g. "100KiB", "128MiB")')
        number = int(given[:digits]) * _SIZE_UNITS[unit.upper()]
    if number <= 0:
        raise Invalid(f"size {value!r} must be positive")
    return number


def text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected a non-empty string, not {value!r}")
    return value


def database_url(value: object) -> str:
    try:
        return paths.check_database_url(text(value))
    except ConfigError as exc:
        raise Invalid(exc.message) from None


def addresses(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        if not value:
            raise Invalid("expected HOST:PORT or a non-empty list of them")
        return tuple(dict.fromkeys(address(item) for item in value))
    return (address(value),)


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names a loopback address (an IP literal, or `localhost`)."""
    import ipaddress

    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def path(value: object) -> str:
    return os.path.expanduser(text(value))


def address(value: object) -> str:
    given = text(value)
    host, sep, port = given.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"expected HOST:PORT such as 127.0.0.1:2525, not {given!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise Invalid(f"write an IPv6 address in brackets, e.g. [::1]:2525, not {given!r}")
    return given


KEYRING = "keyring"  # a `[listen] users` value: the password is in python keyring
SCRYPT = r"scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+=*)\$([A-Za-z0-9+/]+=*)"
_HOW = 'use the output of `relayd config hash-password`, or "keyring"'


def users(value: object) -> tuple[tuple[str, str], ...]:
    """`[listen] users`: user = password hash (scrypt, see `scrypt_parts`) or "keyring".

    A plaintext password is refused; no message quotes a value.
    """
    if not isinstance(value, dict) or not value:
        raise Invalid('expected a table of user = "PASSWORD HASH" (or "keyring")')
    for user, stored in value.items():
        if not isinstance(stored, str) or not stored:
            raise Invalid(f"expected a password hash string; {_HOW}", user)
        if stored != KEYRING and scrypt_parts(stored) is None:
            what = "a malformed scrypt hash" if stored.startswith("scrypt$") else "not a hash"
            raise Invalid(f"{what} (plaintext passwords are refused); {_HOW}", user)
    return tuple(sorted(value.items()))


def scrypt_parts(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, hash) of `scrypt$n=N,r=R,p=P$SALT_B64$HASH_B64`; None if malformed or
    beyond 1 GiB (n a power of two, 128·n·r·p within 2**30), or salt or hash too short."""
    import base64
    import binascii
    import re

    found = re.fullmatch(SCRYPT, stored)
    if found is None:
        return None
    n, r, p = (int(found.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or not r or not p or 128 * n * r * p > 1 << 30:
        return None
    try:
        salt, digest = (base64.b64decode(found.group(i), validate=True) for i in (4, 5))
    except binascii.Error:
        return None
    return (n, r, p, salt, digest) if len(salt) >= 8 and len(digest) >= 16 else None


_RATE = 'expected a rate such as "30/1m" or "2000/1d" (count/duration), or a list of them'


def rate(value: object) -> tuple[int, int, str]:
    """`"30/1m"` → (30, 60, "30/1m"): a count, a slash, a duration (or a unit alone: `"30/m"`)."""
    if not isinstance(value, str):
        raise Invalid(f"{_RATE}, not {value!r}")
    given = value.strip()
    number, slash, span = given.partition("/")
    if not slash or not number.strip().isdecimal() or int(number) < 1:
        raise Invalid(f"{_RATE}, not {value!r}")
    span = span.strip()
    try:
        seconds = duration(f"1{span}" if span.isalpha() else span)
    except Invalid:
        raise Invalid(f"{_RATE}, not {value!r}") from None
    return int(number), seconds, given


def rates(value: object) -> tuple[tuple[int, int, str], ...]:
    """One rate or a non-empty list of them (`[limits.ACCOUNT] messages`, `recipients`)."""
    if isinstance(value, list):
        if not value:
            raise Invalid(f"{_RATE}, not an empty list")
        return tuple(rate(item) for item in value)
    return (rate(value),)


# --- [oauth2.ACCOUNT] ----------------------------------------------------------------------------

#: The providers relayd knows: their endpoints and the scope that allows SMTP. `{tenant}` is
#: Microsoft's directory ("common" for any account, "consumers", "organizations" or an id).
PRESETS: dict[str, dict[str, str]] = {
    "google": {
        "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_url": "https://oauth2.googleapis.com/token",
        "device_url": "https://oauth2.googleapis.com/device/code",
        "scopes": "https://mail.google.com/",
    },
    "microsoft": {
        "authorize_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "device_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        "scopes": "https://outlook.office.com/SMTP.Send offline_access",
    },
}


def url(value: object) -> str:
    """An https URL, or http on a loopback address (a local test server)."""
    found = text(value).strip()
    scheme, _, rest = found.partition("://")
    host = rest.split("/", 1)[0]
    if scheme == "https" and host:
        return found
    if scheme == "http" and host and is_loopback(host if ":" in host else host + ":80"):
        return found
    raise Invalid(f"expected an https:// URL, not {found!r}")


def scopes(value: object) -> tuple[str, ...]:
    """A list of scopes, or one string of them separated by spaces."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(s, str) and s.strip() for s in value):
        return tuple(s.strip() for s in value)
    raise Invalid(f"expected a list of scopes, not {value!r}")


def _provider(value: object) -> str:
    name = text(value)
    if name not in PRESETS:
        raise Invalid(f"unknown provider {name!r} (known: {', '.join(PRESETS)})")
    return name


def _refused(value: object) -> str:
    raise Invalid(
        "a client secret is never written in the file: use client_secret_eval or"
        " client_secret_keyring"
    )


#: key -> validator of every [oauth2.ACCOUNT] table.
OAUTH2_KEYS = {
    "provider": _provider,
    "tenant": text,
    "token_url": url,
    "authorize_url": url,
    "device_url": url,
    "client_id": text,
    "client_secret_eval": text,
    "client_secret_keyring": flag,
    "scopes": scopes,
    "client_secret": _refused,
}


def oauth2_table(table: dict[str, object]) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """The values of an [oauth2.ACCOUNT] table with the preset's endpoints filled in, and the
    mistakes as (key, text) pairs (then the values are incomplete)."""
    values: dict[str, object] = {}
    mistakes: list[tuple[str, str]] = []
    for key, value in table.items():
        validate = OAUTH2_KEYS.get(key)
        if validate is None:
            mistakes.append((key, "unknown key"))
            continue
        try:
            values[key] = validate(value)
        except Invalid as exc:
            mistakes.append((key, str(exc)))
    if mistakes:
        return values, mistakes
    provider = values.get("provider")
    if isinstance(provider, str):
        tenant = str(values.get("tenant", "common"))
        for key, preset in PRESETS[provider].items():
            filled = preset.format(tenant=tenant)
            values.setdefault(key, scopes(filled) if key == "scopes" else filled)
    if not values.get("client_id"):
        mistakes.append(("client_id", "missing: the client id the provider gave the app"))
    if not values.get("token_url"):
        mistakes.append(("token_url", "missing: set provider, or token_url"))
    if not values.get("authorize_url") and not values.get("device_url"):
        mistakes.append(("authorize_url", "missing: set provider, authorize_url or device_url"))
    if "client_secret_eval" in values and values.get("client_secret_keyring"):
        mistakes.append(("client_secret_eval", "set client_secret_eval or client_secret_keyring"))
    return values, mistakes
