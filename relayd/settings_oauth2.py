"""relayd.toml's [oauth2.ACCOUNT] tables: provider presets, endpoints, client and scopes, checked.

Stdlib only. `relayd.settings` calls `parse_table` for each account's table; the result is an
`OAuth2` with the endpoints filled in from the preset, so nothing else knows the providers.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.settings_values import Invalid, flag, is_loopback, text

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


@dataclass(frozen=True)
class OAuth2:
    """One account's OAuth2 client: endpoints (a preset's or the file's), client, scopes.

    The client secret is never in the file: `client_secret_eval` runs a command (its first
    line), `client_secret_keyring` reads python keyring's `relayd-oauth2` / `ACCOUNT:client`.
    """

    client_id: str
    token_url: str
    authorize_url: str | None = None
    device_url: str | None = None
    scopes: tuple[str, ...] = ()
    provider: str | None = None
    tenant: str = "common"
    client_secret_eval: str | None = None
    client_secret_keyring: bool = False


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


#: key -> validator; `relayd.settings` lists these as the keys of every [oauth2.ACCOUNT].
KEYS = {
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


def parse_table(table: dict[str, object]) -> tuple[OAuth2 | None, list[tuple[str, str]]]:
    """The account's OAuth2 client from its table, and the mistakes as (key, text) pairs."""
    values: dict[str, object] = {}
    mistakes: list[tuple[str, str]] = []
    for key, value in table.items():
        validate = KEYS.get(key)
        if validate is None:
            mistakes.append((key, "unknown key"))
            continue
        try:
            values[key] = validate(value)
        except Invalid as exc:
            mistakes.append((key, str(exc)))
    if mistakes:
        return None, mistakes
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
    if mistakes:
        return None, mistakes
    return OAuth2(**values), []  # type: ignore[arg-type]
