"""`relayd status`: is the daemon up, what the queue holds per state and account, what failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import typer

from relayd import paths, settings
from relayd.cli.output import fail, json_line, local_time, on_terminal, run
from relayd.daemon.instance import daemon_listening, daemon_running
from relayd.store import fastpath
from relayd.store.queued import State
from relayd.sysexits import ExitCode
from relayd.text import sanitize

# The store (SQLAlchemy), its metrics and rich are imported where `status` runs: the `relayd`
# CLI imports every command's module, and `queue show` must stay light (SPEC §6).
if TYPE_CHECKING:
    from relayd.store.budget import Budgeted
    from relayd.store.reports import AccountReport

_DAEMON = {True: "running", False: "not running", None: "unknown (none on this host)"}
_DAEMON_STYLE = {_DAEMON[True]: "bold green", _DAEMON[False]: "bold red"}
clock: Callable[[], float] = time.time  # what "due now" and the metrics' ages compare with


def daemon_state(database: str) -> bool | None:
    """The instance lock's answer on a SQLite queue; elsewhere (PostgreSQL, a lock file this
    user may not read) True if a daemon listens on this host's wake-up socket, else None:
    a daemon on another host may serve the queue."""
    running = daemon_running(database)
    if running is None and daemon_listening(paths.wake_socket()):
        return True
    return running


def listener(daemon: bool | None) -> list[str] | None:
    """The SMTP listener's addresses as the running daemon noted them; else None."""
    if daemon is False:
        return None
    try:
        with open(paths.listener_file(), encoding="utf-8") as note:
            return [line.strip() for line in note if line.strip()]
    except OSError:
        return None


def _listener_fact(addresses: list[str] | None, configured: Sequence[str]) -> str:
    if addresses:
        return ", ".join(addresses)
    if configured:
        return f"{', '.join(configured)} (configured; the daemon is not listening)"
    return "off"


def _location(database: str) -> str:
    """The database URL, with a server's password hidden (a SQLite URL has none)."""
    from relayd.store.dialects import describe

    return database if paths.sqlite_path(database) is not None else describe(database)


def _overall_retry(reports: Sequence[AccountReport]) -> float | None:
    return min((r.next_retry for r in reports if r.next_retry is not None), default=None)


def retry_time(timestamp: float | None, now: float) -> str:
    """A next retry as `relayd status` shows it: "due now" once its time has come (the daemon
    takes it at its next pass, or at once when woken), else the local time; "-" for none."""
    if timestamp is not None and timestamp <= now:
        return "due now"
    return local_time(timestamp)


def _as_json(
    daemon: bool | None,
    database: str,
    reports: Sequence[AccountReport],
    smtp: list[str] | None,
    budgets: Budgeted,
) -> str:
    return json_line(
        {
            "daemon": daemon,
            "database": database,
            "smtp_listener": smtp,
            "counts": {r.account: {s.value: n for s, n in r.counts.items()} for r in reports},
            "next_retry": _overall_retry(reports),
            "accounts": [
                {
                    "account": r.account,
                    **{s.value: n for s, n in r.counts.items()},
                    "next_retry": r.next_retry,
                    "last_error": r.last_error,
                    "last_error_at": r.last_error_at,
                }
                for r in reports
            ],
            "limits": {
                account: {
                    "windows": [
                        {
                            "kind": w.kind,
                            "window": w.window.text,
                            "used": w.used,
                            "limit": w.window.count,
                            "resets_at": w.resets_at,
                        }
                        for w in windows
                    ],
                    "paused_until": pause.until if pause else None,
                    "paused_reason": pause.reason if pause else None,
                }
                for account, (windows, pause) in budgets.items()
            },
        }
    )


class _Table(NamedTuple):
    headers: list[str]
    rows: list[list[str]]
    numeric: range  # the columns of counts, right-aligned


def _facts(
    daemon: bool | None, database: str, reports: Sequence[AccountReport], smtp: str, now: float
) -> list[tuple[str, str]]:
    """What goes above the tables: (name, value), one fact a line."""
    totals = ", ".join(f"{sum(r.counts[s] for r in reports)} {s.value}" for s in State)
    return [
        ("daemon", _DAEMON[daemon]),
        ("database", sanitize(database, "terminal")),
        ("smtp listener", smtp),
        ("messages", totals),
        ("next retry", retry_time(_overall_retry(reports), now)),
    ]


def _tables(reports: Sequence[AccountReport], now: float) -> list[_Table]:
    """The counts per account and state and, if any account has one, the last errors."""
    if not reports:
        return []
    counts = [
        [
            sanitize(r.account, "terminal"),
            *(str(r.counts[s]) for s in State),
            retry_time(r.next_retry, now),
        ]
        for r in reports
    ]
    headers = ["ACCOUNT", *(s.value.upper() for s in State), "NEXT RETRY"]
    tables = [_Table(headers, counts, range(1, 1 + len(State)))]
    errors = [
        [
            sanitize(r.account, "terminal"),
            local_time(r.last_error_at),
            sanitize(r.last_error, "terminal"),
        ]
        for r in reports
        if r.last_error is not None
    ]
    if errors:
        tables.append(_Table(["ACCOUNT", "LAST ERROR AT", "LAST ERROR"], errors, range(0)))
    return tables


def _budget_table(budgets: Budgeted) -> list[_Table]:
    """`[limits.ACCOUNT]`: each window's use and when it resets; each account's pause."""
    rows = []
    for account, (windows, pause) in budgets.items():
        name = sanitize(account, "terminal")
        for w in windows:
            used = f"{w.used}/{w.window.count}"
            rows.append([name, f"{w.kind} {w.window.text}", used, local_time(w.resets_at)])
        if pause is not None:
            rows.append([name, "paused by the server", "", local_time(pause.until)])
    return [_Table(["ACCOUNT", "RATE LIMIT", "USED", "UNTIL"], rows, range(2, 3))] if rows else []


def _plain(table: _Table) -> list[str]:
    """A fixed-column table, two spaces apart; the last column unpadded."""
    everything = (table.headers, *table.rows)
    widths = [max(len(row[i]) for row in everything) for i in range(len(table.headers))]
    lines = []
    for row in everything:
        cells = [
            cell.rjust(width) if i in table.numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        cells[-1] = row[-1]
        lines.append("  ".join(cells))
    return lines


def _print_terminal(facts: list[tuple[str, str]], tables: list[_Table]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    for name, value in facts:
        style = _DAEMON_STYLE.get(value, "") if name == "daemon" else ""
        console.print(Text.assemble((f"{name}: ", "bold"), (value, style)), soft_wrap=True)
    for table in tables:
        shown = Table(*table.headers)
        for index in table.numeric:
            shown.columns[index].justify = "right"
        for row in table.rows:
            shown.add_row(*(Text(cell) for cell in row))
        console.print(shown)


def _status(as_json: bool, openmetrics: bool) -> int:
    from relayd.cli import metrics
    from relayd.store.budget import budget_reports
    from relayd.store.reports import AccountMetrics, account_metrics, account_reports
    from relayd.store.sql import SqlStore

    config = settings.load()
    store = SqlStore.open_reading(config.database, timeout=fastpath.lock_timeout())
    reports: list[AccountReport] = []
    budgets: Budgeted = {}
    found = AccountMetrics({}, {}, {})
    if store is not None:  # nothing was ever queued: an empty report, and no file created
        with store:
            reports = account_reports(store)
            if openmetrics:
                found = account_metrics(store)
            with store.reading() as conn:
                budgets = budget_reports(conn, config.limits, clock())
    daemon, database = daemon_state(config.database), _location(config.database)
    if openmetrics:
        typer.echo(metrics.render(metrics.families(reports, found, daemon, clock())), nl=False)
        return 0
    smtp = listener(daemon)
    if as_json:
        typer.echo(_as_json(daemon, database, reports, smtp, budgets))
        return 0
    shown = _listener_fact(smtp, config.listen.address)
    now = clock()
    facts = _facts(daemon, database, reports, shown, now)
    tables = _tables(reports, now) + _budget_table(budgets)
    if on_terminal():
        _print_terminal(facts, tables)
        return 0
    blocks = [[f"{name}: {value}" for name, value in facts], *map(_plain, tables)]
    typer.echo("\n\n".join("\n".join(block) for block in blocks))
    return 0


def status_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    openmetrics: bool = typer.Option(
        False,
        "--openmetrics",
        help="Print Prometheus text (OpenMetrics) for node_exporter's textfile collector.",
    ),
) -> None:
    """Show whether the daemon runs, counts per state and account, next retry, last errors,
    and each rate-limited account's budget (used/limit per window, paused until).

    --json prints one object: daemon (true, false, or null: cannot tell),
    database, smtp_listener (the listening addresses, or null), counts
    {account: {state: n}}, next_retry (Unix seconds or null), accounts
    [{account, queued, sending, held, sent, failed, next_retry, last_error,
    last_error_at}], limits {account: {windows [{kind, window, used, limit,
    resets_at}], paused_until, paused_reason}}.

    --openmetrics prints gauges: relayd_messages{account, state},
    relayd_attempts{account, exit_code}, relayd_oldest_queued_age_seconds{account},
    relayd_last_success_timestamp_seconds{account} and relayd_daemon_up, ending with
    "# EOF".
    """
    if as_json and openmetrics:
        fail("--json and --openmetrics exclude each other", ExitCode.USAGE)
    run(lambda: _status(as_json, openmetrics))
