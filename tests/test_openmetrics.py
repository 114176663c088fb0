"""`relayd status --openmetrics` and contrib/metrics: parsed by prometheus_client's parsers of
both formats (OpenMetrics 1.0 and the Prometheus text format node_exporter reads)."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from relayd.cli import metrics
from relayd.cli import status as status_cli
from relayd.store.queued import State
from relayd.store.sql import SqlStore
from tests.sendmail_helpers import sendmail_env, write_msmtprc
from tests.store_helpers import message
from tests.test_daemon import RELAYD, Daemon, start_daemon
from tests.test_status import REFUSED, T0, attempt, populate, status, store
from tests.test_systemd_units import assert_verified, fake_executable

__all__ = ["start_daemon", "store"]  # fixtures, used by name

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "metrics"
TEXTFILE = CONTRIB / "relayd-textfile"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exposition(now: float, monkeypatch: pytest.MonkeyPatch) -> str:
    """`relayd status --openmetrics` in-process, its clock at `now`."""
    monkeypatch.setattr(status_cli, "clock", lambda: now)
    result = status("--openmetrics")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


def samples(families: Iterable[Metric]) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def parse_both(text: str) -> Samples:
    """The samples, checked to be the same under both parsers; every family a gauge."""
    # raises on anything OpenMetrics forbids (the library leaves this one function untyped)
    strict: list[Metric] = list(openmetrics_families(text))  # type: ignore[no-untyped-call]
    assert {family.type for family in strict} == {"gauge"}
    assert text.endswith("\n# EOF\n")
    assert samples(strict) == samples(prometheus_families(text))
    return samples(strict)


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_the_queue_as_gauges(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(store)
    found = parse_both(exposition(T0 + 100, monkeypatch))
    messages = {k: v for k, v in found.items() if k[0] == "relayd_messages"}
    expected_counts = {
        ("default", State.QUEUED): 2,
        ("default", State.HELD): 1,
        ("default", State.SENT): 1,
        ("work", State.QUEUED): 1,
        ("work", State.FAILED): 1,
    }
    assert messages == {
        key("relayd_messages", account=account, state=state.value): expected_counts.get(
            (account, state), 0
        )
        for account in ("default", "work")
        for state in State
    }
    assert found[key("relayd_daemon_up")] == 0
    attempts = {k: v for k, v in found.items() if k[0] == "relayd_attempts"}
    assert attempts == {
        key("relayd_attempts", account="default", exit_code="0"): 2,
        key("relayd_attempts", account="default", exit_code="75"): 1,
        key("relayd_attempts", account="work", exit_code="65"): 1,
    }
    # default's oldest waiting message arrived at T0 (the deferred one), work's at T0 + 50;
    # held, sent and failed mail is not waiting.
    assert found[key("relayd_oldest_queued_age_seconds", account="default")] == 100
    assert found[key("relayd_oldest_queued_age_seconds", account="work")] == 50
    # the later of default's two successes, at T0 + 40, took 0.2 s; work never succeeded
    assert found[key("relayd_last_success_timestamp_seconds", account="default")] == T0 + 40.2
    assert key("relayd_last_success_timestamp_seconds", account="work") not in found


def test_an_account_with_nothing_waiting_is_zero_seconds_old(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = store.enqueue(message(1, account="done"), T0)
    attempt(store, sent, T0 + 1, 0, (250, "ok"))
    found = parse_both(exposition(T0 + 500, monkeypatch))
    assert found[key("relayd_oldest_queued_age_seconds", account="done")] == 0
    assert found[key("relayd_last_success_timestamp_seconds", account="done")] == T0 + 1.2


@pytest.mark.parametrize("name", ['a"b', "back\\slash", "two\nlines", "ünï cödé {x}=,"])
def test_label_values_are_escaped(
    name: str, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = store.enqueue(message(1, account=name), T0)
    attempt(store, queued, T0 + 1, 75, (None, REFUSED))
    text = exposition(T0 + 10, monkeypatch)
    assert len(text.splitlines()) == len([line for line in text.split("\n") if line])  # no raw LF
    found = parse_both(text)
    assert found[key("relayd_messages", account=name, state="queued")] == 1
    assert found[key("relayd_attempts", account=name, exit_code="75")] == 1


def test_escape_label_by_hand() -> None:
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_an_empty_queue_is_valid_and_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    found = parse_both(exposition(T0, monkeypatch))
    assert found == {key("relayd_daemon_up"): 0}
    queue_file = os.environ["RELAYD_DATABASE_URL"].removeprefix("sqlite:///")
    assert not os.path.exists(queue_file)


def test_json_and_openmetrics_exclude_each_other() -> None:
    result = status("--json", "--openmetrics")
    assert result.exit_code == 64
    assert result.stderr == "relayd: --json and --openmetrics exclude each other\n"
    assert result.stdout == ""


# --- contrib/metrics: the textfile recipe, run for real ---------------------------------------


def run_textfile(target: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = sendmail_env(RELAYD_BIN=RELAYD, **env)
    return subprocess.run(
        [str(TEXTFILE), str(target)], capture_output=True, text=True, env=environ, timeout=60
    )


def test_the_textfile_recipe_writes_atomically_with_a_daemon(
    tmp_path: Path, start_daemon: Callable[..., Daemon], store: SqlStore
) -> None:
    write_msmtprc()
    store.enqueue(message(1, account="nowhere"), T0)  # an account the msmtprc lacks: held
    start_daemon()
    textfiles = tmp_path / "node-exporter"
    textfiles.mkdir()
    target = textfiles / "relayd.prom"
    done = run_textfile(target)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(textfiles)) == ["relayd.prom"]  # no temporary file left
    assert target.stat().st_mode & 0o044 == 0o044  # node_exporter, another user, reads it
    found = parse_both(target.read_text(encoding="utf-8"))
    assert found[key("relayd_daemon_up")] == 1
    assert sum(v for k, v in found.items() if k[0] == "relayd_messages") == 1


def test_a_failing_relayd_keeps_the_previous_file(tmp_path: Path) -> None:
    textfiles = tmp_path / "node-exporter"
    textfiles.mkdir()
    target = textfiles / "relayd.prom"
    target.write_text("# the previous scrape\n# EOF\n", encoding="utf-8")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    failed = run_textfile(target, RELAYD_DATABASE_URL=f"sqlite:///{blocker}/queue.sqlite3")
    assert failed.returncode not in (0, 64)
    assert failed.stderr.startswith("relayd: ")
    assert target.read_text(encoding="utf-8") == "# the previous scrape\n# EOF\n"
    assert sorted(os.listdir(textfiles)) == ["relayd.prom"]


def test_the_units_run_the_recipe_every_minute(tmp_path: Path) -> None:
    service, timer = (configparser.ConfigParser(strict=False, interpolation=None) for _ in "st")
    service.read(CONTRIB / "relayd-metrics.service")
    timer.read(CONTRIB / "relayd-metrics.timer")
    command = shlex.split(service["Service"]["ExecStart"])
    assert os.path.basename(command[0]) == TEXTFILE.name
    assert command[1].endswith(".prom")
    assert service["Service"]["Type"] == "oneshot"
    assert timer["Timer"]["OnUnitActiveSec"] == "1min"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_the_units_pass_systemd_verify(tmp_path: Path) -> None:
    """systemd's own check, with ExecStart's script at a path that exists."""
    script = tmp_path / "lib" / TEXTFILE.name
    fake_executable(script)
    units = tmp_path / "system"
    units.mkdir()
    text = (CONTRIB / "relayd-metrics.service").read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={script}", text)
    assert count == 1
    (units / "relayd-metrics.service").write_text(text, encoding="utf-8")
    shutil.copy(CONTRIB / "relayd-metrics.timer", units)
    for unit in sorted(units.iterdir()):
        assert_verified(unit, user=False)
