"""`relayd-sendmail` given bytes that are not UTF-8 where the queue keeps text: one line, a
sysexits code, nothing stored; never a UnicodeEncodeError at the INSERT.

The bytes reach relayd as they would from a shell: argv (decoded by Python with
surrogateescape), a `-t` To header, the From read by `--read-envelope-from`, an msmtprc account
name, a `-C` file name, a `--host` value delivered with `-odi`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sendmail_helpers import run_sendmail, stored_messages, write_msmtprc

BAD = "\udcff"  # the byte 0xff as Python's argv decoding (surrogateescape) gives it
RC = "account default\nhost 127.0.0.1\nport 1\nfrom me@example.org\n"


def _one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert err.count("\n") == 1 and err.startswith("relayd-sendmail: "), err
    assert "Traceback" not in err and "Error" not in err, err
    return err


@pytest.mark.parametrize(
    ("args", "headers", "shown"),
    [
        (["-f", f"me{BAD}@example.org", "you@example.org"], b"", "'me\\xff@example.org'"),
        ([f"you{BAD}@example.org"], b"", "'you\\xff@example.org'"),
        (["-t"], b"To: you\xfe@example.org\n", "'you\\xfe@example.org'"),
        (
            ["--read-envelope-from", "you@example.org"],
            b"From: me\xff@example.org\n",
            "'me\\xff@example.org'",
        ),
    ],
    ids=["-f", "recipient", "-t To", "--read-envelope-from"],
)
def test_an_envelope_address_that_is_not_utf8_exits_65(
    args: list[str], headers: bytes, shown: str
) -> None:
    write_msmtprc(RC)
    result = run_sendmail(args, headers + b"Subject: bytes\n\nbody\n")
    assert result.returncode == 65
    err = _one_line(result)
    assert f"invalid address {shown}: not valid UTF-8" in err, err
    assert stored_messages() == []


def test_an_account_name_that_is_not_utf8_exits_78(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_bytes(b"account acc\xff\nhost 127.0.0.1\nport 1\nfrom me@example.org\n")
    rc.chmod(0o600)
    result = run_sendmail(["-C", str(rc), "-a", f"acc{BAD}", "you@example.org"], b"\nbody\n")
    assert result.returncode == 78
    assert "account name 'acc\\xff' is not valid UTF-8" in _one_line(result)
    assert stored_messages() == []


def test_a_config_file_name_that_is_not_utf8_exits_64(tmp_path: Path) -> None:
    rc = write_msmtprc(RC, Path(os.fsdecode(bytes(tmp_path) + b"/rc\xff")))
    result = run_sendmail(["-C", str(rc), "you@example.org"], b"\nbody\n")
    assert result.returncode == 64
    assert "configuration file name" in _one_line(result) and "rc\\xff" in result.stderr.decode()
    assert stored_messages() == []


@pytest.mark.parametrize("host", [f"h{BAD}", "a..b"], ids=["not-utf8", "empty-label"])
def test_a_host_python_cannot_encode_is_not_located_as_msmtp_says(host: str) -> None:
    """Python's IDNA codec refuses both; msmtp refuses the first (libidn2) and looks the second
    up as it is. -odi delivers here: the failure is msmtp's line, and the attempt is stored."""
    write_msmtprc(RC)
    args = [f"--host={host}", "--port=25", "-fme@example.org", "-odi", "you@example.org"]
    result = run_sendmail(args, b"Subject: host\n\nbody\n")
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "UnicodeError" not in err, err
    shown = host.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert f"cannot locate host {shown}: " in err, err
    if host != "a..b":
        assert "Parameter string not correctly encoded" in err
    (stored,) = stored_messages()
    assert stored.state == "queued"
    msmtp = shutil.which("msmtp")
    if msmtp is not None:  # the same reason from msmtp itself
        rc = write_msmtprc(RC)
        theirs = subprocess.run(
            [msmtp, "-C", str(rc), *args[:3], "you@example.org"],
            input=b"\nbody\n",
            capture_output=True,
            timeout=30,
        )
        reason = err.split("\n")[0].split(": ", 2)[2]
        assert reason.encode() in theirs.stderr, theirs.stderr
