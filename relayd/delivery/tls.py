"""TLS as msmtp configures it: the SSLContext of an account, the fingerprint pin, TLS failures."""

from __future__ import annotations

import hashlib
import ssl

from relayd.accounts.account import Account
from relayd.delivery.classify import Failure, classify
from relayd.delivery.result import Event

_FILE_UNREADABLE = "Error while reading file."
# GnuTLS's texts for files it could read but not use, per kind (seen with Debian's msmtp 1.8.23).
_TRUST_UNUSABLE = "Success."
_CRL_UNUSABLE = "Base64 decoding error."
_KEY_UNUSABLE = "The requested data were not available."
_DIGESTS = {32: "sha256", 20: "sha1", 16: "md5"}  # fingerprint length in bytes → algorithm

_NOT_TRUSTED = "The certificate is NOT trusted. "
_ISSUER_UNKNOWN = "The certificate issuer is unknown. "
# OpenSSL verification codes → GnuTLS's status text, which is what msmtp prints.
_VERIFY_TEXT = {
    2: _ISSUER_UNKNOWN,  # unable to get issuer certificate
    18: _ISSUER_UNKNOWN,  # self-signed leaf
    19: _ISSUER_UNKNOWN,  # self-signed certificate in the chain
    20: _ISSUER_UNKNOWN,  # unable to get local issuer certificate
    21: _ISSUER_UNKNOWN,  # unable to verify the first certificate
    9: "The certificate chain uses not yet valid certificate. ",
    10: "The certificate chain uses expired certificate. ",
    23: "The certificate chain is revoked. ",
    62: "The name in the certificate does not match the expected. ",  # hostname mismatch
    64: "The name in the certificate does not match the expected. ",  # IP address mismatch
}
_UNEXPECTED_PACKET = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")


def server_name(account: Account) -> str | None:
    """The name for SNI and certificate verification: tls_host_override, else host."""
    return account.tls_host_override or account.host


def checks_chain(account: Account) -> bool:
    """Whether the certificate chain and name are verified (else nothing, or only the pin)."""
    return account.tls_certcheck and account.tls_fingerprint is None


def client_context(account: Account) -> ssl.SSLContext | Failure:
    """The context for the account's TLS, or msmtp's failure (66) for a file it cannot use.

    With tls_certcheck off nothing is verified; with tls_fingerprint the chain is not verified
    but the pin is (`check_pin` right after the handshake, before anything else is sent).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if account.tls_key_file or account.tls_cert_file:
        key, cert = account.tls_key_file, account.tls_cert_file
        try:
            context.load_cert_chain(certfile=cert or "", keyfile=key)
        except OSError as exc:
            reason = _KEY_UNUSABLE if isinstance(exc, ssl.SSLError) else _FILE_UNREADABLE
            return classify(Event.TLS_KEY_FILE, key=key, cert=cert, reason=reason)
    if not checks_chain(account):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    trust = account.tls_trust_file
    if trust == "system":
        context.load_default_certs()
    elif trust:
        failure = _load(context, Event.TLS_TRUST_FILE, trust, _TRUST_UNUSABLE)
        if failure is not None:
            return failure
    if account.tls_crl_file:
        failure = _load(context, Event.TLS_CRL_FILE, account.tls_crl_file, _CRL_UNUSABLE)
        if failure is not None:
            return failure
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.check_hostname = server_name(account) is not None
    return context


def _load(context: ssl.SSLContext, event: Event, path: str, unusable: str) -> Failure | None:
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        return classify(event, file=path, reason=unusable)
    except OSError:
        return classify(event, file=path, reason=_FILE_UNREADABLE)
    return None


def fingerprint(der: bytes, size: int) -> str:
    """`AA:BB:…` of the certificate for a pin of `size` bytes (SHA256, SHA1 or MD5)."""
    digest = hashlib.new(_DIGESTS[size], der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def check_pin(account: Account, der: bytes | None) -> Failure | None:
    """Compare the server certificate with tls_fingerprint (unless tls_certcheck is off)."""
    pin = account.tls_fingerprint
    if pin is None or not account.tls_certcheck:
        return None
    if der is None or fingerprint(der, (len(pin) + 1) // 3) != pin:
        reason = "the certificate fingerprint does not match"
        return classify(Event.TLS_CERTIFICATE, reason=reason)
    return None


def handshake_failure(exc: OSError) -> Failure:
    """A failed TLS handshake: certificate problems (69) apart from everything else (76)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = _VERIFY_TEXT.get(code, f"{exc.verify_message}. ") if code else ""
        return classify(Event.TLS_CERTIFICATE, reason=_NOT_TRUSTED + detail)
    if isinstance(exc, TimeoutError):
        reason = "the operation timed out"
    elif isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) or exc.errno is None:
        reason = "The TLS connection was non-properly terminated."  # EOF, no error code
    elif isinstance(exc, ssl.SSLError):
        name = (exc.reason or "").upper()
        if name in _UNEXPECTED_PACKET:
            reason = "An unexpected TLS packet was received."
        elif "ALERT" in name:
            reason = "A TLS fatal alert has been received."
        else:
            reason = exc.reason or str(exc)
    else:
        reason = "Error in the pull function."
    return classify(Event.TLS_HANDSHAKE, reason=reason)
