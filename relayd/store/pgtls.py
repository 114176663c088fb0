"""TLS for `pgwire`, as libpq's sslmode says (imported only when a connection is encrypted).

`prefer`/`allow`/`require`: encrypted when the server can (`require`: or refused; `allow`
tries TLS first as `prefer` does, where libpq tries it second), the certificate unchecked
unless a root certificate is given (`sslrootcert`, or ~/.postgresql/root.crt exists: then as
verify-ca, as libpq does). `verify-ca`: signed by that root. `verify-full`: and names the host.
`sslrootcert=system`: the system's roots and verify-full. A client certificate or a revocation
list in ~/.postgresql (which libpq would use) is Unsupported here: psycopg handles those.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from relayd.store.pgtarget import Error, Target, Unsupported


class TLSError(Error):
    """The TLS handshake or the server's certificate failed."""


def context(target: Target) -> ssl.SSLContext:
    """The SSLContext libpq would use for `target`."""
    home = os.path.expanduser("~/.postgresql")
    for name in ("postgresql.crt", "root.crl"):
        if os.path.exists(os.path.join(home, name)):
            raise Unsupported(f"~/.postgresql/{name}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    mode, root = target.sslmode, target.sslrootcert
    if root == "system":
        ctx.load_default_certs()
        return ctx  # check_hostname and CERT_REQUIRED: verify-full
    default_root = os.path.join(home, "root.crt")
    if root is None and (mode.startswith("verify") or os.path.exists(default_root)):
        root = default_root
    if root is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if not os.path.exists(root):
        raise TLSError(f'root certificate file "{root}" does not exist')
    try:
        ctx.load_verify_locations(root)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f'could not read root certificate file "{root}": {exc}') from None
    ctx.check_hostname = mode == "verify-full"
    return ctx


def wrap(raw: Any, target: Target, timeout: float) -> ssl.SSLSocket:
    """`raw` (a connected `_socket.socket`, after the server said yes to SSLRequest) in TLS."""
    ctx = context(target)
    sock = socket.socket(fileno=raw.detach())
    sock.settimeout(timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=target.host)
    except (OSError, ValueError) as exc:  # ssl.SSLError, CertificateError, a reset
        sock.close()
        raise TLSError(f"SSL error: {exc}") from None
