"""relayd-sendmail's --version and --help: msmtp's layout, with relayd's queue and daemon."""

from __future__ import annotations

from relayd.errors import RelaydError

MSMTP_VERSION = "1.8.23"


def version_lines(prog: str) -> list[str]:
    """--version: relayd's version, msmtp's configuration file names, the queue and daemon."""
    from relayd import __version__, paths
    from relayd.accounts import files
    from relayd.daemon.instance import daemon_listening
    from relayd.store import location

    try:
        queue = location.database_url()
    except RelaydError as err:
        queue = f"(unusable: {err.message})"
    wake = paths.wake_socket()
    daemon = "running" if daemon_listening(wake) else "not running"
    return [
        f"{prog} (relayd) version {__version__}",
        f"Compatible with msmtp version {MSMTP_VERSION}",
        f"System configuration file name: {files.system_file()}",
        f"User configuration file name: {files.user_file()}",
        f"Queue: {redact(queue)}",
        f"Daemon: {daemon} (wake-up socket {wake})",
    ]


def redact(url: str) -> str:
    """A database URL without its password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def help_text(prog: str) -> str:
    """--help."""
    return HELP.format(prog=prog)


HELP = """\
Usage:

Sendmail mode (default):
  {prog} [option...] [--] recipient...
  {prog} [option...] -t [--] [recipient...]
  Read a mail from standard input, store it durably in relayd's queue and let
  the relayd daemon deliver it through the chosen msmtp account.
Server information mode:
  {prog} [option...] --serverinfo
Remote Message Queue Starting mode:
  {prog} [option...] --rmqs=host|@domain|#queue

General options:
  --version                    print version
  --help                       print help
  -P, --pretend                print configuration info and exit
  -d, --debug                  print debugging information
Changing the mode of operation:
  -S, --serverinfo             print information about the server
  --rmqs=host|@domain|#queue   send a Remote Message Queue Starting request
  -bm                          store the mail in the queue (default)
  -bp                          list the queue (also: invoked as mailq)
  -bs                          speak SMTP on standard input and output
  -q                           flush the queue
  -odb, -odq, -odi             wake the daemon (default), only queue, or
                               deliver now in this process
Configuration options:
  -C, --file=filename          set configuration file
  -a, --account=id             use the given account instead of the account
                               named "default"; its settings may be changed
                               with command-line options
  --host=hostname              set the server, use only command-line settings;
                               do not use any configuration file data
  --port=number                set port number
  --source-ip=[IP]             set source ip address
  --proxy-host=[IP|hostname]   set/unset proxy
  --proxy-port=[number]        set/unset proxy port
  --socket=[socketname]        set/unset local socket to connect to
  --timeout=(off|seconds)      set/unset network timeout in seconds
  --protocol=(smtp|lmtp)       use the given sub protocol
  --domain=string              set the argument of EHLO or LHLO command
  --auth[=(on|off|method)]     enable/disable authentication and optionally
                               choose the method
  --user=[username]            set/unset user name for authentication
  --passwordeval=[eval]        evaluate password for authentication
  --tls[=(on|off)]             enable/disable TLS encryption
  --tls-starttls[=(on|off)]    enable/disable STARTTLS for TLS
  --tls-trust-file=[file]      set/unset trust file for TLS
  --tls-crl-file=[file]        set/unset revocation file for TLS
  --tls-fingerprint=[f]        set/unset trusted certificate fingerprint
  --tls-certcheck[=(on|off)]   enable/disable server certificate checks for TLS
  --tls-key-file=[file]        set/unset private key file for TLS
  --tls-cert-file=[file]       set/unset private cert file for TLS
  --tls-priorities=[prios]     set/unset TLS priorities
  --tls-host-override=[host]   set/unset override for TLS host verification
  --tls-min-dh-prime-bits=[b]  set/unset minimum bit size of DH prime
Options specific to sendmail mode:
  --auto-from[=(on|off)]       enable/disable automatic envelope-from addresses
  -f, --from=address           set envelope from address
  --maildomain=[domain]        set the domain for automatic envelope from
                               addresses
  -N, --dsn-notify=(off|cond)  set/unset DSN conditions
  -R, --dsn-return=(off|ret)   set/unset DSN amount
  -X, --logfile=[file]         set/unset log file
  --logfile-time-format=[fmt]  set/unset log file time format for strftime()
  --syslog[=(on|off|facility)] enable/disable/configure syslog logging
  -t, --read-recipients        read additional recipients from the mail
  --read-envelope-from         read envelope from address from the mail
  --aliases=[file]             set/unset aliases file
  --set-from-header[=(auto|on|off)] set From header handling
  --set-date-header[=(auto|off)] set Date header handling
  --set-msgid-header[=(auto|off)] set Message-ID header handling
  --remove-bcc-headers[=(on|off)] enable/disable removal of Bcc headers
  --undisclosed-recipients[=(on|off)] enable/disable replacement of To/Cc/Bcc
                               with To: undisclosed-recipients:;
  -F name                      full name for an added From header
  --                           end of options
Accepted but ignored: -A, -B, -G, -h, -i, -L, -m, -n, -O, -o (except -od)
"""
