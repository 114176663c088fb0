"""TLS (STARTTLS, implicit, trust, pins, client certificates) and AUTH (choice, mechanisms)."""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relayd.accounts.account import Account
from relayd.delivery import auth
from relayd.delivery.classify import Failure
from relayd.delivery.result import DeliveryResult, Disposition, Event, Reply
from relayd.delivery.session import PasswordSource, Session, deliver
from relayd.errors import ConfigError
from tests.test_delivery_session import account, message, run, send
from tests.upstream import AuthAttempt, Fault, Features, TlsMode, UpstreamServer

SENT, RETRY, FAIL, HOLD = Disposition.SENT, Disposition.RETRY, Disposition.FAIL, Disposition.HOLD
NOT_TRUSTED = "TLS certificate verification failed: The certificate is NOT trusted. "


def tls_account(server: UpstreamServer, **settings: Any) -> Account:
    assert server.certificates is not None
    base = {"tls": True, "tls_trust_file": str(server.certificates.ca_file)}
    if server.tls == "implicit":
        base["tls_starttls"] = False
    return account(server, **(base | settings))


@pytest.fixture(params=["starttls", "implicit"])
def tls_server(request: pytest.FixtureRequest) -> Iterator[UpstreamServer]:
    mode: TlsMode = request.param
    with UpstreamServer(tls=mode, features=Features(auth=("PLAIN",))) as server:
        yield server


@pytest.fixture
def other_ca(tmp_path: Path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


# -- TLS -------------------------------------------------------------------------------------------


def test_tls_with_the_test_ca(tls_server: UpstreamServer) -> None:
    async def scenario() -> tuple[Session, DeliveryResult]:
        async with Session(tls_account(tls_server), timeout=5) as session:
            return session, await session.send(message())

    session, result = run(scenario())
    assert result.disposition is SENT
    assert session.facts.tls_version in ("TLSv1.2", "TLSv1.3")
    assert tls_server.certificates is not None
    assert session.facts.peer_certificate == tls_server.certificates.server_der
    if tls_server.tls == "starttls":
        assert session.facts.ehlo_before_tls is not None
        assert "STARTTLS" in session.facts.ehlo_before_tls.lines
        assert tls_server.commands[:4] == [
            "CONNECT",
            "EHLO localhost",
            "STARTTLS",
            "EHLO localhost",
        ]


def test_wrong_ca_holds(tls_server: UpstreamServer, other_ca: str) -> None:
    (result,) = send(tls_account(tls_server, tls_trust_file=other_ca))
    assert (result.disposition, result.exit_code) == (HOLD, 69)
    assert result.error == NOT_TRUSTED + "The certificate issuer is unknown. "
    assert not any(c.startswith("MAIL") for c in tls_server.commands)


def test_host_override_names_the_certificate(tls_server: UpstreamServer) -> None:
    (good,) = send(tls_account(tls_server, tls_host_override="upstream.test"))
    (bad,) = send(tls_account(tls_server, tls_host_override="other.test"))
    assert good.disposition is SENT
    assert (bad.disposition, bad.exit_code) == (HOLD, 69)
    assert bad.error == NOT_TRUSTED + "The name in the certificate does not match the expected. "


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_fingerprint_pin(tls_server: UpstreamServer, other_ca: str, algorithm: str) -> None:
    assert tls_server.certificates is not None
    pin = tls_server.certificates.fingerprint(algorithm)
    (result,) = send(tls_account(tls_server, tls_trust_file=other_ca, tls_fingerprint=pin))
    assert result.disposition is SENT


def test_fingerprint_mismatch_holds_before_anything_is_sent(tls_server: UpstreamServer) -> None:
    wrong = ":".join(["AB"] * 32)
    (result,) = send(tls_account(tls_server, tls_fingerprint=wrong))
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        69,
        "TLS certificate verification failed: the certificate fingerprint does not match",
    )
    after_tls = tls_server.commands[3:] if tls_server.tls == "starttls" else tls_server.commands[1:]
    assert after_tls == []


def test_certcheck_off_trusts_anything(tls_server: UpstreamServer, other_ca: str) -> None:
    (result,) = send(tls_account(tls_server, tls_trust_file=other_ca, tls_certcheck=False))
    assert result.disposition is SENT


def test_no_starttls_offered_holds_and_never_sends_in_plaintext() -> None:
    with UpstreamServer() as server:
        (result,) = send(account(server, tls=True))
        commands = server.commands
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        69,
        "the server does not support TLS via the STARTTLS command",
    )
    assert commands == ["CONNECT", "EHLO localhost", "QUIT"]


def test_starttls_refused() -> None:
    with UpstreamServer(tls="starttls") as server:
        server.fail("STARTTLS", Fault(reply="454 4.7.0 TLS not available"))
        (result,) = send(tls_account(server))
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        76,
        "command STARTTLS failed",
    )


def test_plaintext_injected_after_starttls_is_refused() -> None:
    """Bytes that follow the 220 before the handshake would be read as if encrypted (the
    STARTTLS command injection): msmtp refuses them, so does relayd."""
    greeting = b"220 hi\r\n"
    ehlo = b"250-mx\r\n250 STARTTLS\r\n"
    answers = [ehlo, b"220 go ahead\r\n250 injected\r\n"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        for answer in answers:
            await reader.readline()
            writer.write(answer)
        await reader.read()
        writer.close()

    async def scenario() -> DeliveryResult:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            (result,) = await deliver(account(port=port, tls=True), [message()], timeout=5)
        return result

    result = run(scenario())
    assert (result.disposition, result.exit_code, result.error) == (
        RETRY,
        76,
        "command STARTTLS failed",
    )


def test_implicit_tls_to_a_plaintext_server() -> None:
    with UpstreamServer() as server:
        (result,) = send(account(server, tls=True, tls_starttls=False, tls_certcheck=False))
    assert (result.disposition, result.exit_code) == (RETRY, 76)
    assert result.error is not None and result.error.startswith("TLS handshake failed: ")


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        (
            "tls_trust_file",
            "cannot set X509 trust file {} for TLS session: Error while reading file.",
        ),
        ("tls_crl_file", "cannot set X509 CRL file {} for TLS session: Error while reading file."),
    ],
)
def test_unreadable_tls_file_holds_without_connecting(
    tmp_path: Path, setting: str, error: str
) -> None:
    missing = str(tmp_path / "missing.pem")
    with UpstreamServer(tls="starttls") as server:
        (result,) = send(tls_account(server, **{setting: missing}))
        commands = server.commands
    assert (result.disposition, result.exit_code, result.error) == (HOLD, 66, error.format(missing))
    assert commands == []


def test_unusable_trust_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    (result,) = send(account(tls=True, tls_trust_file=str(garbage)))
    assert result.exit_code == 66
    assert result.error == f"cannot set X509 trust file {garbage} for TLS session: Success."


def test_unreadable_key_file(tmp_path: Path) -> None:
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    (result,) = send(account(tls=True, tls_key_file=key, tls_cert_file=cert))
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        66,
        f"cannot set X509 key file {key} and/or X509 cert file {cert} for TLS session: "
        "Error while reading file.",
    )


# -- AUTH: every mechanism -------------------------------------------------------------------------

MECHANISMS = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "XOAUTH2",
    "OAUTHBEARER",
]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("password", "good"), [("secret", True), ("wrong", False)])
def test_each_mechanism(mechanism: str, password: str, good: bool) -> None:
    with UpstreamServer(features=Features(auth=(mechanism,), auth_required=True)) as server:
        acc = account(server, auth=mechanism, user="user", password=password)
        (result,) = send(acc)
        attempts = server.auth_attempts
    assert attempts == [AuthAttempt(mechanism, "user", good)]
    if good:
        assert result.disposition is SENT
    else:
        assert (result.disposition, result.exit_code) == (HOLD, 77)
        assert result.error == f"authentication failed (method {mechanism})"
        assert result.reply is not None and result.reply.code == 535


def test_msmtp_wire_for_plain_and_oauthbearer() -> None:
    """AUTH lines as Debian's msmtp 1.8.23 sends them (seen with -d)."""
    with UpstreamServer(features=Features(auth=("PLAIN", "OAUTHBEARER"))) as server:
        send(account(server, auth="PLAIN", user="user", password="secret"))
        send(account(server, auth="OAUTHBEARER", user="user", password="secret"))
        auth_lines = [c for c in server.commands if c.startswith("AUTH")]
        port = server.port
    oauth = f"n,a=user,\1host=127.0.0.1\1port={port}\1auth=Bearer secret\1\1".encode()
    assert auth_lines == [
        "AUTH PLAIN AHVzZXIAc2VjcmV0",
        "AUTH OAUTHBEARER " + base64.b64encode(oauth).decode(),
    ]


@pytest.mark.parametrize(("user", "good"), [("user", True), ("", True), ("stranger", False)])
def test_external_with_a_client_certificate(user: str, good: bool) -> None:
    with UpstreamServer(tls="starttls", features=Features(auth=("EXTERNAL",))) as server:
        assert server.certificates is not None
        certs = server.certificates
        acc = tls_account(
            server,
            auth="EXTERNAL",
            user=user or None,
            tls_cert_file=str(certs.client_cert_file),
            tls_key_file=str(certs.client_key_file),
        )
        (result,) = send(acc)
    assert result.disposition is (SENT if good else HOLD)


def test_temporary_auth_failure_is_retried() -> None:
    with UpstreamServer(features=Features(auth=("PLAIN",))) as server:
        server.fail("AUTH", Fault(reply="454 4.7.0 Temporary authentication failure"))
        (result,) = send(account(server, auth="PLAIN", user="user", password="secret"))
    assert (result.disposition, result.exit_code) == (RETRY, 77)


def test_debug_masks_auth_data() -> None:
    lines: list[str] = []
    with UpstreamServer(features=Features(auth=("LOGIN", "PLAIN"))) as server:
        for method in ("PLAIN", "LOGIN"):
            acc = account(server, auth=method, user="user", password="secret")
            run(deliver(acc, [message()], debug=lines.append, timeout=5))
    sent = [line for line in lines if line.startswith("--> ")]
    assert "--> AUTH PLAIN ********" in sent
    assert sent.count("--> ********") == 2  # LOGIN's user name and password
    assert not any("c2VjcmV0" in line or "dXNlcg" in line for line in lines)


# -- AUTH: msmtp's choice and what stops it --------------------------------------------------------


def test_choice_without_tls_is_scram_only() -> None:
    with UpstreamServer(features=Features(auth=("PLAIN", "LOGIN", "CRAM-MD5"))) as server:
        (result,) = send(account(server, auth="", user="user", password="secret"))
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        69,
        "cannot use a secure authentication method",
    )
    with UpstreamServer(features=Features(auth=("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"))) as s:
        (result,) = send(account(s, auth="", user="user", password="secret"))
        assert result.disposition is SENT
        assert s.auth_attempts == [AuthAttempt("SCRAM-SHA-256", "user", True)]


def test_choice_with_tls_prefers_plain() -> None:
    offered = ("LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "PLAIN", "EXTERNAL")
    with UpstreamServer(tls="starttls", features=Features(auth=offered)) as server:
        (result,) = send(tls_account(server, auth="", user="user", password="secret"))
        assert result.disposition is SENT
        assert server.auth_attempts == [AuthAttempt("PLAIN", "user", True)]


@pytest.mark.parametrize(
    ("offered", "tls", "expected"),
    [
        ({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "LOGIN"}, True, "PLAIN"),
        ({"SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "LOGIN"}, True, "SCRAM-SHA-256"),
        ({"SCRAM-SHA-1", "CRAM-MD5", "LOGIN"}, True, "SCRAM-SHA-1"),
        ({"CRAM-MD5", "LOGIN"}, True, "CRAM-MD5"),
        ({"LOGIN", "XOAUTH2", "EXTERNAL"}, True, "LOGIN"),
        ({"GSSAPI", "XOAUTH2", "OAUTHBEARER", "EXTERNAL"}, True, Event.AUTH_NO_USABLE_METHOD),
        ({"PLAIN", "SCRAM-SHA-1"}, False, "SCRAM-SHA-1"),
        ({"PLAIN", "CRAM-MD5", "LOGIN"}, False, Event.AUTH_NO_SECURE_METHOD),
    ],
)
def test_automatic_choice(offered: set[str], tls: bool, expected: str | Event) -> None:
    chosen = auth.choose("", frozenset(offered), tls)
    if isinstance(expected, Event):
        assert isinstance(chosen, Failure) and chosen.event is expected
    else:
        assert chosen == expected


def test_explicit_method_without_tls_is_used_as_msmtp_does() -> None:
    assert auth.choose("PLAIN", frozenset({"PLAIN"}), False) == "PLAIN"


@pytest.mark.parametrize(
    ("features", "settings", "error"),
    [
        (Features(), {"auth": "PLAIN"}, "the server does not support authentication"),
        (
            Features(auth=("LOGIN",)),
            {"auth": "PLAIN"},
            "the server does not support authentication method PLAIN",
        ),
        (
            Features(auth=("PLAIN",)),
            {"auth": "PLAIN", "user": None},
            "authentication method PLAIN needs a user name",
        ),
        (
            Features(auth=("PLAIN",)),
            {"auth": "PLAIN", "password": None},
            "authentication method PLAIN needs a password",
        ),
    ],
)
def test_what_stops_auth(features: Features, settings: dict[str, Any], error: str) -> None:
    with UpstreamServer(features=features) as server:
        acc = account(server, **({"user": "user", "password": "secret"} | settings))
        (result,) = send(acc)
        commands = server.commands
    assert (result.disposition, result.exit_code, result.error) == (HOLD, 69, error)
    assert not any(c.startswith("MAIL") for c in commands)
    if error == "the server does not support authentication":
        assert commands[-1] == "QUIT"


@pytest.mark.parametrize("method", ["GSSAPI", "NTLM", "DIGEST-MD5"])
def test_methods_not_compiled_in_fail_before_connecting(method: str) -> None:
    with UpstreamServer(features=Features(auth=(method,))) as server:
        (result,) = send(account(server, auth=method, user="user", password="secret"))
        commands = server.commands
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        69,
        f"support for authentication method {method} is not compiled in",
    )
    assert commands == []


def _with_password(source: PasswordSource) -> DeliveryResult:
    with UpstreamServer(features=Features(auth=("PLAIN",))) as server:
        acc = account(server, auth="PLAIN", user="user")
        (result,) = run(deliver(acc, [message()], password=source, timeout=5))
    return result


def test_password_from_a_sync_or_async_lookup() -> None:
    seen: list[str | None] = []

    def lookup(acc: Account) -> str:
        seen.append(acc.user)
        return "secret"

    async def async_lookup(acc: Account) -> str | None:
        await asyncio.sleep(0)
        return "secret"

    assert _with_password(lookup).disposition is SENT
    assert seen == ["user"]
    assert _with_password(async_lookup).disposition is SENT
    missing = _with_password(lambda acc: None)
    assert missing.error == "authentication method PLAIN needs a password"


def test_password_lookup_error_holds_with_its_code() -> None:
    def broken(acc: Account) -> str:
        raise ConfigError("cannot read output of 'pass show smtp'")

    result = _with_password(broken)
    assert (result.disposition, result.exit_code, result.error) == (
        HOLD,
        78,
        "cannot read output of 'pass show smtp'",
    )


def test_auth_after_starttls_only() -> None:
    features = Features(auth=("PLAIN",), auth_needs_tls=True)
    with UpstreamServer(tls="starttls", features=features) as server:
        (result,) = send(tls_account(server, auth="", user="user", password="secret"))
    assert result.disposition is SENT


def test_bad_challenge_is_a_protocol_error() -> None:
    replies: list[Reply] = [Reply(334, ("!!not base64!!",))]

    async def exchange(line: str, secret: bool) -> Reply:
        return replies.pop(0)

    failure = run(auth.authenticate(auth.mechanism("LOGIN", "u", "p", "h", 25), exchange))
    assert failure is not None
    assert (failure.exit_code, failure.error) == (
        76,
        "authentication method LOGIN: server sent invalid challenge",
    )


def _crl(server: UpstreamServer, path: Path, *, revoke: bool) -> str:
    """A CRL from the test CA, revoking the server certificate or nothing."""
    assert server.certificates is not None
    certs = server.certificates
    key = serialization.load_pem_private_key(certs.ca.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    issuer = x509.load_pem_x509_certificate(certs.ca.cert_pem.bytes()).subject
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(issuer)
    builder = builder.last_update(now - datetime.timedelta(days=1))
    builder = builder.next_update(now + datetime.timedelta(days=1))
    if revoke:
        serial = x509.load_der_x509_certificate(certs.server_der).serial_number
        revoked = x509.RevokedCertificateBuilder().serial_number(serial)
        builder = builder.add_revoked_certificate(revoked.revocation_date(now).build())
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.parametrize("revoke", [False, True])
def test_crl_file(tmp_path: Path, revoke: bool) -> None:
    with UpstreamServer(tls="starttls") as server:
        crl = _crl(server, tmp_path / "ca.crl", revoke=revoke)
        (result,) = send(tls_account(server, tls_crl_file=crl))
    if revoke:
        assert (result.disposition, result.exit_code) == (HOLD, 69)
        assert result.error == NOT_TRUSTED + "The certificate chain is revoked. "
    else:
        assert result.disposition is SENT
