"""relayd-sendmail into PostgreSQL without SQLAlchemy (`pgwire`, `pgfast`): same rows as SqlStore,
every login method, TLS, failures that store nothing, the fallback to SqlStore."""

from __future__ import annotations

import binascii
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relayd.errors import DataError, QueueError
from relayd.store import MIGRATION_LOCK_KEY, fastpath, pgfast, pgtarget
from relayd.store.sql import SqlStore
from relayd.store.submitted import NewMessage
from tests.pg_cluster import PASSWORD, ROLES, Cluster, private_cluster
from tests.sendmail_helpers import (
    SENDMAIL,
    error_line,
    run_sendmail,
    sendmail_env,
    write_msmtprc,
)
from tests.store_helpers import PG_URL, postgres_schema

pytestmark = pytest.mark.skipif(not PG_URL, reason="RELAYD_TEST_DATABASE_URL is not set")

T0 = 1_700_000_000.25
BIG = bytes(range(256)) * 600  # 150 KiB with every byte value: three body rows


def new_message(
    data: bytes = b"Subject: hi\r\n\r\nhello\r\n", *, streamed: bool = False
) -> NewMessage:
    """A message with everything a row can hold (overrides, -C file, 8-bit, a user name)."""
    return NewMessage(
        account="work",
        overrides=(("host", "smtp.example.org"), ("tls", None)),
        sender="me@example.org",
        recipients=("a@example.org", "b@example.org", "c@example.org"),
        data=b"" if streamed else data,
        body=iter([data[:1000], data[1000:]]) if streamed else None,
        smtputf8=False,
        eightbit=not streamed and not data.isascii(),
        config_file="/etc/relayd/msmtprc",
        uid=1000,
        user="alice",
    )


def stored_rows(url: str) -> list[tuple[Any, ...]]:
    """Every message with its body and recipients, without the ids a store draws itself."""
    with SqlStore.open(url, migrate=False) as store, store.engine.connect() as conn:
        found = []
        for row in conn.exec_driver_sql("SELECT * FROM messages ORDER BY id").mappings():
            values = {k: v for k, v in row.items() if k not in ("id", "queue_id")}
            body = conn.exec_driver_sql(
                f"SELECT seq, data FROM bodies WHERE message_id = {row['id']} ORDER BY seq"
            ).all()
            recipients = conn.exec_driver_sql(
                "SELECT position, address, state, reply_code, reply_text FROM recipients"
                f" WHERE message_id = {row['id']} ORDER BY position"
            ).all()
            found.append((sorted(values.items()), [tuple(b) for b in body], recipients))
        return found


def row_total(url: str) -> int:
    with SqlStore.open(url, migrate=False) as store, store.engine.connect() as conn:
        return sum(
            int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
            for table in ("messages", "bodies", "recipients")
        )


@pytest.fixture
def queue_url() -> Iterator[str]:
    """A fresh schema on the shared server, migrated (so the fast path takes it)."""
    with postgres_schema() as url:
        SqlStore.open(url).close()
        yield url


@pytest.mark.parametrize(
    "data", [b"Subject: hi\r\n\r\nhello\r\n", b"", BIG, b"Subject: caf\xc3\xa9\r\n\r\n\xff\r\n"]
)
@pytest.mark.parametrize("streamed", [False, True])
def test_the_fast_path_stores_exactly_what_sqlstore_stores(
    data: bytes, streamed: bool, queue_url: str
) -> None:
    with SqlStore.open(queue_url) as store:
        slow_id = store.enqueue(new_message(data, streamed=streamed), T0)
    fast_id = pgfast.enqueue(queue_url, new_message(data, streamed=streamed), T0, timeout=10)
    assert fast_id is not None and fast_id != slow_id
    slow, fast = stored_rows(queue_url)
    assert fast == slow
    assert b"".join(chunk for _, chunk in fast[1]) == data


def test_relayd_sendmail_goes_through_the_fast_path(queue_url: str) -> None:
    write_msmtprc()
    env = sendmail_env(RELAYD_DATABASE_URL=queue_url)
    sent = run_sendmail(["-odq", "you@example.org"], b"Subject: hi\n\nhello\n", env=env)
    assert sent.returncode == 0, sent.stderr
    (row,) = stored_rows(queue_url)
    assert dict(row[0])["submitted_user"] is not None
    assert row[1][0][1].endswith(b"hello\r\n")


def test_a_new_database_is_migrated_by_the_first_submission() -> None:
    with postgres_schema() as url:
        assert pgfast.enqueue(url, new_message(), T0, timeout=10) is None  # no schema yet
        queue_id = fastpath.submit(url, new_message(), T0)  # SqlStore migrates, then stores
        assert pgfast.enqueue(url, new_message(), T0, timeout=10) not in (None, queue_id)
        assert len(stored_rows(url)) == 2


def test_an_old_schema_goes_through_sqlstore(queue_url: str) -> None:
    with SqlStore.open(queue_url, migrate=False) as store, store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'nosuch'")
    assert pgfast.enqueue(queue_url, new_message(), T0, timeout=10) is None
    with pytest.raises(QueueError) as caught:
        fastpath.submit(queue_url, new_message(), T0)
    assert "unknown to this relayd" in caught.value.message
    assert row_total(queue_url) == 0


def test_a_unix_socket_directory_in_the_url(queue_url: str) -> None:
    socket_dir = "/var/run/postgresql"
    if not os.path.exists(f"{socket_dir}/.s.PGSQL.5432"):
        pytest.skip(f"the shared server has no socket in {socket_dir}")
    url = queue_url.replace("@127.0.0.1:5432/", "@/") + f"&host={socket_dir}"
    assert pgtarget.target(url).unix_socket == f"{socket_dir}/.s.PGSQL.5432"
    assert pgfast.enqueue(url, new_message(), T0, timeout=10) is not None
    assert len(stored_rows(queue_url)) == 1


def test_what_only_psycopg_handles_goes_through_sqlstore(
    queue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTZ", "UTC")  # a libpq variable pgwire does not read
    assert pgfast.enqueue(queue_url, new_message(), T0, timeout=10) is None
    fastpath.submit(queue_url, new_message(), T0)
    assert len(stored_rows(queue_url)) == 1


def test_a_colliding_queue_id_is_drawn_again(
    queue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqlStore.open(queue_url) as store:
        taken = store.enqueue(new_message(), T0)
    drawn = iter([taken, "M0000000000Z"])
    monkeypatch.setattr(fastpath, "new_queue_id", lambda now: next(drawn))
    assert pgfast.enqueue(queue_url, new_message(), T0, timeout=10) == "M0000000000Z"
    assert len(stored_rows(queue_url)) == 2


def test_a_constraint_error_mid_insert_rolls_everything_back(queue_url: str) -> None:
    with SqlStore.open(queue_url, migrate=False) as store, store.engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE recipients ADD CONSTRAINT no_c CHECK (address <> 'c@example.org')"
        )
    with pytest.raises(QueueError) as caught:  # the message and body rows went in first
        pgfast.enqueue(queue_url, new_message(BIG), T0, timeout=10)
    assert caught.value.exit_code == 75 and "\n" not in caught.value.message
    assert "no_c" in caught.value.message
    assert row_total(queue_url) == 0


def test_a_body_refused_mid_stream_leaves_nothing(queue_url: str) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(40):  # past one batch of rows sent before a Sync
            yield BIG
        raise DataError("message too big")

    message = new_message(streamed=True)
    message.body = body()
    with pytest.raises(DataError):
        pgfast.enqueue(queue_url, message, T0, timeout=10)
    assert row_total(queue_url) == 0


def test_a_read_only_server_is_73(queue_url: str) -> None:
    url = queue_url.replace("options=-c", "options=-cdefault_transaction_read_only%3Don+-c")
    assert "read_only" in pgtarget.target(url).options  # type: ignore[operator]
    with pytest.raises(QueueError) as caught:
        pgfast.enqueue(url, new_message(), T0, timeout=10)
    assert caught.value.exit_code == 73 and "read-only" in caught.value.message
    assert row_total(queue_url) == 0


def test_sslmode_require_without_tls_on_the_server_is_75(queue_url: str) -> None:
    with SqlStore.open(queue_url, migrate=False) as store, store.engine.connect() as conn:
        if conn.exec_driver_sql("SHOW ssl").scalar() == "on":
            pytest.skip("the shared server offers TLS")
    with pytest.raises(QueueError) as caught:
        pgfast.enqueue(queue_url + "&sslmode=require", new_message(), T0, timeout=10)
    assert caught.value.exit_code == 75 and "SSL was required" in caught.value.message


def test_connection_refused_is_75_in_one_line_without_the_password() -> None:
    write_msmtprc()
    url = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test"
    env = sendmail_env(RELAYD_DATABASE_URL=url)
    sent = run_sendmail(["you@example.org"], b"Subject: hi\n\nhello\n", env=env)
    assert sent.returncode == 75
    line = error_line(sent)
    assert "127.0.0.1" in line and "refused" in line.lower() and "hunter2" not in line


def _lock_waiter(url: str) -> int | None:
    """The pid of the backend waiting for an advisory lock, if any."""
    with sa.create_engine(PG_URL).connect() as conn:
        return conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND strpos(query, 'pg_advisory_xact_lock_shared') > 0"
        ).scalar()


@pytest.fixture
def migration_lock(queue_url: str) -> Iterator[None]:
    """The migration lock held as a migrating relayd holds it, for the length of the test."""
    engine = sa.create_engine(queue_url)
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        yield
    engine.dispose()


def test_a_submission_waits_for_a_migration_then_times_out(
    queue_url: str, migration_lock: None
) -> None:
    write_msmtprc()
    env = sendmail_env(RELAYD_DATABASE_URL=queue_url, RELAYD_LOCK_TIMEOUT="1")
    started = time.monotonic()
    sent = run_sendmail(["you@example.org"], b"Subject: hi\n\nhello\n", env=env)
    assert sent.returncode == 75 and time.monotonic() - started >= 1
    assert "timed out" in error_line(sent)


def test_a_server_backend_killed_mid_submission_is_75_and_stores_nothing(
    queue_url: str, migration_lock: None
) -> None:
    write_msmtprc()
    env = sendmail_env(RELAYD_DATABASE_URL=queue_url)
    proc = subprocess.Popen(
        [SENDMAIL, "you@example.org"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=env["HOME"],
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"Subject: hi\n\nhello\n")
        proc.stdin.close()
        deadline = time.monotonic() + 20
        while (pid := _lock_waiter(queue_url)) is None:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        with sa.create_engine(PG_URL).connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        proc.wait(timeout=20)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 75
    assert err.count(b"\n") == 1 and b"cannot store the message" in err and out == b""
    assert row_total(queue_url) == 0


# --- logins and TLS, on a private server -------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with private_cluster() as running:
        SqlStore.open(running.url(query="sslmode=disable")).close()  # the schema, migrated
        yield running


def _submit(url: str) -> str | None:
    return pgfast.enqueue(url, new_message(), T0, timeout=10)


@pytest.mark.parametrize("role", [role for role, _, _ in ROLES])
def test_each_password_login(cluster: Cluster, role: str) -> None:
    # Without TLS, so the server's request is the one its pg_hba line names.
    assert _submit(cluster.url(role, PASSWORD, "sslmode=disable")) is not None
    with pytest.raises(QueueError) as caught:
        _submit(cluster.url(role, "wrong-pw", "sslmode=disable"))
    assert caught.value.exit_code == 75 and "authentication failed" in caught.value.message
    assert "wrong-pw" not in caught.value.message


def test_scram_over_tls(cluster: Cluster) -> None:
    assert _submit(cluster.url("scram_user", PASSWORD, "sslmode=require")) is not None


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_a_password_from_the_password_file(cluster: Cluster, mode: int) -> None:
    pgpass = Path(os.environ["HOME"]) / ".pgpass"
    pgpass.write_text(
        f"# comment\nother:*:*:*:nope\n127.0.0.1:{cluster.port}:relayd:md5_user:{PASSWORD}\n"
    )
    pgpass.chmod(mode)  # libpq ignores a file others may read
    if mode == 0o600:
        assert _submit(cluster.url("md5_user", query="sslmode=disable")) is not None
    else:
        with pytest.raises(QueueError, match="no password supplied"):
            _submit(cluster.url("md5_user", query="sslmode=disable"))


def test_a_role_without_privileges_is_73(cluster: Cluster) -> None:
    with pytest.raises(QueueError) as caught:
        _submit(cluster.url("nopriv_user", query="sslmode=disable"))
    assert caught.value.exit_code == 73 and "permission denied" in caught.value.message


def test_a_missing_password_is_75(cluster: Cluster) -> None:
    with pytest.raises(QueueError) as caught:
        _submit(cluster.url("md5_user", query="sslmode=disable"))
    assert caught.value.exit_code == 75 and "no password supplied" in caught.value.message


@pytest.mark.parametrize("sslmode", ["", "sslmode=prefer", "sslmode=require"])
def test_tls_is_used_as_libpq_would(cluster: Cluster, sslmode: str) -> None:
    # tls_user may only log in over TLS (pg_hba: hostnossl … reject).
    assert _submit(cluster.url("tls_user", query=sslmode)) is not None


def test_verify_full_checks_the_certificate(cluster: Cluster, tmp_path: Any) -> None:
    good = f"sslmode=verify-full&sslrootcert={cluster.ca_file}"
    assert _submit(cluster.url("tls_user", query=good)) is not None
    other = tmp_path / "other-ca.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(other))
    for query in (f"sslmode=verify-ca&sslrootcert={other}", "sslmode=verify-full"):
        with pytest.raises(QueueError) as caught:
            _submit(cluster.url("tls_user", query=query))
        assert caught.value.exit_code == 75


def test_disable_is_refused_by_a_server_that_requires_tls(cluster: Cluster) -> None:
    with pytest.raises(QueueError) as caught:
        _submit(cluster.url("tls_user", query="sslmode=disable"))
    assert caught.value.exit_code == 75 and "no encryption" in caught.value.message


def test_a_server_hanging_up_during_startup_is_75() -> None:
    # A listener that reads the startup message and closes: the server went away mid-login.

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(QueueError) as caught:
            _submit(f"postgresql+psycopg://u:pw@127.0.0.1:{port}/db?sslmode=disable")
    finally:
        thread.join(10)
        listener.close()
    assert caught.value.exit_code == 75 and "closed the connection" in caught.value.message


# --- URLs read as SQLAlchemy reads them --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:p%40ss%2Fw@db.example:6543/queue",
        "postgresql+psycopg://u@db.example/queue?sslmode=require&application_name=relay+d",
        "postgresql+psycopg://u:pa:ss@[::1]:5433/q%20x",
        "postgresql+psycopg:///queue?host=/run/pg&options=-csearch_path%3Dx",
        "postgresql+psycopg://db.example/queue",
        "postgresql+psycopg://u:@h/",
    ],
)
def test_urls_are_read_as_sqlalchemy_reads_them(url: str) -> None:
    parsed = sa.make_url(url)
    expected = {
        k: str(v)
        for k, v in parsed.translate_connect_args(username="user", database="dbname").items()
        if v
    }
    if parsed.password == "":
        expected["password"] = ""
    expected.update({k: str(v) for k, v in parsed.query.items()})
    settings, shown = pgtarget.parse_url(url)
    assert settings == expected
    if parsed.password is not None:
        assert ":***@" in shown and (parsed.password == "" or parsed.password not in shown)
    else:
        assert shown == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "postgresql+psycopg://u@h/db?host=h1:5432&host=h2:5432",
        "postgresql+psycopg://u@h/db?host=h1,h2",
        "postgresql+psycopg://u@h/db?sslcert=/x",
        "postgresql+psycopg://u@h/db?target_session_attrs=read-write",
    ],
)
def test_what_pgwire_does_not_read_is_left_to_psycopg(url: str) -> None:
    with pytest.raises(pgtarget.Unsupported):
        pgtarget.target(url, {})


# --- SCRAM against an independent implementation (scramp's server side) ----------------------


def _scramp_server(password: str) -> Any:
    from scramp import ScramMechanism

    mechanism = ScramMechanism("SCRAM-SHA-256")
    auth_info = mechanism.make_auth_info(password, iteration_count=4096)
    return mechanism.make_server(lambda _user: auth_info)


def test_scram_agrees_with_scramp_and_checks_the_server() -> None:
    from relayd.store.pgscram import Scram, ScramError

    client, server = Scram("pa:ss,word", "re=lay,d"), _scramp_server("pa:ss,word")
    server.set_client_first(client.first().decode())
    final = client.final(server.get_server_first().encode())
    server.set_client_final(final.decode())  # scramp checks the client's proof
    client.verify(server.get_server_final().encode())
    assert client.verified

    # A server that does not know the password cannot prove it: its signature is refused.
    client, impostor = Scram("pa:ss,word", "re=lay,d"), _scramp_server("something else")
    impostor.set_client_first(client.first().decode())
    client.final(impostor.get_server_first().encode())
    forged = b"v=" + binascii.b2a_base64(b"\0" * 32, newline=False)
    with pytest.raises(ScramError):
        client.verify(forged)
    assert not client.verified
