"""The Secret Service and python keyring lookups, each in a thread with a deadline."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs milliseconds at import
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, Protocol, TypeVar

    T = TypeVar("T")

    class SecretItemLike(Protocol):
        """What relayd uses of a `secretstorage.Item`."""

        def is_locked(self) -> bool: ...

        def unlock(self, timeout: float | None = None) -> bool: ...

        def get_secret(self) -> bytes: ...

    class SecretStorageLike(Protocol):
        """What relayd uses of the `secretstorage` module (tests inject a fake)."""

        def dbus_init(self) -> Any: ...

        def search_items(
            self, connection: Any, attributes: dict[str, str]
        ) -> Iterable[SecretItemLike]: ...


SERVICE = "smtp"  # msmtp's password_service_smtp

_NOTE_LIMIT = 200


# --- deadlines ---------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """An exception for a note: its type and message, never a decoded secret's bytes."""
    if isinstance(exc, UnicodeError):
        return type(exc).__name__  # its message quotes bytes of the data it failed on
    text = str(exc)
    if len(text) > _NOTE_LIMIT:
        text = text[:_NOTE_LIMIT] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_with_deadline(func: Callable[[], T], timeout: float, name: str) -> tuple[T | None, str]:
    """`func()` in a daemon thread: (value, "") or (None, why) when it raised or overran.

    A thread that overruns is abandoned (a daemon thread does not hold up interpreter exit).
    """
    import threading

    outcome: list[tuple[T | None, BaseException | None]] = []

    def target() -> None:
        try:
            outcome.append((func(), None))
        except BaseException as exc:  # reported to the caller, who moves on
            outcome.append((None, exc))

    thread = threading.Thread(target=target, name=f"relayd-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return None, f"timed out after {timeout:g}s"
    value, error = outcome[0]
    if error is not None:
        return None, _describe(error)
    return value, ""


# --- Secret Service ----------------------------------------------------------------------------


def secret_service_queries(host: str, user: str) -> tuple[dict[str, str], ...]:
    """The attribute sets msmtp's libsecret lookups use, in order."""
    return (
        {"host": host, "service": SERVICE, "user": user},  # de.marlam.msmtp.password
        {"user": user, "protocol": SERVICE, "server": host},  # compat network schema
    )


def session_bus_address() -> str | None:
    """The session bus address jeepney (secretstorage's D-Bus library) connects to."""
    return os.environ.get("DBUS_SESSION_BUS_ADDRESS") or None


def search_secret_service(
    module: SecretStorageLike,
    host: str,
    user: str,
    *,
    unlock: bool,
    unlock_timeout: float | None,
    notes: list[str],
) -> str | None:
    """The first secret matching msmtp's attributes, or None.

    An unlocked item is preferred; a locked one is unlocked only when `unlock` (that may show
    the desktop's unlock prompt). A dismissed prompt ends the Secret Service lookup.
    """
    connection = module.dbus_init()
    try:
        for attributes in secret_service_queries(host, user):
            items = list(module.search_items(connection, attributes))
            if not items:
                continue
            item = next((i for i in items if not i.is_locked()), None)
            if item is None:
                if not unlock:
                    notes.append("secret service: matching item is locked")
                    continue
                if items[0].unlock(unlock_timeout):
                    notes.append("secret service: unlock prompt dismissed")
                    return None
                item = items[0]
            try:
                return item.get_secret().decode("utf-8")
            except UnicodeDecodeError:
                notes.append("secret service: secret is not UTF-8 text")
                continue
        return None
    finally:
        close = getattr(connection, "close", None)
        if callable(close):
            close()


def secret_service_password(
    host: str,
    user: str,
    *,
    unlock: bool,
    timeout: float,
    notes: list[str],
    module: SecretStorageLike | None = None,
) -> str | None:
    """msmtp's Secret Service lookup, skipped at once without a session bus, within `timeout`."""
    if session_bus_address() is None:
        notes.append("secret service: no session bus (DBUS_SESSION_BUS_ADDRESS unset)")
        return None

    def search() -> str | None:
        found = module
        if found is None:
            import secretstorage

            found = secretstorage
        return search_secret_service(
            found, host, user, unlock=unlock, unlock_timeout=timeout, notes=notes
        )

    password, why = run_with_deadline(search, timeout, "secret-service")
    if why:
        notes.append(f"secret service: {why}")
    return password


# --- python keyring ----------------------------------------------------------------------------

# Backends that never hold a usable password: the failing and null ones, and keyrings.alt, whose
# file backends either keep base64 "plaintext" or prompt on stdin (the mail) for a key.
_UNUSABLE_BACKENDS = ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")


def usable_backend(backend: object) -> bool:
    """Whether a python keyring backend may be asked."""
    module = type(backend).__module__
    return not any(module == bad or module.startswith(bad + ".") for bad in _UNUSABLE_BACKENDS)


def _backend_name(backend: object) -> str:
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


def keyring_password(host: str, user: str, *, timeout: float, notes: list[str]) -> str | None:
    """python keyring's password for service `smtp://HOST`, username USER, within `timeout`."""
    return keyring_lookup(f"{SERVICE}://{host}", user, timeout=timeout, notes=notes)


def keyring_lookup(service: str, user: str, *, timeout: float, notes: list[str]) -> str | None:
    """python keyring's password for `service` and `user` from the usable backends, within
    `timeout`; why nothing was found goes to `notes`."""

    def search() -> str | None:
        import keyring
        from keyring.backends.chainer import ChainerBackend

        chosen = keyring.get_keyring()
        backends = list(chosen.backends) if isinstance(chosen, ChainerBackend) else [chosen]
        usable = [b for b in backends if usable_backend(b)]
        if not usable:
            names = ", ".join(_backend_name(b) for b in backends) or "none"
            notes.append(f"python keyring: no usable backend ({names})")
            return None
        for backend in usable:
            try:
                password = backend.get_password(service, user)
            except Exception as exc:  # KeyringError and whatever a backend lets escape
                notes.append(f"python keyring: {_backend_name(backend)}: {_describe(exc)}")
                continue
            if password is not None:
                return password
        return None

    password, why = run_with_deadline(search, timeout, "keyring")
    if why:
        notes.append(f"python keyring: {why}")
    return password
