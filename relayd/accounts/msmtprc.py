"""msmtprc text → accounts, with msmtp 1.8.23's line syntax, `defaults`, `account` and `eval`."""

from __future__ import annotations

from relayd.accounts import values
from relayd.accounts.account import COMMANDS, Account, NeedsArgument, TakesNoArgument
from relayd.errors import ConfigError
from relayd.sysexits import ExitCode

LINE_LIMIT = 500  # msmtp reads lines into a 501-byte buffer
_BLANKS = " \t\n\v\f\r"

TYPE_CHECKING = False  # typing costs milliseconds at import: this is the sendmail hot path
if TYPE_CHECKING:
    from collections.abc import Callable


class ConfFile:
    """The accounts of one file, in file order, and whether it holds a literal `password` line.

    `lines` maps each account's name to the line that defined it.
    """

    def __init__(
        self,
        path: str,
        accounts: list[Account],
        contains_secrets: bool,
        lines: dict[str, int] | None = None,
    ) -> None:
        self.path = path
        self.accounts = accounts
        self.contains_secrets = contains_secrets
        self.lines = lines if lines is not None else {}

    def find(self, name: str) -> Account | None:
        """The account called `name`, if defined."""
        return next((a for a in self.accounts if a.id == name), None)


def split_line(line: str) -> tuple[str, str]:
    """One line → (command, argument); comments and blank lines give an empty command."""
    if line.endswith("\r"):
        line = line[:-1]
    line = line.lstrip(_BLANKS)
    if not line or line.startswith("#"):
        return "", ""
    end = 0
    while end < len(line) and line[end] not in _BLANKS:
        end += 1
    arg = line[end:].strip(_BLANKS)
    if len(arg) >= 2 and arg[0] == '"' and arg[-1] == '"':
        arg = arg[1:-1]
    return line[:end], arg


def run_eval(command: str) -> str | None:
    """The first line `command` prints (CR/LF stripped), or None without output."""
    import subprocess  # only when a file uses eval or passwordeval

    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            check=False,
        )
    except OSError:
        return None
    if not proc.stdout:
        return None
    first = proc.stdout.split(b"\n", 1)[0]
    return first.rstrip(b"\r").decode("utf-8", "surrogateescape")


class _Parser:
    """Applies the lines of one file to a list of accounts."""

    def __init__(self, path: str, evaluate: Callable[[str], str | None]) -> None:
        self.path = path
        self.evaluate = evaluate
        self.defaults = Account(id=None, conffile=path)
        self.current: Account | None = None
        self.accounts: list[Account] = []
        self.lines: dict[str, int] = {}
        self.contains_secrets = False

    def error(self, lineno: int, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: line {lineno}: {message}", path=self.path, line=lineno)

    def feed(self, lineno: int, line: str) -> None:
        cmd, arg = split_line(line)
        if cmd == "eval":
            if arg == "":
                raise self.error(lineno, "command eval needs an argument")
            output = self.evaluate(arg)
            if output is None:
                raise ConfigError(
                    f"{self.path}: cannot read output of '{arg}'",
                    ExitCode.IOERR,
                    path=self.path,
                    line=lineno,
                )
            cmd, arg = split_line(output)
            if cmd == "eval":
                raise self.error(lineno, "unknown command eval")
        elif cmd == "password":
            self.contains_secrets = True
        if cmd:
            self.apply(lineno, cmd, arg)

    def apply(self, lineno: int, cmd: str, arg: str) -> None:
        if cmd == "defaults":
            if arg:
                raise self.error(lineno, "command defaults does not take an argument")
            self.current = self.defaults
        elif cmd == "account":
            self.current = self.new_account(lineno, arg)
        else:
            setter = COMMANDS.get(cmd)
            if setter is None:
                raise self.error(lineno, f"unknown command {cmd}")
            if self.current is None:
                self.current = self.add(self.defaults.copy(), "default", lineno)
            try:
                setter(self.current, arg)
            except NeedsArgument:
                raise self.error(lineno, f"command {cmd} needs an argument") from None
            except TakesNoArgument:
                raise self.error(lineno, f"command {cmd} does not take an argument") from None
            except values.BadValue:
                raise self.error(lineno, f"invalid argument {arg} for command {cmd}") from None

    def add(self, account: Account, name: str, lineno: int) -> Account:
        account.id = name
        account.conffile = self.path
        account.mask = set()
        self.accounts.append(account)
        self.lines[name] = lineno
        return account

    def salvage(self, line: str) -> None:
        """After an error on `line`, when collecting: make the lines that follow go somewhere.

        A failed `account` line defines nothing (as in msmtp, the name stays undefined); its
        commands are still checked, on a stand-in that is never used. A failed `defaults`
        line still starts a defaults block.
        """
        cmd = split_line(line)[0]
        if cmd == "account":
            self.current = Account(id=None, conffile=self.path)
        elif cmd == "defaults":
            self.current = self.defaults

    def find(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.id == name), None)

    def new_account(self, lineno: int, arg: str) -> Account:
        name, colon, parents_text = arg.partition(":")
        parents: list[Account] = []
        if colon:
            for parent_name in (p.strip(_BLANKS) for p in parents_text.split(",")):
                if not parent_name:
                    raise self.error(lineno, "missing account name")
                parent = self.find(parent_name)
                if parent is None:
                    raise self.error(lineno, f"account {parent_name} not (yet) defined")
                parents.append(parent)
        name = name.strip(_BLANKS)
        if not name:
            raise self.error(lineno, "missing account name")
        if "," in name:
            raise self.error(lineno, "an account name must not contain colons or commas")
        if self.find(name) is not None:
            raise self.error(lineno, f"account {name} was already defined")
        account = self.add(self.defaults.copy(), name, lineno)
        for parent in parents:
            account.override(parent)
        return account


def parse(
    path: str,
    data: bytes,
    evaluate: Callable[[str], str | None] = run_eval,
    problems: list[ConfigError] | None = None,
) -> ConfFile:
    """Parse the bytes of one msmtprc; raises ConfigError with msmtp's `FILE: line N: …` text.

    With a `problems` list, every error is appended to it instead, and parsing goes on with the
    next line (see `_Parser.salvage`): what `relayd config check` reports.
    """
    parser = _Parser(path, evaluate)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, start=1):
        text = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        try:
            if len(raw) >= LINE_LIMIT:
                raise ConfigError(
                    f"{path}: line longer than {LINE_LIMIT} characters", path=path, line=lineno
                )
            parser.feed(lineno, text)
        except ConfigError as err:
            if problems is None:
                raise
            problems.append(err)
            parser.salvage(text)
    return ConfFile(path, parser.accounts, parser.contains_secrets, parser.lines)
