"""submit.py's Postfix contender: Postfix's `sendmail`, which hands the message to `postdrop`,
which writes it into the queue's `maildrop/` and fsyncs it, from the unpacked deb.

Nothing is installed: the binaries and libraries come from `apt-get download postfix` unpacked
with `dpkg-deb -x` (common.ensure_smtp_sink), and a private configuration directory
(`MAIL_CONFIG`) and queue directory live in the run's work directory; /etc/postfix and
/var/spool/postfix are never used. No Postfix daemon runs: without `pickup` the mail stays in
maildrop/, which is what is timed, and postdrop warns (on stderr) that it cannot wake pickup.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from pathlib import Path

from common import POSTFIX_LIBS, RECIPIENT, Skip, clean_environment, ensure_smtp_sink

NAME = "Postfix sendmail -> postdrop"


def accounts() -> tuple[str, str, str]:
    """mail_owner, setgid_group and default_privs (which must differ from mail_owner).

    Postfix's own `postfix` user and `postdrop` group when the machine has them, else
    `nobody` and `mail`; nothing is added to the system's users.
    """
    owner = "postfix" if known(pwd.getpwnam, "postfix") else "nobody"
    group = "postdrop" if known(grp.getgrnam, "postdrop") else "mail"
    privs = "nobody" if owner != "nobody" else "daemon"
    for user in (owner, privs):
        if not known(pwd.getpwnam, user):
            raise Skip(f"Postfix needs a mail_owner and default_privs user: no user {user!r}")
    if not known(grp.getgrnam, group):
        raise Skip(f"Postfix needs a setgid_group: no group {group!r}")
    return owner, group, privs


def known(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def setup(work: Path) -> tuple[list[str], dict[str, str], Path]:
    """The sendmail command, its environment and the maildrop directory; Skip if impossible."""
    sbin = ensure_smtp_sink().parent  # unpacks the deb when it is not yet
    sendmail, postdrop = sbin / "sendmail", sbin / "postdrop"
    for binary in (sendmail, postdrop):
        if not binary.exists():
            raise Skip(f"{binary} not found in the unpacked postfix deb")
    owner, group, privs = accounts()
    top = work / "postfix"
    conf, queue = top / "etc", top / "queue"
    conf.mkdir(parents=True)
    queue.mkdir(mode=0o755)
    (conf / "dynamicmaps.cf").write_text("")
    maildrop, public = queue / "maildrop", queue / "public"
    maildrop.mkdir()
    public.mkdir()
    if os.geteuid() == 0:  # as `postfix set-permissions` would make them
        uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
        for path, mode in ((maildrop, 0o730), (public, 0o710)):
            os.chown(path, uid, gid)
            path.chmod(mode)
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(queue),
        "command_directory": str(sbin),
        "daemon_directory": str(POSTFIX_LIBS / "sbin"),
        "shlib_directory": str(POSTFIX_LIBS),
        "meta_directory": str(conf),
        "data_directory": str(top / "data"),
        "mail_owner": owner,
        "setgid_group": group,
        "default_privs": privs,
        "myhostname": "relayd-benchmark.localdomain",
        "mydomain": "localdomain",
        "mydestination": "",
        "alias_maps": "",
        "alias_database": "",
        # Not syslog (there may be none, or it is the machine's): postlog's stdout, discarded.
        "maillog_file": "/dev/stdout",
        # Postfix scrubs the environment: keep the unpacked libraries for sendmail and postdrop.
        "import_environment": f"MAIL_CONFIG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH={POSTFIX_LIBS}",
        "export_environment": f"TZ MAIL_CONFIG LANG LD_LIBRARY_PATH={POSTFIX_LIBS}",
    }
    (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    env = clean_environment(os.environ)
    env.update(MAIL_CONFIG=str(conf), LD_LIBRARY_PATH=str(POSTFIX_LIBS))
    return [str(sendmail), RECIPIENT], env, maildrop


def queued(maildrop: Path | None) -> int | None:
    """Queue files in maildrop/ (None when the contender was not set up)."""
    if maildrop is None or not maildrop.is_dir():
        return None
    return sum(1 for path in maildrop.iterdir() if path.is_file())
