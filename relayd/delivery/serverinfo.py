"""`--serverinfo`: what the session learnt about a server, printed as msmtp 1.8.23 prints it.

The session fills in a `ServerInfo` (plain data) and `format_serverinfo` renders msmtp's text
(research/msmtp.md §4.2): the header line, the first greeting line, the TLS block (GnuTLS's
session description and certificate facts) and the capabilities (`ehlo.Capabilities`, read
from the EHLO reply with msmtp's rules).

The certificate is read from its DER bytes in `certinfo` (a small DER walker, no extra
dependency), and the distinguished names are written the way GnuTLS's gnutls_x509_crt_get_dn
writes them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from relayd.delivery.auth_methods import KNOWN
from relayd.delivery.certinfo import CertificateInfo as CertificateInfo
from relayd.delivery.certinfo import ctime_text as ctime_text
from relayd.delivery.certinfo import fingerprint_text as fingerprint_text
from relayd.delivery.ehlo import Capabilities
from relayd.text import sanitize

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl


@dataclass(frozen=True)
class TLSInfo:
    """The TLS facts msmtp prints; every field may be unknown (None).

    `version` and `cipher` are what Python's ssl gives (`version()`, `cipher()[0]`, OpenSSL
    names); `group` (key exchange group, e.g. `X25519`, `secp256r1`, `ffdhe2048`) and
    `signature` (GnuTLS's name, e.g. `RSA-PSS-RSAE-SHA256`) are not available from Python 3.11's
    ssl and are left out of the session description when unknown.
    """

    version: str | None = None
    cipher: str | None = None
    peer_cert_der: bytes | None = None
    group: str | None = None
    signature: str | None = None

    @classmethod
    def from_ssl(cls, obj: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """The facts of an established connection (asyncio: `get_extra_info("ssl_object")`)."""
        cipher = obj.cipher()
        return cls(
            version=obj.version(),
            cipher=cipher[0] if cipher else None,
            peer_cert_der=obj.getpeercert(binary_form=True),
        )


@dataclass(frozen=True)
class ServerInfo:
    """Everything `--serverinfo` prints.

    `host` is the account's host as given (or its socket path), `port` the account's port.
    `canonical_name`/`address` are the reverse name and the address connected to, if known.
    `greeting` holds the greeting's lines without the code (msmtp prints the first one);
    `capabilities` are those of the last EHLO/LHLO reply (none after a HELO fallback). `tls` is
    set when the account uses TLS; `starttls` says it was started with STARTTLS rather than
    implicitly.
    """

    host: str
    port: int
    protocol: str = "smtp"
    canonical_name: str | None = None
    address: str | None = None
    greeting: tuple[str, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    tls: TLSInfo | None = None
    starttls: bool = False


# --- capabilities --------------------------------------------------------------------------


def _any(caps: Capabilities) -> bool:
    """msmtp's `srv.cap.flags != 0` (it reads neither 8BITMIME nor SMTPUTF8)."""
    flags = (caps.starttls, caps.dsn, caps.pipelining, caps.etrn)
    return any(flags) or caps.auth is not None or caps.size is not None


def _f32(value: float) -> float:
    """Round to C float (msmtp divides in single precision)."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def _size_lines(size: int) -> list[str]:
    text = "        Maximum message size is "
    if size == 0:
        text += "unlimited"
    else:
        text += f"{size} bytes"
        if size > 1024 * 1024:
            text += f" = {_f32(_f32(size) / 1048576.0):.2f} MiB"
        elif size > 1024:
            text += f" = {_f32(_f32(size) / 1024.0):.2f} KiB"
    return [f"    SIZE {size}:", text]


# --- TLS session description ---------------------------------------------------------------

_PROTOCOLS = {"TLSv1": "TLS1.0", "TLSv1.1": "TLS1.1", "TLSv1.2": "TLS1.2", "TLSv1.3": "TLS1.3"}
_PROTOCOLS["SSLv3"] = "SSL3.0"
_TLS13_CIPHERS = {
    "TLS_AES_256_GCM_SHA384": "AES-256-GCM",
    "TLS_AES_128_GCM_SHA256": "AES-128-GCM",
    "TLS_CHACHA20_POLY1305_SHA256": "CHACHA20-POLY1305",
    "TLS_AES_128_CCM_SHA256": "AES-128-CCM",
    "TLS_AES_128_CCM_8_SHA256": "AES-128-CCM-8",
}
# OpenSSL's TLS 1.2 names: [KX-][AUTH-]CIPHER[-MAC]; cipher part → (GnuTLS name, is AEAD).
_TLS12_CIPHERS = {
    "AES256-GCM": ("AES-256-GCM", True),
    "AES128-GCM": ("AES-128-GCM", True),
    "AES256-CCM": ("AES-256-CCM", True),
    "AES128-CCM": ("AES-128-CCM", True),
    "AES256-CCM8": ("AES-256-CCM-8", True),
    "AES128-CCM8": ("AES-128-CCM-8", True),
    "CHACHA20-POLY1305": ("CHACHA20-POLY1305", True),
    "AES256": ("AES-256-CBC", False),
    "AES128": ("AES-128-CBC", False),
    "CAMELLIA256": ("CAMELLIA-256-CBC", False),
    "CAMELLIA128": ("CAMELLIA-128-CBC", False),
    "DES-CBC3": ("3DES-CBC", False),
}
_MACS = {"SHA": "SHA1", "SHA256": "SHA256", "SHA384": "SHA384", "MD5": "MD5"}
_GROUPS = {"PRIME256V1": "SECP256R1", "P-256": "SECP256R1", "P-384": "SECP384R1"}
_GROUPS["P-521"] = "SECP521R1"


def _split_tls12(name: str) -> tuple[str | None, str, str | None]:
    """(key exchange, GnuTLS cipher, GnuTLS MAC or None for AEAD) from an OpenSSL suite name."""
    tokens = name.split("-")
    kx = "RSA"  # suites without a key exchange prefix use RSA key transport
    if tokens[0] in ("ECDHE", "DHE", "EDH"):
        kx = "DHE" if tokens[0] == "EDH" else tokens[0]
        tokens = tokens[1:]
        if tokens and tokens[0] in ("RSA", "ECDSA", "DSS", "PSK"):
            tokens = tokens[1:]
    elif tokens[0] == "PSK":
        kx, tokens = "PSK", tokens[1:]
    mac = None
    if len(tokens) > 1 and tokens[-1] in _MACS:
        mac = tokens.pop()
    cipher, aead = _TLS12_CIPHERS.get("-".join(tokens), ("-".join(tokens), False))
    return kx, cipher, None if aead or mac is None else _MACS[mac]


def tls_description(tls: TLSInfo) -> str | None:
    """GnuTLS's gnutls_session_get_desc as far as the facts go, e.g.
    `(TLS1.3)-(ECDHE-SECP256R1)-(RSA-PSS-RSAE-SHA256)-(AES-256-GCM)`.

    Unknown parts (the group and the signature algorithm with Python's ssl) are left out:
    `(TLS1.3)-(AES-256-GCM)`; for TLS 1.2 the key exchange comes from the suite name
    (`(TLS1.2)-(ECDHE)-(AES-128-GCM)`). None when neither version nor cipher is known.
    """
    if tls.version is None and tls.cipher is None:
        return None
    parts = []
    if tls.version is not None:
        parts.append(_PROTOCOLS.get(tls.version, tls.version))
    group = None
    if tls.group is not None:
        group = tls.group.upper()
        group = _GROUPS.get(group, group)
    kx: str | None = None
    cipher: str | None = None
    mac: str | None = None
    if tls.cipher is not None:
        if tls.cipher in _TLS13_CIPHERS:
            cipher = _TLS13_CIPHERS[tls.cipher]
        else:
            kx, cipher, mac = _split_tls12(tls.cipher)
    if group is not None:
        kx = "DHE" if group.startswith("FFDHE") else "ECDHE"
    if kx in ("ECDHE", "DHE"):
        parts.append(f"{kx}-{group}" if group is not None else kx)
    elif kx is not None:
        parts.append(kx)
    if tls.signature is not None:
        parts.append(tls.signature)
    if cipher is not None:
        parts.append(cipher)
    if mac is not None:
        parts.append(mac)
    return "-".join(f"({part})" for part in parts)


# --- the certificate -----------------------------------------------------------------------


def _tls_lines(tls: TLSInfo) -> list[str]:
    lines = ["TLS session parameters:", f"    {tls_description(tls) or 'not available'}"]
    if tls.peer_cert_der is None:
        return lines
    cert = CertificateInfo.from_der(tls.peer_cert_der)
    lines += [
        "TLS certificate information:",
        "    Subject:",
        f"        {cert.subject if cert.subject is not None else '(null)'}",
        "    Issuer:",
        f"        {cert.issuer if cert.issuer is not None else '(null)'}",
        "    Validity:",
        f"        Activation time: {ctime_text(cert.activation)}",
        f"        Expiration time: {ctime_text(cert.expiration)}",
        "    Fingerprints:",
        f"        SHA256: {fingerprint_text(cert.sha256)}",
    ]
    if any(cert.sha1):
        lines.append(f"        SHA1 (deprecated): {fingerprint_text(cert.sha1)}")
    return lines


# --- the whole text ------------------------------------------------------------------------


def format_serverinfo(info: ServerInfo) -> str:
    """msmtp 1.8.23's `--serverinfo` output for `info`, newline-terminated."""
    kind = "SMTP" if info.protocol == "smtp" else "LMTP"
    if info.canonical_name is not None and info.address is not None:
        where = f" ({info.canonical_name} [{info.address}])"
    elif info.canonical_name is not None:
        where = f" ({info.canonical_name})"
    elif info.address is not None:
        where = f" ([{info.address}])"
    else:
        where = ""
    lines = [f"{kind} server at {info.host}{where}, port {info.port}:"]
    if info.greeting and info.greeting[0]:
        lines.append(f"    {sanitize(info.greeting[0])}")
    if info.tls is not None:
        lines += _tls_lines(info.tls)
    caps = info.capabilities
    starttls_account = info.tls is not None and info.starttls
    if not _any(caps) and not starttls_account:
        lines.append("No special capabilities.")
    else:
        lines.append("Capabilities:")
        if caps.size is not None:
            lines += _size_lines(caps.size)
        if caps.pipelining:
            lines += [
                "    PIPELINING:",
                "        Support for command grouping for faster transmission",
            ]
        if caps.etrn:
            lines += ["    ETRN:", "        Support for RMQS (Remote Message Queue Starting)"]
        if caps.dsn:
            lines += ["    DSN:", "        Support for Delivery Status Notifications"]
        if starttls_account or caps.starttls:
            lines += [
                "    STARTTLS:",
                "        Support for TLS encryption via the STARTTLS command",
            ]
        if caps.auth is not None:
            methods = "".join(f"{m} " for m in KNOWN if m in caps.auth)
            lines += [
                "    AUTH:",
                "        Supported authentication methods:",
                f"        {methods}",
            ]
        if caps.starttls and info.tls is None:
            lines.append(
                "This server might advertise more or other capabilities when TLS is active."
            )
    return "\n".join(lines) + "\n"
