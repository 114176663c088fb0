"""A private PostgreSQL server for tests that need logins the shared one (trust) cannot give:
cleartext, MD5 and SCRAM passwords, TLS with a test CA (trustme). Started with the machine's
initdb/pg_ctl as the `postgres` user; tests skip, saying why, where that is not possible."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import trustme

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "s3cret-pw"
# (role, password_encryption, pg_hba method); `tls_user` may only log in over TLS,
# `nopriv_user` (trust) has no privilege on the queue's tables.
ROLES = (
    ("pw_user", "scram-sha-256", "password"),
    ("md5_user", "md5", "md5"),
    ("scram_user", "scram-sha-256", "scram-sha-256"),
)
HBA = """\
local all all trust
hostnossl all tls_user 127.0.0.1/32 reject
host all tls_user 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all nopriv_user 127.0.0.1/32 trust
host all pw_user 127.0.0.1/32 password
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
"""


class Cluster:
    """A running private server: `url(user, ...)` names its `relayd` database."""

    def __init__(self, root: Path, port: int, ca: trustme.CA) -> None:
        self.root, self.port, self.ca = root, port, ca
        self.ca_file = root / "ca.pem"

    def url(
        self,
        user: str = "postgres",
        password: str | None = None,
        query: str = "",
        dbname: str = "relayd",
    ) -> str:
        auth = user if password is None else f"{user}:{password}"
        tail = f"?{query}" if query else ""
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{dbname}{tail}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*args: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60
    )


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "a private PostgreSQL server needs root (to run it as the postgres user)"
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        return f"no {PG_BIN}/initdb or runuser on this machine"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user on this machine"
    return None


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """initdb, TLS on (a trustme CA; the certificate names localhost and 127.0.0.1), the roles
    of ROLES with their passwords, a `relayd` database; stopped and removed afterwards."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="relayd-pgwire-"))
    data = root / "data"
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cluster = Cluster(root, _free_port(), ca)
    started = False
    try:
        os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        _as_postgres(*initdb, "--no-sync", "-E", "UTF8")
        cert.cert_chain_pems[0].write_to_path(str(data / "server.crt"))
        cert.private_key_pem.write_to_path(str(data / "server.key"))
        for name in ("server.crt", "server.key"):
            os.chown(data / name, pwd.getpwnam("postgres").pw_uid, -1)
            os.chmod(data / name, 0o600)
        (data / "pg_hba.conf").write_text(HBA)
        options = (
            f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on"
        )
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log")]
        _as_postgres(*pg_ctl, "-o", options, "-w", "start")
        started = True
        admin = sa.create_engine(
            cluster.url(query="sslmode=disable", dbname="postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE relayd")
            conn.exec_driver_sql("CREATE ROLE tls_user LOGIN SUPERUSER")
            conn.exec_driver_sql("CREATE ROLE nopriv_user LOGIN")  # may not touch the queue
            for role, encryption, _method in ROLES:
                conn.exec_driver_sql(f"SET password_encryption = '{encryption}'")
                conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        admin.dispose()
        yield cluster
    finally:
        if started:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
