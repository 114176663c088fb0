"""Argument checks shared by msmtprc commands and command-line options, with msmtp's rules."""

from __future__ import annotations

import os

AUTH_METHODS = (
    "plain",
    "scram-sha-1",
    "scram-sha-256",
    "cram-md5",
    "digest-md5",
    "login",
    "ntlm",
    "gssapi",
    "external",
    "oauthbearer",
    "xoauth2",
)
SYSLOG_FACILITIES = ("LOG_USER", "LOG_MAIL", *(f"LOG_LOCAL{i}" for i in range(8)))
_FINGERPRINT_SIZES = (32, 20, 16)  # SHA256, SHA1, MD5
_INT_MAX = 2**31 - 1


class BadValue(ValueError):
    """The argument is not valid for the command (msmtp's 'invalid argument')."""


def pos_int(text: str) -> int:
    """msmtp's get_pos_int: strtol(text, base 0), > 0, no trailing garbage."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = ""
    if s[:1] in "+-" and s:
        sign, s = s[0], s[1:]
    if s[:2].lower() == "0x" and len(s) > 2:
        digits, base = s[2:], 16
    elif s.startswith("0") and len(s) > 1:
        digits, base = s[1:], 8
    else:
        digits, base = s, 10
    try:
        value = int(sign + digits, base) if digits.isascii() and digits.isalnum() else -1
    except ValueError:
        value = -1
    if value <= 0 or value > _INT_MAX:
        raise BadValue(text)
    return value


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    value = pos_int(text)
    if value > 65535:
        raise BadValue(text)
    return value


def on_off(text: str, *, empty_is_on: bool = True) -> bool:
    """`on`/`off` (case-sensitive); an empty argument means `on` where msmtp allows it."""
    if text == "on" or (text == "" and empty_is_on):
        return True
    if text == "off":
        return False
    raise BadValue(text)


def auth(text: str) -> str | None:
    """`auth`: None = off, '' = choose automatically, else the upper-case method."""
    if text in ("", "on"):
        return ""
    if text == "off":
        return None
    if text in AUTH_METHODS:
        return text.upper()
    raise BadValue(text)


def protocol(text: str) -> str:
    """`protocol smtp|lmtp`."""
    if text in ("smtp", "lmtp"):
        return text
    raise BadValue(text)


def timeout(text: str) -> int:
    """`timeout off|seconds`; 0 means off."""
    return 0 if text == "off" else pos_int(text)


def dsn_notify(text: str) -> str | None:
    """`dsn_notify off|never|failure,delay,success` → the upper-case NOTIFY value or None."""
    if text == "off":
        return None
    if text != "never":
        words = text.split(",")
        allowed = {"failure", "delay", "success"}
        if not words or len(set(words)) != len(words) or not set(words) <= allowed:
            raise BadValue(text)
    return text.upper()


def dsn_return(text: str) -> str | None:
    """`dsn_return off|headers|full` → `HDRS`/`FULL` or None."""
    values = {"off": None, "headers": "HDRS", "full": "FULL"}
    if text not in values:
        raise BadValue(text)
    return values[text]


def syslog(text: str) -> str | None:
    """`syslog on|off|FACILITY`; empty means on (LOG_USER)."""
    if text in ("", "on"):
        return "LOG_USER"
    if text == "off":
        return None
    if text in SYSLOG_FACILITIES:
        return text
    raise BadValue(text)


def header_mode(text: str, *, allow_on: bool) -> str:
    """`set_*_header`: empty or `auto` → auto; `on` only for set_from_header; `off`."""
    if text in ("", "auto"):
        return "auto"
    if text == "off" or (text == "on" and allow_on):
        return text
    raise BadValue(text)


def fingerprint(text: str) -> str:
    """A SHA256/SHA1/MD5 fingerprint `AA:BB:…` (`:` or space separated), normalized upper-case."""
    for size in _FINGERPRINT_SIZES:
        if len(text) != 3 * size - 1:
            continue
        pairs = [text[3 * i : 3 * i + 2] for i in range(size)]
        seps = [text[3 * i + 2] for i in range(size - 1)]
        hexdigits = set("0123456789abcdefABCDEF")
        if all(len(p) == 2 and set(p) <= hexdigits for p in pairs) and set(seps) <= {":", " "}:
            return ":".join(p.upper() for p in pairs)
        break
    raise BadValue(text)


def expand_tilde(path: str) -> str:
    """msmtp's naive tilde expansion: a leading `~` becomes $HOME (so `~user` → `$HOMEuser`)."""
    if path.startswith("~"):
        return home_dir() + path[1:]
    return path


def home_dir() -> str:
    """$HOME, else the password database entry, as msmtp finds it."""
    home = os.environ.get("HOME")
    if home:
        return home
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir
