"""relayd-sendmail: the sendmail/msmtp-compatible front end (a hot path: keep imports light)."""

from __future__ import annotations

import gc
import os
import sys
import time  # loaded at start-up already (zipimport)

from relayd.errors import ConfigError, DataError, RelaydError, UsageError
from relayd.submission.cmdline import Delivery, Invocation, Mode, parse
from relayd.sysexits import ExitCode

TYPE_CHECKING = False  # accounts, headers: imported where used (the socket's client needs none)
if TYPE_CHECKING:
    import _socket
    from collections.abc import Iterable, Sequence

    from relayd.accounts.account import Account
    from relayd.accounts.select import Remembered, Selection
    from relayd.submission.headers import HeaderScan


class Output:
    """Writes text lines to stdout byte-exactly (config values may hold undecodable bytes)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __call__(self, line: str) -> None:
        if self.enabled:
            sys.stdout.buffer.write(line.encode("utf-8", "surrogateescape") + b"\n")


def main(argv: Sequence[str] | None = None, *, fast_exit: bool = False) -> int:
    """Entry point of `relayd-sendmail` (see `entry.run`); returns the sysexits code.

    `fast_exit`: the process is relayd-sendmail's own, so a plain submission (or a refusal
    before anything ran) ends it here with os._exit once stdout and stderr are flushed: no
    interpreter teardown, and the queue's connection is left to the kernel (`fastpath.keep_open`).
    """
    args = list(sys.argv if argv is None else argv)
    prog = os.path.basename(args[0]) if args else "relayd-sendmail"
    inv = None
    try:
        inv = parse(args[1:])
        if prog == "mailq":
            inv.mode = Mode.LIST_QUEUE
        code = run(inv, prog, fast_exit=fast_exit)
    except RelaydError as err:
        sys.stdout.flush()
        sys.stderr.buffer.write(f"{prog}: {err.message}\n".encode("utf-8", "surrogateescape"))
        code = int(err.exit_code)
    sys.stdout.flush()
    if fast_exit and (inv is None or _submits_only(inv)):
        _exit_now(code)
    return code


def _submits_only(inv: Invocation) -> bool:
    """Whether the invocation stores (or hands over) a message and does nothing after it: no
    delivery in this process, no SMTP session, no threads or files left to finish."""
    return inv.mode is Mode.SEND and inv.delivery is not Delivery.INTERACTIVE


def _exit_now(code: int) -> None:
    """End the process with `code` at once if stdout and stderr flush; else return (the normal
    exit then reports the failure as Python does)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def run(inv: Invocation, prog: str, *, fast_exit: bool = False) -> int:
    """Carry out a parsed invocation (`fast_exit`: see `main`)."""
    if not _submits_only(inv):
        gc.enable()  # entry.run turned it off for a short submission; this may run long
    out = Output()
    if inv.mode in (Mode.VERSION, Mode.HELP):
        from relayd.submission import about

        text = about.version_lines(prog) if inv.mode is Mode.VERSION else [about.help_text(prog)]
        for line in text:
            out(line)
        return ExitCode.OK
    if inv.mode is Mode.LIST_QUEUE:
        from relayd.submission import queuelist

        return queuelist.print_mailq(sys.stdout)
    if inv.mode is Mode.FLUSH:
        return _flush(prog)
    if inv.mode is Mode.SMTP:
        from relayd.submission import smtpstdio  # aiosmtpd: only for -bs

        return smtpstdio.serve(prog, inv)
    if inv.mode is Mode.CONFIGURE:
        raise RelaydError(
            f"{inv.mode.value} mode is not available in this version", ExitCode.UNAVAILABLE
        )
    sendmail_mode = inv.mode is Mode.SEND
    note = False
    if sendmail_mode and not inv.pretend:
        from relayd.submission import route

        way = route.decide()
        if way.sock is not None:
            return _to_host(inv, way.sock, prog)
        note = way.note
    data: bytes = b""
    rest: Iterable[bytes] = ()
    if sendmail_mode:
        from relayd.submission.submit import Input, max_size, read_stdin

        stdin = Input(read_stdin, max_size())
        data, rest = stdin.head(), stdin.rest()  # the rest is read while it is stored
        if inv.pretend:
            for _ in rest:  # read to the end: a message over max_size is refused as before
                pass
    emit = Output(inv.pretend or inv.debug)
    account, recipients, scan = prepare(inv, data, emit)
    if inv.pretend:
        return ExitCode.OK
    debug = emit if inv.debug else None
    if not sendmail_mode:
        from relayd.submission import interactive  # the delivery engine: for a server only

        if inv.mode is Mode.SERVERINFO:
            return interactive.serverinfo(account, prog=prog, debug=debug)
        return interactive.rmqs(account, inv.rmqs or "", prog=prog, debug=debug)
    from relayd.submission import submit

    if fast_exit and _submits_only(inv):
        from relayd.store import fastpath

        fastpath.keep_open()
    now = time.time()
    new = submit.build(inv, account, data, scan, recipients, now, rest)
    del data
    queue_id = submit.store(inv, new, now)
    emit(f"queued as {queue_id}")
    if note:
        no_daemon_note(prog)
    if inv.delivery is Delivery.INTERACTIVE:
        from relayd.submission import interactive

        return interactive.deliver_now(account, queue_id, prog=prog, debug=debug)
    return ExitCode.OK


def no_daemon_note(prog: str) -> None:
    """Say on stderr that no daemon delivers the queue the mail was stored in."""
    from relayd.store import location
    from relayd.submission.about import redact
    from relayd.submission.route import NO_DAEMON

    line = NO_DAEMON.format(queue=redact(location.database_url()))
    sys.stderr.buffer.write(f"{prog}: {line}\n".encode("utf-8", "surrogateescape"))


def prepare(
    inv: Invocation,
    data: bytes,
    emit: Output,
    envelope: list[str] | None = None,
    require_account: bool = False,
    remembered: Remembered | None = None,
) -> tuple[Account, list[str], HeaderScan]:
    """The account (chosen, completed and checked as msmtp does), the recipients (aliases
    expanded) and the header scan of `data`, printing -P/-d lines through `emit`.

    `envelope`: recipients given as they are (SMTP's RCPT TO), instead of the command line's
    and the headers'; `require_account`: an envelope-from no account's `from` matches is
    refused (ConfigError) instead of going to `default` (`[listen] require_account`);
    `remembered`: account choices kept from earlier messages (nothing is printed then)."""
    from relayd.accounts import resolve
    from relayd.submission import message

    sendmail_mode = inv.mode is Mode.SEND
    scan = message.scan_headers(data, read_recipients=inv.read_recipients)
    header_from = scan.from_address if inv.read_envelope_from else None
    if sendmail_mode and inv.read_envelope_from:
        emit(f"envelope from address extracted from mail: {header_from or '(null)'}")
    recipients = list(envelope) if envelope is not None else _argument_recipients(inv, scan)
    if sendmail_mode and not recipients and not inv.pretend:
        raise UsageError("no recipients found")
    selection = choose_account(
        inv, header_from=header_from, sendmail_mode=sendmail_mode, emit=emit, remembered=remembered
    )
    if require_account and not selection.by_from and inv.envelope_from:
        raise ConfigError(f"no account for sender {inv.envelope_from}")
    account = selection.account
    if inv.pretend:
        resolve.run_passwordeval(account)
    resolve.apply_defaults(account)
    resolve.check(account, sendmail_mode=sendmail_mode and not inv.pretend)
    if selection.using_line is not None:
        emit(selection.using_line)
    if emit.enabled:  # -d/-P: the account as msmtp prints it (not worth making unprinted)
        from relayd.accounts import pretend

        lines = pretend.account_lines(
            account,
            sendmail_mode=sendmail_mode,
            read_envelope_from=inv.read_envelope_from,
            read_recipients=inv.read_recipients,
            rmqs=inv.rmqs,
        )
        for line in lines:
            emit(line)
    if account.aliases:
        recipients = message.expand_aliases(recipients, account.aliases)
    return account, recipients, scan


def _argument_recipients(inv: Invocation, scan: HeaderScan) -> list[str]:
    """The recipients of the command line (and with -t, of the headers)."""
    from relayd.submission import message  # loaded already by prepare()

    for argument in inv.recipients:
        if any(char in argument for char in "\r\n\0"):
            raise DataError(f"invalid recipient {argument!r}: contains a line break or NUL")
    recipients = message.parse_recipient_arguments(inv.recipients)
    if inv.read_recipients:
        recipients += scan.recipients
    return recipients


def _to_host(inv: Invocation, sock: _socket.socket, prog: str) -> int:
    """Hand the mail to the host daemon through its submit socket (SPEC §7)."""
    from relayd.submission import client, privilege

    try:
        privilege.screen(inv)  # the daemon checks again; this spares sending a refused mail
    except RelaydError:
        sock.close()
        raise
    return client.submit(sock, inv.argv, prog)


def _flush(prog: str) -> int:
    """`-q`: every queued message due now; the daemon is woken, or this process delivers."""
    from relayd import settings
    from relayd.daemon import flush

    def say(line: str) -> None:
        sys.stdout.write(f"{prog}: {line}\n")

    def complain(line: str) -> None:
        sys.stderr.write(f"{prog}: {line}\n")

    return flush.flush(settings.load(), [], None, say=say, complain=complain)


def choose_account(
    inv: Invocation,
    *,
    header_from: str | None,
    sendmail_mode: bool,
    emit: Output,
    remembered: Remembered | None = None,
) -> Selection:
    """Select the account as msmtp does (through `remembered` when given) and apply the
    command line to it."""
    from relayd.accounts import resolve
    from relayd.accounts.account import Account
    from relayd.accounts.select import Selection, select

    if inv.host_given:
        emit("using account specified on command line")
        selection = Selection(Account(id=None, conffile=None), from_file=False)
    else:
        envelope_from = inv.envelope_from if inv.envelope_from is not None else header_from
        selection = (select if remembered is None else remembered.select)(
            account_id=inv.account_id,
            conffile=inv.conffile,
            envelope_from=envelope_from,
            sendmail_mode=sendmail_mode,
            emit=emit,
        )
    resolve.apply_overrides(
        selection.account,
        inv.cmdline,
        envelope_from=inv.envelope_from,
        read_envelope_from=inv.read_envelope_from,
        header_from=header_from,
    )
    return selection
