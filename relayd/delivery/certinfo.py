"""A server certificate's facts read from its DER bytes, names written as GnuTLS writes them."""

from __future__ import annotations

import calendar
import hashlib
import time
from dataclasses import dataclass


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at `pos`: (tag byte, start of the content, end of the element)."""
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # high tag number form (not in certificates we read; skip it)
        while data[pos] & 0x80:
            pos += 1
        pos += 1
    length = data[pos]
    pos += 1
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 8:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, pos, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements inside a constructed element: (tag, element start, content start, end)."""
    items = []
    pos = start
    while pos < end:
        tag, content, stop = _tlv(data, pos)
        items.append((tag, pos, content, stop))
        pos = stop
    return items


def _oid(content: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if not arcs:
                first = min(value // 40, 2)
                arcs += [first, value - 40 * first]
            else:
                arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


_UTF8, _PRINTABLE, _TELETEX, _IA5, _UNIVERSAL, _BMP = 0x0C, 0x13, 0x14, 0x16, 0x1C, 0x1E
_OCTET_STRING = 0x04
_DIRECTORY = (_TELETEX, _PRINTABLE, _UNIVERSAL, _UTF8, _BMP)  # PKIX1.DirectoryString
_CHALLENGE = (_PRINTABLE, _UTF8)  # PKIX1.pkcs-9-challengePassword
# GnuTLS's table of printable DN attributes: OID → (name or None = the OID, string type).
# A tuple is a CHOICE decoded as a "complex" string; an int is the one DER type expected.
_DN_ATTRIBUTES: dict[str, tuple[str | None, int | tuple[int, ...]]] = {
    "1.3.6.1.5.5.7.9.2": ("placeOfBirth", _DIRECTORY),
    "1.3.6.1.5.5.7.9.3": ("gender", _PRINTABLE),
    "1.3.6.1.5.5.7.9.4": ("countryOfCitizenship", _PRINTABLE),
    "1.3.6.1.5.5.7.9.5": ("countryOfResidence", _PRINTABLE),
    "2.5.4.6": ("C", _PRINTABLE),
    "2.5.4.9": ("street", _DIRECTORY),
    "2.5.4.12": ("title", _DIRECTORY),
    "2.5.4.10": ("O", _DIRECTORY),
    "2.5.4.11": ("OU", _DIRECTORY),
    "2.5.4.3": ("CN", _DIRECTORY),
    "2.5.4.7": ("L", _DIRECTORY),
    "2.5.4.8": ("ST", _DIRECTORY),
    "2.5.4.13": ("description", _DIRECTORY),
    "2.5.4.5": ("serialNumber", _PRINTABLE),
    "2.5.4.20": ("telephoneNumber", _PRINTABLE),
    "2.5.4.4": ("surName", _DIRECTORY),
    "2.5.4.43": ("initials", _DIRECTORY),
    "2.5.4.44": ("generationQualifier", _DIRECTORY),
    "2.5.4.42": ("givenName", _DIRECTORY),
    "2.5.4.65": ("pseudonym", _DIRECTORY),
    "2.5.4.46": ("dnQualifier", _PRINTABLE),
    "2.5.4.17": ("postalCode", _DIRECTORY),
    "2.5.4.41": ("name", _DIRECTORY),
    "2.5.4.15": ("businessCategory", _DIRECTORY),
    "0.9.2342.19200300.100.1.25": ("DC", _IA5),
    "0.9.2342.19200300.100.1.1": ("UID", _DIRECTORY),
    "1.2.840.113556.1.4.656": ("userPrincipalName", _DIRECTORY),
    "1.3.6.1.4.1.311.60.2.1.1": ("jurisdictionOfIncorporationLocalityName", _DIRECTORY),
    "1.3.6.1.4.1.311.60.2.1.2": ("jurisdictionOfIncorporationStateOrProvinceName", _DIRECTORY),
    "1.3.6.1.4.1.311.60.2.1.3": ("jurisdictionOfIncorporationCountryName", _PRINTABLE),
    "1.2.840.113549.1.9.1": ("EMAIL", _IA5),
    "1.2.840.113549.1.9.7": (None, _CHALLENGE),
    "1.2.840.113549.1.9.20": (None, _BMP),
    "1.2.840.113549.1.9.21": (None, _OCTET_STRING),
    "1.3.6.1.5.5.7.8.5": ("XmppAddr", _UTF8),
}


class _DNUnavailable(Exception):
    """GnuTLS could not produce the DN at all; msmtp then prints `(null)`."""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _escape(value: str) -> str:
    """GnuTLS's str_escape (RFC 4514): `,+"\\<>;` always, `#`/space first, space last."""
    out = []
    last = len(value) - 1
    for i, char in enumerate(value):
        if char in ',+"\\<>;' or (i == 0 and char in "# ") or (i == last and char == " "):
            out.append("\\")
        out.append(char)
    return "".join(out)


def _bmp(raw: bytes) -> str | None:
    if len(raw) % 2:
        return None
    try:
        return raw.decode("utf-16-be")
    except UnicodeDecodeError:
        return None


def _attribute_value(oid: str, tag: int, element: bytes, raw: bytes) -> str:
    """One attribute's value as GnuTLS writes it (hex `#…` of the element when it can't)."""
    entry = _DN_ATTRIBUTES.get(oid)
    fallback = "#" + element.hex()
    if entry is None:
        return fallback
    kind = entry[1]
    if isinstance(kind, int):  # a simple string of one DER type
        if tag != kind or not raw:
            return fallback
        decoded = _bmp(raw) if kind == _BMP else _text(raw)
        return fallback if decoded is None or "\0" in decoded else _escape(decoded)
    if tag not in kind:
        return fallback
    if not raw:
        raise _DNUnavailable
    value: str | None
    if tag == _TELETEX:
        value = _text(raw) if raw.isascii() else "#" + raw.hex()
    elif tag == _BMP:
        value = _bmp(raw)
        if value is None:
            value = "#" + raw.hex()
    elif tag == _UNIVERSAL:
        value = "#" + raw.hex()
    else:
        value = _text(raw)
    if "\0" in value:
        return fallback
    return _escape(value)


def _distinguished_name(data: bytes, start: int, end: int) -> str | None:
    """gnutls_x509_crt_get_dn: RDNs in certificate order, `,` between, `+` inside; None = fail."""
    rdns = []
    try:
        for _tag, _at, rdn_start, rdn_end in _children(data, start, end):
            values = []
            for _t, _a, atv_start, atv_end in _children(data, rdn_start, rdn_end):
                (_ot, _oa, oid_start, oid_end), (tag, at, content, stop) = _children(
                    data, atv_start, atv_end
                )[:2]
                oid = _oid(data[oid_start:oid_end])
                name = _DN_ATTRIBUTES.get(oid, (oid, 0))[0] or oid
                value = _attribute_value(oid, tag, data[at:stop], data[content:stop])
                values.append(f"{name}={value}")
            rdns.append("+".join(values))
    except (_DNUnavailable, ValueError, IndexError):
        return None
    return ",".join(rdns) if rdns else None


def _time(data: bytes, tag: int, start: int, end: int) -> int:
    """UTCTime/GeneralizedTime → time_t as GnuTLS gives it (before 1970 → 0)."""
    text = data[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        year += 2000 if year < 50 else 1900
        rest = text[2:]
    else:  # GeneralizedTime YYYYMMDDHHMMSSZ
        year = int(text[:4])
        rest = text[4:]
    if year < 1970:
        return 0
    month, day, hour, minute = (int(rest[i : i + 2]) for i in range(0, 8, 2))
    second = int(rest[8:10]) if rest[8:10].isdigit() else 0
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def ctime_text(timestamp: int) -> str:
    """`Tue Nov 24 15:36:06 2026`: strftime("%c") in the C locale, local time."""
    tm = time.localtime(timestamp)
    return (
        f"{_DAYS[tm.tm_wday]} {_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}"
    )


@dataclass(frozen=True)
class CertificateInfo:
    """The certificate facts msmtp prints (subject/issuer None = GnuTLS failed: `(null)`)."""

    subject: str | None
    issuer: str | None
    activation: int
    expiration: int
    sha256: bytes
    sha1: bytes

    @classmethod
    def from_der(cls, der: bytes) -> CertificateInfo:
        """Read a DER certificate (ValueError if it is not one)."""
        try:
            _tag, tbs_start, tbs_end = _tlv(der, _tlv(der, 0)[1])
            fields = _children(der, tbs_start, tbs_end)
            if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
                fields = fields[1:]
            _serial, _sigalg, issuer, validity, subject = fields[:5]
            (nb_tag, _, nb_start, nb_end), (na_tag, _, na_start, na_end) = _children(
                der, validity[2], validity[3]
            )[:2]
            return cls(
                subject=_distinguished_name(der, subject[2], subject[3]),
                issuer=_distinguished_name(der, issuer[2], issuer[3]),
                activation=_time(der, nb_tag, nb_start, nb_end),
                expiration=_time(der, na_tag, na_start, na_end),
                sha256=hashlib.sha256(der).digest(),
                sha1=hashlib.sha1(der).digest(),
            )
        except (IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a DER certificate: {exc}") from exc


def fingerprint_text(digest: bytes) -> str:
    """`97:C2:1D:…`: upper-case hex bytes joined by colons."""
    return ":".join(f"{byte:02X}" for byte in digest)
