"""msmtp's account selection: --host, --account, envelope-from matching, default, environment."""

from __future__ import annotations

import os

from relayd.accounts import files
from relayd.accounts.account import Account
from relayd.accounts.msmtprc import ConfFile
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # typing costs milliseconds at import: this is the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Emit = Callable[[str], None]


class Selection:
    """The chosen account (before command-line overrides) and where it came from.

    For an account from a file, msmtp prints `using account X from FILE` only once the account
    has passed its checks: the caller emits `using_line` then.
    """

    def __init__(self, account: Account, *, from_file: bool, by_from: bool = False) -> None:
        self.account = account
        self.from_file = from_file
        self.by_from = by_from  # chosen because its `from` matched the envelope-from address

    @property
    def using_line(self) -> str | None:
        """The `using account …` line to print after the checks, for file accounts."""
        if not self.from_file:
            return None
        return f"using account {self.account.id} from {self.account.conffile}"


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "?*[")


def from_matches(account_from: str, address: str) -> bool:
    """Does an account's `from` select this envelope-from address (msmtp 1.8.23 rules)?"""
    local, at, domain = address.partition("@")
    if "+" in local and at and "+" not in account_from:
        # Sub-addresses match the plain address; wildcard accounts are never considered.
        if _is_pattern(account_from):
            return False
        acc_local, acc_at, acc_domain = account_from.partition("@")
        base = local.split("+", 1)[0]
        return bool(acc_at) and (
            base.lower() == acc_local.lower() and domain.lower() == acc_domain.lower()
        )
    if _is_pattern(account_from):
        import fnmatch  # only for wildcard accounts

        return fnmatch.fnmatchcase(address, account_from)
    return account_from.lower() == address.lower()


def find_by_from(accounts: Sequence[Account], address: str) -> Account | None:
    """The first account whose `from` matches the address."""
    for account in accounts:
        if account.from_ is not None and from_matches(account.from_, address):
            return account
    return None


def load_files(conffile: str | None, emit: Emit) -> tuple[list[ConfFile], list[Account]]:
    """Load the system and user files as msmtp does; (loaded files, merged accounts)."""
    loaded: list[ConfFile] = []
    system = files.load(files.system_file(), check_secure=False)
    if isinstance(system, files.Unopenable):
        emit(f"ignoring system configuration file {system.path}: {system.reason}")
    else:
        emit(f"loaded system configuration file {system.path}")
        loaded.append(system)
    user = files.load(conffile or files.user_file(), check_secure=True)
    if isinstance(user, files.Unopenable):
        if conffile is not None:
            raise ConfigError(f"{user.path}: {user.reason}", ExitCode.IOERR)
        emit(f"ignoring user configuration file {user.path}: {user.reason}")
        accounts = list(system.accounts) if not isinstance(system, files.Unopenable) else []
        return loaded, accounts
    loaded.append(user)
    emit(f"loaded user configuration file {user.path}")
    accounts = list(user.accounts)
    if not isinstance(system, files.Unopenable):
        accounts += [a for a in system.accounts if a.id is not None and user.find(a.id) is None]
    return loaded, accounts


def _not_found(name: str, loaded: Sequence[ConfFile]) -> ConfigError:
    if not loaded:
        return ConfigError(f"account {name} not found: no configuration file available")
    where = " and ".join(conf.path for conf in loaded)
    return ConfigError(f"account {name} not found in {where}")


def select(
    *,
    account_id: str | None,
    conffile: str | None,
    envelope_from: str | None,
    sendmail_mode: bool,
    emit: Emit,
) -> Selection:
    """Choose the account from the configuration files (msmtp.md §2.2 steps 2-4)."""
    loaded, accounts = load_files(conffile, emit)
    if account_id is not None:
        account = next((a for a in accounts if a.id == account_id), None)
        if account is None:
            raise _not_found(account_id, loaded)
        return Selection(account.copy(), from_file=True)
    if envelope_from is not None:
        account = find_by_from(accounts, envelope_from)
        if account is not None:
            emit(f"account chosen by envelope from address {envelope_from}: {account.id}")
            return Selection(account.copy(), from_file=True, by_from=True)
    emit("falling back to default account")
    account = next((a for a in accounts if a.id == "default"), None)
    if account is not None:
        return Selection(account.copy(), from_file=True)
    server = os.environ.get("SMTPSERVER")
    email = os.environ.get("EMAIL")
    if server is not None and (not sendmail_mode or envelope_from is not None or email is not None):
        emit("using environment variables EMAIL and SMTPSERVER")
        account = Account(id=None, conffile=None)
        account.set("host", server)
        if email is not None:
            account.set("from_", email)
        return Selection(account, from_file=False)
    raise _not_found("default", loaded)


class Remembered:
    """`select` for a process that chooses accounts again and again and prints nothing of it
    (the SMTP listener): a choice is kept while the files and environment it read are
    unchanged (`files.fingerprint`: a stat of each file per call), and handed out as a copy.
    `emit` is not called for a kept choice."""

    LIMIT = 1024  # choices kept (distinct senders); all are forgotten when it is reached

    def __init__(self) -> None:
        self._kept: dict[tuple[object, ...], Selection] = {}
        self._state: tuple[object, ...] | None = None

    def select(
        self,
        *,
        account_id: str | None,
        conffile: str | None,
        envelope_from: str | None,
        sendmail_mode: bool,
        emit: Emit,
    ) -> Selection:
        state = files.fingerprint(conffile)
        if state != self._state or len(self._kept) >= self.LIMIT:
            self._kept.clear()
            self._state = state
        key = (account_id, conffile, envelope_from, sendmail_mode)
        kept = self._kept.get(key)
        if kept is None:
            kept = select(
                account_id=account_id,
                conffile=conffile,
                envelope_from=envelope_from,
                sendmail_mode=sendmail_mode,
                emit=emit,
            )
            if state is not None:
                self._kept[key] = kept
        account = kept.account.copy()
        return Selection(account, from_file=kept.from_file, by_from=kept.by_from)
