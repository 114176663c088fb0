"""`--serverinfo` text (research/msmtp.md §4.2): relayd.delivery.serverinfo against msmtp 1.8.23.

The expected texts are msmtp's own output, recorded from Debian's msmtp 1.8.23 against a
crafted server on loopback; the tests at the end run that comparison live when msmtp is
installed (required in CI through RELAYD_REQUIRE_MSMTP=1).
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from relayd.delivery.ehlo import Capabilities, parse
from relayd.delivery.serverinfo import (
    CertificateInfo,
    ServerInfo,
    TLSInfo,
    ctime_text,
    fingerprint_text,
    format_serverinfo,
    tls_description,
)
from tests.sendmail_helpers import run_sendmail, sendmail_env


def lines(*text: str) -> str:
    """Output lines, each newline-terminated (some end in a space, as msmtp prints them)."""
    return "".join(f"{line}\n" for line in text)


LOCAL: dict[str, Any] = {"canonical_name": "localhost", "address": "127.0.0.1"}

# msmtp.md §4.2: aiosmtpd 1.4.6 with an authenticator and data_size_limit=10485760.
AIOSMTPD_EHLO = ("localhost", "SIZE 10485760", "8BITMIME", "SMTPUTF8", "AUTH LOGIN PLAIN", "HELP")
AIOSMTPD_TEXT = lines(
    "SMTP server at 127.0.0.1 (localhost [127.0.0.1]), port 2526:",
    "    localhost Python SMTP 1.4.6",
    "Capabilities:",
    "    SIZE 10485760:",
    "        Maximum message size is 10485760 bytes = 10.00 MiB",
    "    AUTH:",
    "        Supported authentication methods:",
    "        PLAIN LOGIN ",
)

CRAFTED_EHLO = (
    "sink.test",
    "PIPELINING",
    "SIZE 52428800",
    "ETRN",
    "STARTTLS",
    "AUTH PLAIN SCRAM-SHA-256 CRAM-MD5 LOGIN OAUTHBEARER XOAUTH2",
    "DSN",
    "8BITMIME",
    "SMTPUTF8",
)
CRAFTED_TEXT = lines(
    "SMTP server at 127.0.0.1 (localhost [127.0.0.1]), port 2601:",
    "    sink.test ESMTP ready",
    "Capabilities:",
    "    SIZE 52428800:",
    "        Maximum message size is 52428800 bytes = 50.00 MiB",
    "    PIPELINING:",
    "        Support for command grouping for faster transmission",
    "    ETRN:",
    "        Support for RMQS (Remote Message Queue Starting)",
    "    DSN:",
    "        Support for Delivery Status Notifications",
    "    STARTTLS:",
    "        Support for TLS encryption via the STARTTLS command",
    "    AUTH:",
    "        Supported authentication methods:",
    "        PLAIN SCRAM-SHA-256 CRAM-MD5 LOGIN OAUTHBEARER XOAUTH2 ",
    "This server might advertise more or other capabilities when TLS is active.",
)

# A self-signed ECDSA certificate and msmtp 1.8.23's --serverinfo for a server presenting it
# (implicit TLS, TZ=UTC): multi-valued RDN, a control character and UTF-8 in the issuer.
MULTI_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBKDCBz6ADAgECAgEHMAoGCCqGSM49BAMCMBQxEjAQBgNVBAMMCWNhAWN0bCDD
qTAeFw0yNjAxMDUwMzA0MDVaFw00OTEyMzEyMzU5NTlaMCgxFzAJBgNVBAoMAk8x
MAoGA1UEAwwDY24xMQ0wCwYDVQQDDARsYXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEVKnqXgj0DqtYSpEgr0uInreP3YHqhjZzX3kqgOz6ctF4oxANb7gEgaQ2
tNmNXG7O4Piwqo/L/l7WZXwYBw1hsTAKBggqhkjOPQQDAgNIADBFAiBs00MbxUD5
ossBPdLMgX9br/01BGMHCaLRCGTd8c/WzwIhAKkoEP0yFTZe8RWW8sMgCsvj670o
Bo29ZG2INxZC1e82
-----END CERTIFICATE-----
"""
MULTI_TEXT = lines(
    "SMTP server at 127.0.0.1 (localhost [127.0.0.1]), port 2603:",
    "    sink.test ESMTP ready",
    "TLS session parameters:",
    "    (TLS1.3)-(ECDHE-SECP256R1)-(ECDSA-SECP256R1-SHA256)-(AES-256-GCM)",
    "TLS certificate information:",
    "    Subject:",
    "        O=O1+CN=cn1,CN=last",
    "    Issuer:",
    "        CN=ca\x01ctl \u00e9",
    "    Validity:",
    "        Activation time: Mon Jan  5 03:04:05 2026",
    "        Expiration time: Fri Dec 31 23:59:59 2049",
    "    Fingerprints:",
    "        SHA256: EC:3E:FD:8D:94:1C:A9:D7:E8:54:E8:5A:B3:0F:15"
    ":44:76:F3:B6:A4:42:90:7F:6D:F0:20:43:03:3C:31:AB:C8",
    "        SHA1 (deprecated): 88:B0:FE:BE:6E:BB:28:E8:79:7C:17:B8:02:B5:C6:5A:B5:0B:24:0D",
    "Capabilities:",
    "    AUTH:",
    "        Supported authentication methods:",
    "        PLAIN ",
)
MULTI_TLS = TLSInfo(
    version="TLSv1.3",
    cipher="TLS_AES_256_GCM_SHA384",
    peer_cert_der=ssl.PEM_cert_to_DER_cert(MULTI_PEM),
    group="secp256r1",
    signature="ECDSA-SECP256R1-SHA256",
)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time = UTC (certificate times are printed in local time)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def info(capabilities: tuple[str, ...], **kwargs: Any) -> ServerInfo:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 2602, "greeting": ("first line",)}
    return ServerInfo(capabilities=parse(capabilities), **{**base, **LOCAL, **kwargs})


def capability_block(capabilities: tuple[str, ...], **kwargs: Any) -> str:
    """The text after the header and greeting lines."""
    return format_serverinfo(info(capabilities, **kwargs)).split("\n", 2)[2]


# --- verbatim examples ---------------------------------------------------------------------


def test_aiosmtpd_example_verbatim() -> None:
    server = ServerInfo(
        host="127.0.0.1",
        port=2526,
        greeting=("localhost Python SMTP 1.4.6",),
        capabilities=parse(AIOSMTPD_EHLO),
        **LOCAL,
    )
    assert format_serverinfo(server) == AIOSMTPD_TEXT


def test_plain_aiosmtpd_has_no_special_capabilities() -> None:
    server = ServerInfo(
        host="127.0.0.1",
        port=8025,
        greeting=("localhost Python SMTP 1.4.6",),
        capabilities=parse(("localhost", "8BITMIME", "HELP")),
        **LOCAL,
    )
    assert format_serverinfo(server) == (
        "SMTP server at 127.0.0.1 (localhost [127.0.0.1]), port 8025:\n"
        "    localhost Python SMTP 1.4.6\n"
        "No special capabilities.\n"
    )


def test_full_crafted_example_verbatim() -> None:
    server = ServerInfo(
        host="127.0.0.1",
        port=2601,
        greeting=("sink.test ESMTP ready",),
        capabilities=parse(CRAFTED_EHLO),
        **LOCAL,
    )
    assert format_serverinfo(server) == CRAFTED_TEXT


def test_implicit_tls_certificate_block_verbatim(utc: None) -> None:
    server = ServerInfo(
        host="127.0.0.1",
        port=2603,
        greeting=("sink.test ESMTP ready",),
        capabilities=parse(("sink.test", "AUTH PLAIN")),
        tls=MULTI_TLS,
        **LOCAL,
    )
    assert format_serverinfo(server) == MULTI_TEXT


# --- header and greeting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address", "header"),
    [
        ("localhost", "127.0.0.1", "SMTP server at H (localhost [127.0.0.1]), port 25:"),
        ("localhost", None, "SMTP server at H (localhost), port 25:"),
        (None, "127.0.0.1", "SMTP server at H ([127.0.0.1]), port 25:"),
        (None, None, "SMTP server at H, port 25:"),
    ],
)
def test_header_variants(name: str | None, address: str | None, header: str) -> None:
    server = ServerInfo(host="H", port=25, canonical_name=name, address=address)
    assert format_serverinfo(server).splitlines()[0] == header


def test_header_shows_host_as_given_and_lmtp() -> None:
    server = ServerInfo(host="localhost", port=2525, protocol="lmtp", greeting=("lmtp",), **LOCAL)
    assert format_serverinfo(server).splitlines()[:2] == [
        "LMTP server at localhost (localhost [127.0.0.1]), port 2525:",
        "    lmtp",
    ]


def test_greeting_first_line_only_and_sanitized() -> None:
    assert format_serverinfo(info((), greeting=("first\tline", "second"))).splitlines()[1:] == [
        "    first?line",
        "No special capabilities.",
    ]


def test_empty_greeting_prints_no_line() -> None:
    # `220 ` and a HELO fallback (no capabilities), as msmtp prints them.
    assert format_serverinfo(info((), greeting=("",))) == (
        "SMTP server at 127.0.0.1 (localhost [127.0.0.1]), port 2602:\nNo special capabilities.\n"
    )
    assert format_serverinfo(info((), greeting=())).endswith("2602:\nNo special capabilities.\n")


# --- capabilities --------------------------------------------------------------------------


def _size_text(size: str, text: str) -> str:
    return f"Capabilities:\n    SIZE {size}:\n        Maximum message size is {text}\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SIZE 0", _size_text("0", "unlimited")),
        ("SIZE 5", _size_text("5", "5 bytes")),
        ("SIZE 1024", _size_text("1024", "1024 bytes")),
        ("SIZE 1025", _size_text("1025", "1025 bytes = 1.00 KiB")),
        ("SIZE 10239", _size_text("10239", "10239 bytes = 10.00 KiB")),
        ("SIZE 1048576", _size_text("1048576", "1048576 bytes = 1024.00 KiB")),
        ("SIZE 1048577", _size_text("1048577", "1048577 bytes = 1.00 MiB")),
        ("SIZE 1572864", _size_text("1572864", "1572864 bytes = 1.50 MiB")),
        ("SIZE 3145728", _size_text("3145728", "3145728 bytes = 3.00 MiB")),
        (
            "SIZE 9223372036854775807",
            _size_text("9223372036854775807", "9223372036854775807 bytes = 8796093022208.00 MiB"),
        ),
        ("SIZE +5", _size_text("5", "5 bytes")),
        ("SIZE  7", _size_text("7", "7 bytes")),
        ("SIZE\t5", _size_text("5", "5 bytes")),
        ("SIZE5", _size_text("5", "5 bytes")),
        ("SIZE -0", _size_text("0", "unlimited")),
        ("size 2000", _size_text("2000", "2000 bytes = 1.95 KiB")),
        ("SIZE", "No special capabilities.\n"),
        ("SIZE abc", "No special capabilities.\n"),
        ("SIZE -5", "No special capabilities.\n"),
        ("SIZE 12 ", "No special capabilities.\n"),
        ("SIZE 0x10", "No special capabilities.\n"),
        ("SIZE 99999999999999999999", "No special capabilities.\n"),
    ],
)
def test_size_variants(line: str, expected: str) -> None:
    assert capability_block(("x", line)) == expected


def test_invalid_size_after_valid_one_keeps_the_flag_with_its_value() -> None:
    # msmtp stores strtol's result even for the invalid second line.
    assert capability_block(("x", "SIZE 100", "SIZE abc")) == _size_text("0", "unlimited")


def test_float_rounding_is_single_precision() -> None:
    # 16777217 / 1 MiB is 16.00000095… in double precision but exactly 16 in float.
    caps = parse(["SIZE 16777217"])
    assert caps.size == 16777217
    assert "= 16.00 MiB" in capability_block(("x", "SIZE 16777217"))


def test_auth_methods_in_msmtp_order_with_trailing_space() -> None:
    line = (
        "auth=xoauth2 oauthbearer ntlm login digest-md5 cram-md5 gssapi external "
        "scram-sha-256 scram-sha-1 plain"
    )
    assert capability_block(("x", line)) == (
        "Capabilities:\n    AUTH:\n        Supported authentication methods:\n"
        "        PLAIN SCRAM-SHA-1 SCRAM-SHA-256 EXTERNAL GSSAPI CRAM-MD5 DIGEST-MD5 LOGIN NTLM "
        "OAUTHBEARER XOAUTH2 \n"
    )


def test_auth_with_empty_method_list() -> None:
    assert capability_block(("x", "AUTH ")) == (
        "Capabilities:\n    AUTH:\n        Supported authentication methods:\n        \n"
    )


@pytest.mark.parametrize("line", ["AUTH", "AUTHX PLAIN", "8BITMIME", "SMTPUTF8", "CHUNKING"])
def test_lines_that_are_no_capability(line: str) -> None:
    assert capability_block(("x", line, "ENHANCEDSTATUSCODES")) == "No special capabilities.\n"


def test_prefix_matches_including_the_domain_line() -> None:
    assert capability_block(("DSN.example", "DSNX")) == (
        "Capabilities:\n    DSN:\n        Support for Delivery Status Notifications\n"
    )
    assert capability_block(("x", "STARTTLSFOO")) == (
        "Capabilities:\n    STARTTLS:\n"
        "        Support for TLS encryption via the STARTTLS command\n"
        "This server might advertise more or other capabilities when TLS is active.\n"
    )
    assert capability_block(("x", "etrn")) == (
        "Capabilities:\n    ETRN:\n        Support for RMQS (Remote Message Queue Starting)\n"
    )


def test_parse_capabilities_flags() -> None:
    caps = parse(CRAFTED_EHLO)
    assert (caps.starttls, caps.dsn, caps.pipelining, caps.etrn) == (True,) * 4
    assert caps.size == 52428800
    assert caps.auth == frozenset(
        {"PLAIN", "SCRAM-SHA-256", "CRAM-MD5", "LOGIN", "OAUTHBEARER", "XOAUTH2"}
    )
    assert parse(["localhost", "8BITMIME"]) == Capabilities(eightbitmime=True)


# --- TLS -----------------------------------------------------------------------------------

_CERT_TAIL = MULTI_TEXT.split("TLS certificate information:\n")[1].split("Capabilities:")[0]


def _tls_block(capabilities: tuple[str, ...], *, starttls: bool) -> str:
    text = format_serverinfo(info(capabilities, tls=MULTI_TLS, starttls=starttls))
    return text.split(_CERT_TAIL)[1]


def test_starttls_account_always_lists_starttls(utc: None) -> None:
    # The EHLO after STARTTLS no longer offers it; msmtp prints it anyway, and no hint line.
    assert _tls_block(("sink.test",), starttls=True) == (
        "Capabilities:\n    STARTTLS:\n"
        "        Support for TLS encryption via the STARTTLS command\n"
    )
    assert _tls_block(("sink.test", "STARTTLS", "SIZE 2000"), starttls=True) == (
        "Capabilities:\n    SIZE 2000:\n        Maximum message size is 2000 bytes = 1.95 KiB\n"
        "    STARTTLS:\n        Support for TLS encryption via the STARTTLS command\n"
    )


def test_implicit_tls_without_capabilities(utc: None) -> None:
    assert _tls_block(("sink.test",), starttls=False) == "No special capabilities.\n"
    # STARTTLS offered over implicit TLS: listed, but no "might advertise more" line.
    assert _tls_block(("x", "STARTTLS"), starttls=False) == (
        "Capabilities:\n    STARTTLS:\n"
        "        Support for TLS encryption via the STARTTLS command\n"
    )


@pytest.mark.parametrize(
    ("tls", "description"),
    [
        (
            TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", None, "secp256r1", "RSA-PSS-RSAE-SHA256"),
            "(TLS1.3)-(ECDHE-SECP256R1)-(RSA-PSS-RSAE-SHA256)-(AES-256-GCM)",
        ),
        (TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"), "(TLS1.3)-(AES-256-GCM)"),
        (TLSInfo("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"), "(TLS1.3)-(CHACHA20-POLY1305)"),
        (
            TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", None, "x25519"),
            "(TLS1.3)-(ECDHE-X25519)-(AES-128-GCM)",
        ),
        (
            TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", None, "ffdhe2048"),
            "(TLS1.3)-(DHE-FFDHE2048)-(AES-128-GCM)",
        ),
        (TLSInfo("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"), "(TLS1.2)-(ECDHE)-(AES-128-GCM)"),
        (
            TLSInfo("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", None, "prime256v1", "ECDSA-SHA384"),
            "(TLS1.2)-(ECDHE-SECP256R1)-(ECDSA-SHA384)-(AES-256-GCM)",
        ),
        (
            TLSInfo("TLSv1.2", "ECDHE-RSA-AES256-SHA384"),
            "(TLS1.2)-(ECDHE)-(AES-256-CBC)-(SHA384)",
        ),
        (TLSInfo("TLSv1.2", "DHE-RSA-CHACHA20-POLY1305"), "(TLS1.2)-(DHE)-(CHACHA20-POLY1305)"),
        (TLSInfo("TLSv1", "AES128-SHA"), "(TLS1.0)-(RSA)-(AES-128-CBC)-(SHA1)"),
        (TLSInfo(), None),
    ],
)
def test_tls_description(tls: TLSInfo, description: str | None) -> None:
    assert tls_description(tls) == description


def test_tls_parameters_not_available() -> None:
    text = format_serverinfo(info(("x",), tls=TLSInfo()))
    assert text.splitlines()[2:5] == [
        "TLS session parameters:",
        "    not available",
        "No special capabilities.",
    ]


def test_certificate_from_trustme(utc: None) -> None:
    trustme = pytest.importorskip("trustme")
    x509 = pytest.importorskip("cryptography.x509")
    leaf = trustme.CA().issue_cert("sink.test")
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    parsed = x509.load_der_x509_certificate(der)
    subject = ",".join(rdn.rfc4514_string() for rdn in parsed.subject.rdns)
    issuer = ",".join(rdn.rfc4514_string() for rdn in parsed.issuer.rdns)
    assert subject.startswith("O=trustme v")
    assert ",OU=Testing cert #" in subject

    text = format_serverinfo(info(("x",), tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", der)))
    sha256 = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    sha1 = ":".join(f"{b:02X}" for b in hashlib.sha1(der).digest())
    assert text.split("\n", 2)[2] == (
        "TLS session parameters:\n"
        "    (TLS1.3)-(AES-256-GCM)\n"
        "TLS certificate information:\n"
        "    Subject:\n"
        f"        {subject}\n"
        "    Issuer:\n"
        f"        {issuer}\n"
        "    Validity:\n"
        "        Activation time: Sat Jan  1 00:00:00 2000\n"
        "        Expiration time: Wed Jan  1 00:00:00 3000\n"
        "    Fingerprints:\n"
        f"        SHA256: {sha256}\n"
        f"        SHA1 (deprecated): {sha1}\n"
        "No special capabilities.\n"
    )


def test_times_are_local(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = calendar.timegm((2026, 11, 24, 15, 36, 6, 0, 0, 0))
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    try:
        assert ctime_text(stamp) == "Tue Nov 24 10:36:06 2026"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_fingerprint_text() -> None:
    assert fingerprint_text(bytes([0x97, 0xC2, 0x0A])) == "97:C2:0A"


def test_not_a_certificate() -> None:
    with pytest.raises(ValueError, match="DER"):
        CertificateInfo.from_der(b"\x30\x03\x02\x01")


# --- distinguished names: recorded from msmtp 1.8.23 (GnuTLS 3.7) --------------------------

_DN_CASES: list[tuple[list[tuple[str, str, str]], str]] = [
    (
        [
            ("C", "DE", "printable"),
            ("ST", "Bay,ern", "utf8"),
            ("L", " München+", "utf8"),
            ("O", 'Ex "Org" <x>;y\\z', "utf8"),
            ("OU", "#unit ", "utf8"),
            ("CN", "sink.test", "utf8"),
            ("1.2.840.113549.1.9.1", "a@b.c", "ia5"),
            ("0.9.2342.19200300.100.1.25", "example", "ia5"),
            ("2.5.4.5", "1234", "printable"),
            ("0.9.2342.19200300.100.1.1", "uid1", "utf8"),
            ("2.5.4.4", "Sur", "utf8"),
            ("2.5.4.42", "Giv", "utf8"),
            ("2.5.4.12", "Dr", "utf8"),
            ("2.5.4.9", "Str 1", "utf8"),
            ("2.5.4.17", "12345", "utf8"),
            ("2.5.4.65", "ps", "utf8"),
            ("2.5.4.15", "biz", "utf8"),
            ("1.3.6.1.4.1.311.60.2.1.3", "DE", "printable"),
            ("2.5.4.97", "VATDE-1", "utf8"),
            ("2.5.4.43", "I", "utf8"),
            ("2.5.4.44", "Jr", "utf8"),
            ("2.5.4.46", "dnq", "printable"),
            ("1.2.3.4.5", "weird", "utf8"),
            ("1.2.840.113549.1.9.2", "unst", "utf8"),
        ],
        r"C=DE,ST=Bay\,ern,L=\ München\+,O=Ex \"Org\" \<x\>\;y\\z,OU=\#unit\ ,CN=sink.test,"
        "EMAIL=a@b.c,DC=example,serialNumber=1234,UID=uid1,surName=Sur,givenName=Giv,title=Dr,"
        "street=Str 1,postalCode=12345,pseudonym=ps,businessCategory=biz,"
        "jurisdictionOfIncorporationCountryName=DE,2.5.4.97=#0c0756415444452d31,initials=I,"
        "generationQualifier=Jr,dnQualifier=dnq,1.2.3.4.5=#0c057765697264,"
        "1.2.840.113549.1.9.2=#0c04756e7374",
    ),
    (
        [
            ("2.5.4.13", "desc", "utf8"),
            ("2.5.4.20", "+49", "printable"),
            ("2.5.4.41", "nm", "utf8"),
            ("1.3.6.1.5.5.7.9.2", "pob", "utf8"),
            ("1.3.6.1.5.5.7.9.3", "M", "printable"),
            ("1.3.6.1.5.5.7.9.4", "DE", "printable"),
            ("1.3.6.1.5.5.7.9.5", "FR", "printable"),
            ("1.2.840.113556.1.4.656", "upn@x", "utf8"),
            ("1.3.6.1.4.1.311.60.2.1.1", "jl", "utf8"),
            ("1.3.6.1.4.1.311.60.2.1.2", "js", "utf8"),
            ("1.3.6.1.5.5.7.8.5", "xmpp@x", "utf8"),
            ("1.2.840.113549.1.9.7", "chpw", "utf8"),
            ("1.2.840.113549.1.9.20", "fr", "bmp"),
            ("0.9.2342.19200300.100.1.3", "mail@x", "utf8"),
            ("2.5.4.72", "role", "utf8"),
        ],
        r"description=desc,telephoneNumber=\+49,name=nm,placeOfBirth=pob,gender=M,"
        "countryOfCitizenship=DE,countryOfResidence=FR,userPrincipalName=upn@x,"
        "jurisdictionOfIncorporationLocalityName=jl,"
        "jurisdictionOfIncorporationStateOrProvinceName=js,XmppAddr=xmpp@x,"
        "1.2.840.113549.1.9.7=chpw,1.2.840.113549.1.9.20=fr,"
        "0.9.2342.19200300.100.1.3=#0c066d61696c4078,2.5.4.72=#0c04726f6c65",
    ),
    (
        [
            ("CN", "bmp é", "bmp"),
            ("O", "tele", "teletex"),
            ("OU", "univ é", "universal"),
            ("L", "ia5", "ia5"),
            ("ST", "pr", "printable"),
            ("C", "DE", "utf8"),
            ("1.2.840.113549.1.9.1", "e@x", "utf8"),
            ("0.9.2342.19200300.100.1.25", "dc", "utf8"),
            ("2.5.4.5", "sn", "utf8"),
        ],
        r"CN=bmp é,O=tele,OU=\#000000750000006e000000690000007600000020000000e9,L=#1603696135,"
        "ST=pr,C=#0c024445,EMAIL=#0c03654078,DC=#0c026463,serialNumber=#0c02736e",
    ),
    ([("CN", "tele é", "teletex")], r"CN=\#74656c6520c3a9"),
    ([("CN", "ctl\x01\x7f\ttab", "utf8")], "CN=ctl\x01\x7f\ttab"),
    ([("CN", " ", "utf8"), ("O", "#", "utf8"), ("OU", "a=b", "utf8")], r"CN=\ ,O=\#,OU=a=b"),
    ([("O", "ok", "utf8"), ("CN", "a\x00b", "utf8")], "O=ok,CN=#0c03610062"),
    ([("O", "ok", "utf8"), ("L", "12", "numeric")], "O=ok,L=#12023132"),
    ([("O", "ok", "utf8"), ("1.2.3", "", "utf8")], "O=ok,1.2.3=#0c00"),
    ([("O", "ok", "utf8"), ("2.5.4.5", "", "printable")], "O=ok,serialNumber=#1300"),
    ([("0.9.2342.19200300.100.1.25", "", "ia5")], "DC=#1600"),
    ([("1.2.840.113549.1.9.20", "x", "utf8")], "1.2.840.113549.1.9.20=#0c0178"),
    ([("O", "ok", "utf8"), ("C", "DE", "ia5")], "O=ok,C=#16024445"),
    # GnuTLS fails on an empty directory string (and on an empty name): msmtp prints "(null)".
    ([("O", "ok", "utf8"), ("L", "", "utf8")], "(null)"),
    ([("O", "", "teletex")], "(null)"),
    ([("O", "", "bmp")], "(null)"),
    ([("O", "", "universal")], "(null)"),
    ([], "(null)"),
]

_SHORT = {"C": "2.5.4.6", "ST": "2.5.4.8", "L": "2.5.4.7", "O": "2.5.4.10", "OU": "2.5.4.11"}
_SHORT["CN"] = "2.5.4.3"
_TAGS = {"utf8": 0x0C, "printable": 0x13, "teletex": 0x14, "ia5": 0x16, "universal": 0x1C}
_TAGS.update(bmp=0x1E, numeric=0x12)
_CODECS = {"bmp": "utf-16-be", "universal": "utf-32-be"}


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _name(attributes: list[tuple[str, str, str]]) -> bytes:
    rdns = b""
    for oid, value, kind in attributes:
        raw = value.encode(_CODECS.get(kind, "utf-8"))
        atv = _der(0x30, _der_oid(_SHORT.get(oid, oid)) + _der(_TAGS[kind], raw))
        rdns += _der(0x31, atv)
    return _der(0x30, rdns)


def _certificate(subject: bytes, issuer: bytes, not_before: bytes, not_after: bytes) -> bytes:
    """A structurally valid certificate (the signature is not checked by the formatter)."""
    algorithm = _der(0x30, _der_oid("1.2.840.10045.4.3.2"))
    key = _der(0x30, _der(0x30, _der_oid("1.2.840.10045.2.1")) + _der(0x03, b"\x00\x04"))
    tbs = _der(
        0x30,
        _der(0xA0, _der(0x02, b"\x02"))
        + _der(0x02, b"\x07")
        + algorithm
        + issuer
        + _der(0x30, not_before + not_after)
        + subject
        + key,
    )
    return _der(0x30, tbs + algorithm + _der(0x03, b"\x00"))


_UTC_2026 = _der(0x17, b"261124153606Z")


@pytest.mark.parametrize(("attributes", "expected"), _DN_CASES)
def test_distinguished_names_as_gnutls_prints_them(
    attributes: list[tuple[str, str, str]], expected: str
) -> None:
    der = _certificate(_name(attributes), _name([("CN", "x", "utf8")]), _UTC_2026, _UTC_2026)
    cert = CertificateInfo.from_der(der)
    assert (cert.subject if cert.subject is not None else "(null)") == expected
    assert cert.issuer == "CN=x"


def test_multi_valued_rdn_keeps_certificate_order() -> None:
    atv = [
        _der(0x30, _der_oid(o) + _der(0x0C, v))
        for o, v in (("2.5.4.10", b"O1"), ("2.5.4.3", b"cn1"))
    ]
    subject = _der(0x30, _der(0x31, b"".join(atv)) + _der(0x31, atv[1]))
    cert = CertificateInfo.from_der(_certificate(subject, subject, _UTC_2026, _UTC_2026))
    assert cert.subject == "O=O1+CN=cn1,CN=cn1"


@pytest.mark.parametrize(
    ("element", "when"),
    [
        (_der(0x17, b"991231235959Z"), datetime.datetime(1999, 12, 31, 23, 59, 59)),
        (_der(0x17, b"490101000000Z"), datetime.datetime(2049, 1, 1)),
        (_der(0x17, b"500101000000Z"), datetime.datetime(1950, 1, 1)),
        (_der(0x18, b"20510301000000Z"), datetime.datetime(2051, 3, 1)),
        (_der(0x18, b"30000101000000Z"), datetime.datetime(3000, 1, 1)),
        (_der(0x18, b"19690101000000Z"), datetime.datetime(1969, 1, 1)),
    ],
)
def test_validity_times(element: bytes, when: datetime.datetime) -> None:
    cert = CertificateInfo.from_der(_certificate(_name([]), _name([]), element, element))
    expected = 0 if when.year < 1970 else calendar.timegm(when.timetuple())
    assert cert.activation == cert.expiration == expected


# --- against msmtp itself ------------------------------------------------------------------

MSMTP_VERSION = "msmtp version 1.8.23"


def msmtp_path() -> str:
    """Debian's msmtp 1.8.23, or skip (fail when RELAYD_REQUIRE_MSMTP=1)."""
    path = shutil.which("msmtp")
    reason = "msmtp 1.8.23 is not installed"
    if path is not None:
        out = subprocess.run([path, "--version"], capture_output=True, check=False).stdout
        if out.decode("utf-8", "replace").startswith(MSMTP_VERSION + "\n"):
            return path
        reason = f"{path} is not {MSMTP_VERSION}"
    if os.environ.get("RELAYD_REQUIRE_MSMTP") == "1":
        pytest.fail(f"{reason} (RELAYD_REQUIRE_MSMTP=1)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Script:
    """What a `CraftedServer` answers (whole reply lines, code included)."""

    greeting: list[str]
    ehlo: list[str]
    ehlo_tls: list[str] | None = None
    helo: list[str] = field(default_factory=lambda: ["250 ok"])
    auth: list[str] = field(default_factory=lambda: ["535 5.7.8 bad credentials"])
    mail: list[str] = field(default_factory=lambda: ["250 ok"])
    rcpt: list[str] = field(default_factory=lambda: ["250 ok"])
    data: list[str] = field(default_factory=lambda: ["354 go ahead"])
    end: list[str] = field(default_factory=lambda: ["250 2.0.0 queued as X1"])
    context: ssl.SSLContext | None = None
    implicit_tls: bool = False


class CraftedServer:
    """A loopback SMTP server that sends exactly the scripted reply lines."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def __enter__(self) -> CraftedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(30)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        script = self.script
        try:
            if script.implicit_tls and script.context is not None:
                conn = script.context.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")

            def send(lines: list[str]) -> None:
                conn.sendall(b"".join(f"{x}\r\n".encode() for x in lines))

            send(script.greeting)
            tls = script.implicit_tls
            in_data = False
            while line := reader.readline():
                command = line.decode("latin-1").rstrip("\r\n")
                if in_data:
                    if command == ".":
                        in_data = False
                        send(script.end)
                    continue
                verb = command.upper()
                if verb.startswith(("EHLO", "LHLO")):
                    send(script.ehlo_tls if tls and script.ehlo_tls else script.ehlo)
                elif verb.startswith("HELO"):
                    send(script.helo)
                elif verb == "STARTTLS" and script.context is not None:
                    send(["220 go ahead"])
                    conn = script.context.wrap_socket(conn, server_side=True)
                    reader = conn.makefile("rb")
                    tls = True
                elif verb.startswith("AUTH"):
                    send(script.auth)
                elif verb.startswith("MAIL"):
                    send(script.mail)
                elif verb.startswith("RCPT"):
                    send(script.rcpt)
                elif verb == "DATA":
                    send(script.data)
                    in_data = script.data[-1].startswith("354")
                elif verb == "QUIT":
                    send(["221 bye"])
                    return
                else:
                    send(["250 ok"])
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


def run_msmtp(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
    return subprocess.run(
        [msmtp_path(), *args], input=stdin, capture_output=True, env=env, timeout=30, check=False
    )


_HEADER = re.compile(r"^SMTP server at 127\.0\.0\.1 \((?:(\S+) )?\[127\.0\.0\.1\]\), port \d+:$")


def _reverse_name(text: str) -> str | None:
    match = _HEADER.match(text.splitlines()[0])
    assert match, text
    return match.group(1)


def _strip(lines: list[str]) -> tuple[str, ...]:
    return tuple(line[4:] for line in lines)


_LIVE_EHLO = [
    ["250-sink.test", *(f"250-{x}" for x in CRAFTED_EHLO[1:-1]), f"250 {CRAFTED_EHLO[-1]}"],
    ["250-x", "250 auth=xoauth2 ntlm login digest-md5 gssapi external scram-sha-1 plain"],
    ["250-x", "250-SIZE 100", "250 SIZE abc"],
    ["250-DSN.example", "250-SIZE 1048577", "250 DSNX"],
    ["250-x", "250-SIZE 10239", "250-AUTH ", "250 STARTTLSX"],
    ["250 x"],
]


@pytest.mark.parametrize("ehlo", _LIVE_EHLO, ids=range(len(_LIVE_EHLO)))
def test_live_plain_serverinfo_matches_msmtp(ehlo: list[str]) -> None:
    msmtp_path()
    greeting = ["220-sink.test ESMTP ready", "220 second line"]
    with CraftedServer(Script(greeting=greeting, ehlo=ehlo)) as server:
        result = run_msmtp("--serverinfo", "--host=127.0.0.1", f"--port={server.port}")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    ours = ServerInfo(
        host="127.0.0.1",
        port=server.port,
        canonical_name=_reverse_name(text),
        address="127.0.0.1",
        greeting=_strip(greeting),
        capabilities=parse(_strip(ehlo)),
    )
    assert format_serverinfo(ours) == text


def test_live_helo_fallback_matches_msmtp() -> None:
    msmtp_path()
    with CraftedServer(Script(greeting=["220 "], ehlo=["502 no"])) as server:
        result = run_msmtp("--serverinfo", "--host=127.0.0.1", f"--port={server.port}")
    text = result.stdout.decode()
    ours = ServerInfo(
        host="127.0.0.1",
        port=server.port,
        canonical_name=_reverse_name(text),
        address="127.0.0.1",
        greeting=("",),
    )
    assert format_serverinfo(ours) == text


# EHLO lines where msmtp's reading is easy to get wrong: each case runs both programs' whole
# --serverinfo (the connection, the reply's decoding, the parsing and the text) on one server.
_QUIRKS = {
    "size-overflow": ["250-x", "250 SIZE 99999999999999999999"],
    "long-s-starttls": ["250-x", "250 \u017ftarttls"],  # str.upper() would make it STARTTLS
    "negative-size": ["250-x", "250 SIZE -5"],
    "size-trailing-junk": ["250-x", "250 SIZE 12abc"],
    "lower-case-auth": ["250-x", "250 auth=login plain"],
    "size-without-number": ["250-x", "250 SIZE"],
    "size-vertical-tab": ["250-x", "250 SIZE \x0b5"],
    "size-arabic-digit": ["250-x", "250 SIZE \u0663"],
    "nul-ends-the-line": ["250-x", "250-SIZE 100\0junk", "250 AUTH LOGIN\0 PLAIN"],
    "domain-line-counts": ["250-STARTTLS.example", "250 x"],
    # msmtp keeps the number of a later invalid SIZE line (its flag was set by the first).
    "negative-after-valid": ["250-x", "250-SIZE 100", "250 SIZE -5"],
    "junk-after-valid": ["250-x", "250-SIZE 100", "250 SIZE 12abc"],
    "overflow-after-valid": ["250-x", "250-SIZE 100", "250 SIZE 99999999999999999999"],
    "underflow-after-valid": ["250-x", "250-SIZE 100", "250 SIZE -99999999999999999999"],
}


def _as_msmtp(result: subprocess.CompletedProcess[bytes], prog: str) -> tuple[int, bytes, bytes]:
    return result.returncode, result.stdout, result.stderr.replace(prog.encode(), b"PROG")


@pytest.mark.parametrize(
    ("ehlo", "options"),
    [pytest.param(ehlo, (), id=name) for name, ehlo in _QUIRKS.items()]
    + [
        # The long s is no STARTTLS: an account that needs it stops there (69), as msmtp does.
        pytest.param(
            _QUIRKS["long-s-starttls"], ("--tls=on", "--tls-certcheck=off"), id="long-s-tls-on"
        )
    ],
)
def test_live_relayd_serverinfo_matches_msmtp(ehlo: list[str], options: tuple[str, ...]) -> None:
    msmtp_path()
    with CraftedServer(Script(greeting=["220 sink.test ESMTP"], ehlo=ehlo)) as server:
        args = ["--serverinfo", "--host=127.0.0.1", f"--port={server.port}", *options]
        theirs = run_msmtp(*args)
        ours = run_sendmail(args, b"", env=sendmail_env(TZ="UTC", LC_ALL="C"))
    assert _as_msmtp(ours, "relayd-sendmail") == _as_msmtp(theirs, "msmtp")


def _tls_from_msmtp(text: str, der: bytes) -> TLSInfo:
    """TLSInfo as Python's ssl would give it, plus the group and signature GnuTLS chose."""
    description = text.splitlines()[3].strip()
    match = re.fullmatch(r"\((TLS1\.3)\)-\(ECDHE-(\w+)\)-\(([\w-]+)\)-\(AES-256-GCM\)", description)
    assert match, description
    return TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", der, match.group(2), match.group(3))


@pytest.mark.parametrize("starttls", [False, True], ids=["implicit", "starttls"])
def test_live_tls_serverinfo_matches_msmtp(starttls: bool, utc: None) -> None:
    msmtp_path()
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("sink.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    ehlo = ["250-sink.test", "250-STARTTLS", "250 SIZE 2000"]
    ehlo_tls = ["250-sink.test", "250 AUTH PLAIN LOGIN"]
    script = Script(["220 sink.test ESMTP"], ehlo, ehlo_tls, context=context)
    script.implicit_tls = not starttls
    args = ["--serverinfo", "--host=127.0.0.1", "--tls", "--tls-certcheck=off"]
    with CraftedServer(script) as server:
        result = run_msmtp(
            *args, f"--port={server.port}", f"--tls-starttls={'on' if starttls else 'off'}"
        )
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    ours = ServerInfo(
        host="127.0.0.1",
        port=server.port,
        canonical_name=_reverse_name(text),
        address="127.0.0.1",
        greeting=("sink.test ESMTP",),
        capabilities=parse(_strip(ehlo_tls)),
        tls=_tls_from_msmtp(text, der),
        starttls=starttls,
    )
    assert format_serverinfo(ours) == text


def test_tls_info_from_a_python_connection() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("sink.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with server_context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with (
        socket.create_connection(listener.getsockname()) as raw,
        client_context.wrap_socket(raw, server_hostname="sink.test") as tls,
    ):
        facts = TLSInfo.from_ssl(tls)
        tls.sendall(b"x")
    thread.join(5)
    listener.close()
    assert facts.version == "TLSv1.3"
    assert facts.cipher is not None and facts.cipher.startswith("TLS_")
    assert facts.peer_cert_der == ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    description = tls_description(facts)
    assert description in {
        "(TLS1.3)-(AES-256-GCM)",
        "(TLS1.3)-(AES-128-GCM)",
        "(TLS1.3)-(CHACHA20-POLY1305)",
    }
    assert description is not None
    assert tls_description(replace(facts, group="x25519")) == description.replace(
        ")-(", ")-(ECDHE-X25519)-(", 1
    )
