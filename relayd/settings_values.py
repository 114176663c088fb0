"""relayd.toml's value checks: durations, sizes, counts, flags, addresses, AUTH users.

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
