"""`relayd status --openmetrics`: the queue as Prometheus text, for node_exporter's textfile
collector.

Every family is a gauge, so the same text is valid Prometheus text format 0.0.4 (what the
textfile collector parses) and OpenMetrics 1.0 (which needs the closing `# EOF`, a comment to
the older format): a counter would need `_total` on its samples in one format and on its family
name in the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relayd.store.queued import State
from relayd.store.reports import AccountMetrics, AccountReport


@dataclass(frozen=True)
class Family:
    """One metric family: its name, help text and samples (labels, value)."""

    name: str
    help: str
    samples: Sequence[tuple[Sequence[tuple[str, str]], float]]


def escape_label(value: str) -> str:
    """A label value as both formats quote it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Integers without a decimal point; times with millisecond precision, never in exponent
    notation (both formats accept it, but people read these files too)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}"


def render(families: Iterable[Family]) -> str:
    """The exposition text: per family `# HELP` and `# TYPE` lines, then its samples; `# EOF`."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} gauge")
        for labels, value in family.samples:
            pairs = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels)
            selector = f"{family.name}{{{pairs}}}" if pairs else family.name
            lines.append(f"{selector} {_number(value)}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def families(
    reports: Sequence[AccountReport],
    metrics: AccountMetrics,
    daemon: bool | None,
    now: float,
) -> list[Family]:
    """What relayd exposes; an account appears once it has mail in the queue."""
    accounts = [r.account for r in reports]
    found: list[Family] = []
    if daemon is not None:
        found.append(
            Family(
                "relayd_daemon_up",
                "Whether a relayd daemon holds this queue (1) or not (0).",
                [((), 1 if daemon else 0)],
            )
        )
    found.append(
        Family(
            "relayd_messages",
            "Messages in the queue by account and state.",
            [
                ((("account", r.account), ("state", state.value)), r.counts[state])
                for r in reports
                for state in State
            ],
        )
    )
    found.append(
        Family(
            "relayd_attempts",
            "Delivery attempts recorded in the queue by account and exit code (0 delivered, "
            "75 temporary failure, other sysexits codes as msmtp exits); deleting messages "
            "removes their attempts.",
            [
                ((("account", account), ("exit_code", str(code))), count)
                for (account, code), count in sorted(metrics.attempts.items())
            ],
        )
    )
    found.append(
        Family(
            "relayd_oldest_queued_age_seconds",
            "Age of the account's oldest message waiting to be sent (queued or sending), "
            "0 when none waits.",
            [
                ((("account", account),), _age(metrics.oldest_waiting.get(account), now))
                for account in accounts
            ],
        )
    )
    found.append(
        Family(
            "relayd_last_success_timestamp_seconds",
            "Unix time at which the account's last successful delivery attempt ended.",
            [
                ((("account", account),), metrics.last_success[account])
                for account in accounts
                if account in metrics.last_success
            ],
        )
    )
    return found


def _age(since: float | None, now: float) -> float:
    return 0 if since is None else round(max(0.0, now - since), 3)
