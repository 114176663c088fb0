"""Where relayd keeps its files (queue database, wake socket), and creating them privately.

On the sendmail hot path: stdlib only, no pathlib (plain `os.path` strings are cheaper).
"""

from __future__ import annotations

import os

from relayd.errors import ConfigError

TYPE_CHECKING = False  # collections.abc would load `collections` on the hot path
if TYPE_CHECKING:
    from collections.abc import Mapping

SYSTEM_SETTINGS_FILE = "/etc/relayd/relayd.toml"
SYSTEM_STATE_DIR = "/var/spool/relayd"
SYSTEM_RUNTIME_DIR = "/run/relayd"
DATABASE_NAME = "queue.sqlite3"
WAKE_SOCKET_NAME = "wake"
DEFAULT_MAX_SIZE = 128 * 1024 * 1024  # `[submit] max_size`: the same limit for every way in


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _uid(uid: int | None) -> int:
    return os.geteuid() if uid is None else uid


def _xdg_dir(environ: Mapping[str, str], name: str, fallback: str) -> str:
    """An XDG base directory; relative values are invalid per the XDG spec and ignored."""
    value = environ.get(name, "")
    if value and os.path.isabs(value):
        return value
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, fallback)


def config_home(environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_CONFIG_HOME`, default `~/.config`."""
    return _xdg_dir(_env(environ), "XDG_CONFIG_HOME", ".config")


def settings_file(environ: Mapping[str, str] | None = None) -> tuple[str | None, bool]:
    """relayd.toml to read, and whether it was named explicitly.

    `$RELAYD_CONFIG`, else `$XDG_CONFIG_HOME/relayd/relayd.toml`, else the system file; None
    when neither of the last two exists.
    """
    env = _env(environ)
    named = env.get("RELAYD_CONFIG")
    if named:
        return named, True
    user_file = os.path.join(config_home(env), "relayd", "relayd.toml")
    for candidate in (user_file, SYSTEM_SETTINGS_FILE):
        if os.path.isfile(candidate):
            return candidate, False
    return None, False


def check_database_url(url: str) -> str:
    """`url` if it can name a queue database, else ConfigError (without file or key)."""
    if "://" not in url:
        raise ConfigError(f"expected a database URL such as sqlite:///PATH, not {url!r}")
    sqlite_path(url)
    return url


def state_dir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The queue's directory: `/var/spool/relayd` as root, else `$XDG_STATE_HOME/relayd`."""
    if _uid(uid) == 0:
        return SYSTEM_STATE_DIR
    return os.path.join(_xdg_dir(_env(environ), "XDG_STATE_HOME", ".local/state"), "relayd")


def default_database_url(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The `database` setting's default: a SQLite file in `state_dir()`."""
    return "sqlite:///" + os.path.join(state_dir(environ, uid), DATABASE_NAME)


def runtime_dir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """Where the daemon's sockets live.

    `$RELAYD_RUNTIME_DIR` when set. Root: `/run/relayd`. A user: `$XDG_RUNTIME_DIR/relayd`;
    when that variable is unset (cron jobs, su sessions) `/run/user/UID/relayd` if systemd made
    `/run/user/UID`, so the submitter still finds the socket of a daemon started by
    `systemd --user`; else the state directory.
    """
    env = _env(environ)
    override = env.get("RELAYD_RUNTIME_DIR", "")
    if override:
        return override
    user = _uid(uid)
    if user == 0:
        return SYSTEM_RUNTIME_DIR
    base = env.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base):
        return os.path.join(base, "relayd")
    per_user = f"/run/user/{user}"
    if os.path.isdir(per_user):
        return os.path.join(per_user, "relayd")
    return state_dir(env, user)


def wake_socket(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The daemon's wake-up datagram socket: `runtime_dir()/wake`."""
    return os.path.join(runtime_dir(environ, uid), WAKE_SOCKET_NAME)


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL (or a plain path); None for any other database URL.

    `sqlite:////abs/path` and `sqlite:///relative/path` follow SQLAlchemy's spelling. An
    in-memory database or URL query options make no sense for a durable queue: ConfigError.
    """
    if "://" not in url:
        return url or None
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite" and not scheme.startswith("sqlite+"):
        return None
    path = rest[1:] if rest.startswith("/") else rest
    if not path or path == ":memory:":
        raise ConfigError(f"an in-memory SQLite database cannot hold a queue: {url}")
    if "?" in path:
        raise ConfigError(f"SQLite URL options are not supported: {url}")
    return path


def _fsync_dir(path: str) -> None:
    """Make a new directory entry durable (nullmailer does this; SQLite does not for the db)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(path: str) -> None:
    """Create `path` (and missing parents) if needed; the directory itself gets mode 0700.

    An existing directory keeps its mode: an administrator may have chosen another one.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; 0700 is already minimal
    _fsync_dir(parent)


def ensure_private_file(path: str) -> bool:
    """Make sure the database file exists, created 0600 in a 0700 directory; True if created.

    SQLite gives its -wal and -shm files the database file's mode, so creating the database
    ourselves with 0600 keeps all three private whatever the umask.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    except FileExistsError:
        # Open it for writing anyway so a read-only file or filesystem is reported here, by the
        # OS, with a clear errno, instead of later as SQLite's vaguer "readonly database".
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        return False
    except FileNotFoundError:
        ensure_private_dir(os.path.dirname(os.path.abspath(path)))
        fd = os.open(path, flags, 0o600)
    os.close(fd)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


SUBMIT_SOCKET_NAME = "submit"


def host_runtime_dir(environ: Mapping[str, str] | None = None) -> str:
    """The host daemon's runtime directory: `$RELAYD_RUNTIME_DIR`, else `/run/relayd`."""
    return _env(environ).get("RELAYD_RUNTIME_DIR", "") or SYSTEM_RUNTIME_DIR


def submit_socket(environ: Mapping[str, str] | None = None) -> str:
    """The host submit socket (SPEC §7): `host_runtime_dir()/submit`."""
    return os.path.join(host_runtime_dir(environ), SUBMIT_SOCKET_NAME)


def listener_file(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """Where a running daemon notes its SMTP listener's addresses, one a line (`status`)."""
    return os.path.join(runtime_dir(environ, uid), "smtp-listener")
