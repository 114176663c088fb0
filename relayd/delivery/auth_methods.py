"""The one table of AUTH methods: which msmtp 1.8.23 knows (in its order) and which relayd has."""

from __future__ import annotations

#: Every AUTH method msmtp 1.8.23 knows, in the order its `--serverinfo` lists them, and whether
#: relayd implements it: an EHLO's AUTH line is searched for each, and a configured method
#: relayd lacks fails as msmtp's does when its SASL library lacks one ("not compiled in").
METHODS: dict[str, bool] = {
    "PLAIN": True,
    "SCRAM-SHA-1": True,
    "SCRAM-SHA-256": True,
    "EXTERNAL": True,
    "GSSAPI": False,
    "CRAM-MD5": True,
    "DIGEST-MD5": False,
    "LOGIN": True,
    "NTLM": False,
    "OAUTHBEARER": True,
    "XOAUTH2": True,
}
KNOWN = tuple(METHODS)
IMPLEMENTED = frozenset(name for name, ours in METHODS.items() if ours)
