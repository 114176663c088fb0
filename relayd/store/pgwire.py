"""A minimal PostgreSQL client (frontend/backend protocol 3.0) for the sendmail fast path.

Hand-written because the submission's budget cannot pay for a driver: importing psycopg alone
costs ~600 M instructions (100-200 ms), SQLAlchemy more, and SPEC §6 allows 60 ms for a whole
submission. This module uses the standard library only (`_socket`; `hashlib`/`hmac` when the
server asks for a password; `ssl` only when the connection is encrypted), and does only what a
submission needs: connect over TCP or a Unix socket, TLS as libpq's `sslmode` says, the trust,
cleartext, MD5 and SCRAM-SHA-256 logins (SCRAM by hand: importing scramp costs ~250 M
instructions), the extended query protocol with text parameters and binary `bytea`, and a
DB-API-like cursor so `fastpath.insert` runs on it unchanged. What it does not do (another
login method, a client certificate) raises
`pgtarget.Unsupported` before anything is written: the caller then goes through psycopg.
"""

from __future__ import annotations

import _socket

from relayd.store.pgtarget import Error, Target, Unsupported, password_from_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

PROTOCOL = (3 << 16).to_bytes(4, "big")
SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
BYTEA_OID = 17
_INT_OIDS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid: returned as int
_SYNC_EVERY = 32  # executemany: rows sent before waiting for the server's answers


class DatabaseError(Error):
    """An ErrorResponse: `sqlstate` is its code (e.g. "23505"), str() its message and detail."""

    def __init__(self, fields: dict[str, str]) -> None:
        message = fields.get("M", "error")
        detail = fields.get("D")
        super().__init__(f"{message} ({detail})" if detail else message)
        self.sqlstate = fields.get("C", "")
        self.fields = fields


class IntegrityError(DatabaseError):
    """A constraint refused a row (SQLSTATE class 23): `fastpath.insert` retries a queue id."""


def _error(fields: dict[str, str]) -> DatabaseError:
    kind = IntegrityError if fields.get("C", "").startswith("23") else DatabaseError
    return kind(fields)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


class Connection:
    """One session with the server, logged in when built (Error when the server cannot be
    reached or refuses us, Unsupported when only psycopg could log in); every statement runs
    in the caller's transaction."""

    def __init__(self, target: Target, timeout: float) -> None:
        self._target = target
        self._buffer = bytearray()
        self._types: list[int] = []
        self._pending = bytearray()  # deferred statements, sent with the next Sync
        self._queued = 0
        self.tag = ""  # the last CommandComplete's tag, e.g. "COMMIT"
        self.status = b""  # the last ReadyForQuery's: b"I" idle, b"T" in a transaction, b"E" failed
        self._sock: Any = _open_socket(target, timeout)
        try:
            if target.unix_socket is None and target.sslmode != "disable":
                self._start_tls(timeout)
            self._login()
        except BaseException:
            self._sock.close()
            raise

    # --- the wire ---------------------------------------------------------------------------

    def _send(self, data: bytes | bytearray) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise Error(f"lost the connection to the server: {_reason(exc)}") from None

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise Error(f"lost the connection to the server: {_reason(exc)}") from None
            if not chunk:
                raise Error("the server closed the connection unexpectedly")
            self._buffer += chunk

    def _receive(self) -> tuple[bytes, bytes]:
        """The next backend message: (type byte, body). A NoticeResponse is skipped."""
        while True:
            self._fill(5)
            length = int.from_bytes(self._buffer[1:5], "big")
            self._fill(1 + length)
            kind, body = bytes(self._buffer[:1]), bytes(self._buffer[5 : 1 + length])
            del self._buffer[: 1 + length]
            if kind != b"N":
                return kind, body

    # --- startup ----------------------------------------------------------------------------

    def _start_tls(self, timeout: float) -> None:
        target = self._target
        self._send(SSL_REQUEST)
        self._fill(1)
        answer = bytes(self._buffer[:1])
        del self._buffer[:1]
        if answer != b"S":
            if target.sslmode in ("disable", "allow", "prefer"):
                return
            raise Error("server does not support SSL, but SSL was required")
        if self._buffer:  # bytes sent in the clear before the handshake: not the server's
            raise Error("received unencrypted data after the SSL response")
        from relayd.store import pgtls  # `ssl` costs ~40 M instructions: only when encrypting

        self._sock = pgtls.wrap(self._sock, target, timeout)

    def _login(self) -> None:
        target = self._target
        params = {"user": target.user, "database": target.dbname, "client_encoding": "UTF8"}
        if target.options:
            params["options"] = target.options
        if target.application_name:
            params["application_name"] = target.application_name
        body = PROTOCOL + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
        self._send((len(body) + 4).to_bytes(4, "big") + body)
        scram = None
        while True:
            kind, body = self._receive()
            if kind == b"E":
                raise _error(_fields(body))
            if kind == b"Z":
                return
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData
            code = int.from_bytes(body[:4], "big")
            if code == 0:
                if scram is not None and not scram.verified:
                    raise Error("the server ended SCRAM without proving it knows the password")
                continue
            if code == 3:
                self._send(_message(b"p", self._password().encode() + b"\0"))
            elif code == 5:
                self._send(_message(b"p", _md5(self._password(), target.user, body[4:8])))
            elif code == 10:
                mechanisms = body[4:].split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise Unsupported("a SASL mechanism other than SCRAM-SHA-256")
                from relayd.store.pgscram import Scram

                scram = Scram(self._password())
                first = scram.first()
                self._send(
                    _message(b"p", _cstr("SCRAM-SHA-256") + len(first).to_bytes(4, "big") + first)
                )
            elif code == 11 and scram is not None:
                self._send(_message(b"p", scram.final(body[4:])))
            elif code == 12 and scram is not None:
                scram.verify(body[4:])
            else:
                raise Unsupported(f"authentication request {code}")

    def _password(self) -> str:
        password = self._target.password
        if password is None:
            password = password_from_file(self._target)
        if password is None:
            raise Error("fe_sendauth: no password supplied")
        return password

    # --- statements -------------------------------------------------------------------------

    def run(self, sql: str) -> list[tuple[Any, ...]]:
        """Run `sql` (one statement or several, no parameters) as a simple query; the rows of
        the last one that returned any."""
        self._flush()
        self._send(_message(b"Q", _cstr(sql)))
        return self._results()

    def _results(self) -> list[tuple[Any, ...]]:
        """Read up to ReadyForQuery; the rows returned, or the first ErrorResponse raised. A
        RowDescription's column types hold for the rows that follow, across batches."""
        rows: list[tuple[Any, ...]] = []
        failure: DatabaseError | None = None
        while True:
            kind, body = self._receive()
            if kind == b"T":
                self._types, rows = _row_types(body), []
            elif kind == b"D":
                rows.append(_row(body, self._types))
            elif kind == b"C":
                self.tag = body.rstrip(b"\0").decode()
            elif kind == b"E" and failure is None:
                failure = _error(_fields(body))
            elif kind == b"Z":
                self.status = body[:1]
                if failure is not None:
                    raise failure
                return rows

    def _queue(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Add `sql` (placeholders $1, $2…) once per row of `rows` to what goes out next;
        every _SYNC_EVERY rows go out at once (their answers read, no rows kept)."""
        parse = None
        for values in rows:
            if parse is None:
                types = b"".join(
                    (BYTEA_OID if isinstance(v, (bytes, bytearray)) else 0).to_bytes(4, "big")
                    for v in values
                )
                parse = _cstr("") + _cstr(sql) + len(values).to_bytes(2, "big") + types
                self._pending += _message(b"P", parse)
                self._pending += _message(b"D", b"S\0")  # the statement's row description
            self._pending += _bind(values)
            self._pending += _message(b"E", b"\0\0\0\0\0")
            self._queued += 1
            if self._queued >= _SYNC_EVERY:
                self._flush()

    def _flush(self) -> list[tuple[Any, ...]]:
        """Send what is queued and a Sync; the rows returned (the first error raised)."""
        if not self._pending:
            return []
        data = self._pending + _message(b"S", b"")
        self._pending, self._queued = bytearray(), 0
        self._send(data)
        return self._results()

    def execute(self, sql: str, rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Run `sql` once per row of `rows` now, after what was deferred; the rows returned."""
        self._queue(sql, rows)
        return self._flush()

    def defer(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run `sql` once per row of `rows` with the next `execute` or `commit`, in the same
        round trip; a failure surfaces there (it aborts the transaction either way)."""
        self._queue(sql, rows)

    def commit(self) -> None:
        """COMMIT after what was deferred; Error unless the server acknowledged it."""
        self._queue("COMMIT", [()])
        self._flush()
        if self.tag != "COMMIT" or self.status != b"I":
            raise Error(f"the server answered {self.tag or 'nothing'} to COMMIT")

    def cursor(self) -> Cursor:
        return Cursor(self)

    def close(self) -> None:
        """Say goodbye (Terminate) and close the socket; never raises."""
        try:
            self._sock.sendall(_message(b"X", b""))
        except OSError:
            pass  # a server already gone has nothing to be told
        finally:
            self._sock.close()


class Cursor:
    """The DB-API subset `fastpath.insert` uses: execute, executemany, fetchone. A statement
    that returns no rows (no RETURNING, not a SELECT) is deferred to the next one that does, or
    to the commit: a submission makes three round trips after its login, not one a statement."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, values: Sequence[Any] = ()) -> None:
        if " RETURNING " in sql or sql.startswith("SELECT"):
            self._rows = self._conn.execute(sql, [values])
        else:
            self._conn.defer(sql, [values])
            self._rows = []

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.defer(sql, rows)
        self._rows = []

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None


def _bind(values: Sequence[Any]) -> bytes:
    """A Bind of the unnamed statement: bytes in binary, everything else as text."""
    formats = b"".join(
        (1 if isinstance(v, (bytes, bytearray)) else 0).to_bytes(2, "big") for v in values
    )
    parts = [b"\0\0", len(values).to_bytes(2, "big"), formats, len(values).to_bytes(2, "big")]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
            continue
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        elif isinstance(value, bool):
            data = b"true" if value else b"false"
        elif isinstance(value, float):
            data = repr(value).encode()
        else:
            data = str(value).encode()
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    parts.append(b"\0\0")  # every result column in text
    return _message(b"B", b"".join(parts))


def _row_types(body: bytes) -> list[int]:
    count = int.from_bytes(body[:2], "big")
    types, at = [], 2
    for _ in range(count):
        at = body.index(b"\0", at) + 1  # the column's name
        types.append(int.from_bytes(body[at + 6 : at + 10], "big"))
        at += 18
    return types


def _row(body: bytes, types: list[int]) -> tuple[Any, ...]:
    count = int.from_bytes(body[:2], "big")
    values: list[Any] = []
    at = 2
    for column in range(count):
        size = int.from_bytes(body[at : at + 4], "big", signed=True)
        at += 4
        if size < 0:
            values.append(None)
            continue
        text = body[at : at + size].decode()
        at += size
        values.append(int(text) if types[column] in _INT_OIDS else text)
    return tuple(values)


def _fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's fields by their one-letter codes."""
    return {
        part[:1].decode(): part[1:].decode("utf-8", "replace") for part in body.split(b"\0") if part
    }


def _md5(password: str, user: str, salt: bytes) -> bytes:
    import hashlib

    inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\0"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _open_socket(target: Target, timeout: float) -> Any:
    """A connected socket to the server, as libpq would reach it (each address in turn)."""
    path = target.unix_socket
    if path is not None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise Error(f'connection to server on socket "{path}" failed: {_reason(exc)}') from None
        return sock
    place = f'connection to server at "{target.host}", port {target.port} failed'
    try:
        # An ASCII name as bytes: a str goes through the idna codec, which loads re.
        host = target.host.encode() if target.host.isascii() else target.host
        addresses = _socket.getaddrinfo(host, target.port, _socket.AF_UNSPEC, _socket.SOCK_STREAM)
    except OSError as exc:
        raise Error(f'could not translate host name "{target.host}": {_reason(exc)}') from None
    failure = ""
    for family, kind, proto, _name, address in addresses:
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            failure = _reason(exc)
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock
    raise Error(f"{place}: {failure}")


__all__ = ["Connection", "DatabaseError", "Error", "IntegrityError", "Unsupported"]
