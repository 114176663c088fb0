"""The fault harness's SMTP server: its own process, every event logged, faults from a file.

Run as ``python -m tests.faults.recorder_server --log L --faults F --port-file P [--port N]``.
Each event is one line ``TIME KIND CONN KEY DETAIL`` written with a single ``write(2)`` on an
O_APPEND descriptor, so the log is complete up to the instant of a SIGKILL. KIND is one of
``connect``, ``close``, ``mail`` (MAIL FROM received; KEY = local part of the path), ``data``
(DATA accepted: the body transfer starts), ``body`` (the final dot arrived; KEY from the
Message-ID), ``accept`` (the message is taken, logged before the 250 is written), ``refuse``
(a scripted non-2xx final reply), ``vanish`` (closed after the whole body without a reply) and
``fault`` (DETAIL = ``STAGE:ACTION``). A message counts as accepted at ``accept``.

Faults are rules in a JSON file re-read whenever it is replaced (atomic rename): ``{"rules":
[{"stage": "END", "action": "drop", "every": 5, "limit": 3, "delay": 0, "reply": "", "keys":
[]}]}``. Stages: GREETING, EHLO, MAIL, RCPT, DATA, BODY (drop while the body arrives), END
(after the final dot). Actions: ``drop`` (close without a reply), ``reply`` (send ``reply``
instead), ``delay`` (wait ``delay`` s, then the normal reply), ``silent`` (never answer; the
connection stays open until the client closes it). ``delay`` also applies before a drop or a
reply. A rule applies to every ``every``-th matching occurrence of its stage, at most ``limit``
times; ``keys`` restricts it to those messages (MAIL and later stages). Counters restart when
the file changes. The process exits after ``--lifetime`` seconds at the latest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

_PATH = re.compile(r"FROM:\s*<([^>]*)>", re.IGNORECASE)
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^@>]*)@", re.IGNORECASE | re.MULTILINE)
STAGES = ("GREETING", "EHLO", "MAIL", "RCPT", "DATA", "BODY", "END")
ACTIONS = ("drop", "reply", "delay", "silent")


@dataclass
class Rule:
    """One scripted fault (see the module docstring) with its counters."""

    stage: str
    action: str
    every: int = 1
    limit: int | None = None
    delay: float = 0.0
    reply: str = ""
    keys: frozenset[str] | None = None
    seen: int = 0
    applied: int = 0

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Rule:
        stage, action = str(item["stage"]), str(item["action"])
        if stage not in STAGES or action not in ACTIONS:
            raise ValueError(f"bad rule {item!r}")
        keys = item.get("keys")
        return cls(
            stage=stage,
            action=action,
            every=max(1, int(item.get("every", 1))),
            limit=None if item.get("limit") is None else int(item["limit"]),
            delay=float(item.get("delay", 0.0)),
            reply=str(item.get("reply", "")),
            keys=None if keys is None else frozenset(str(k) for k in keys),
        )


class FaultBook:
    """The rules of the faults file, re-read when the file is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._rules: list[Rule] = []

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._rules = None, []
            return
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            loaded = json.loads(self.path.read_text() or "{}")
            self._rules = [Rule.from_json(item) for item in loaded.get("rules", [])]

    def check(self, stage: str, key: str | None) -> Rule | None:
        """The rule that fires for this occurrence of `stage`, if any (counting it)."""
        self._reload()
        for rule in self._rules:
            if rule.stage != stage or (rule.keys is not None and key not in rule.keys):
                continue
            if rule.limit is not None and rule.applied >= rule.limit:
                continue
            rule.seen += 1
            if rule.seen % rule.every == 0:
                rule.applied += 1
                return rule
        return None


class Recorder:
    """The server's state: the event log and the fault book."""

    def __init__(self, log: Path, faults: Path) -> None:
        self._fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.book = FaultBook(faults)
        self._conns = itertools.count(1)
        self.prefix = f"{os.getpid()}."

    def new_conn(self) -> str:
        return f"{self.prefix}{next(self._conns)}"

    def log(self, kind: str, conn: str, key: str | None, detail: str = "") -> None:
        line = f"{time.time():.6f} {kind} {conn} {key or '-'} {detail or '-'}\n"
        os.write(self._fd, line.encode())


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP with every stage logged and scriptable."""

    line_length_limit = 16 * 1024 * 1024

    def __init__(self, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(_Handler(recorder), **kwargs)
        self.recorder = recorder
        self.conn = recorder.new_conn()
        self.key: str | None = None

    async def apply(self, stage: str) -> str | None:
        """Apply this stage's fault: "" = carry on normally, a reply to send instead, or None
        when the connection was closed."""
        rule = self.recorder.book.check(stage, self.key)
        if rule is None:
            return ""
        self.recorder.log("fault", self.conn, self.key, f"{stage}:{rule.action}")
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.action == "silent":
            await asyncio.sleep(3600)  # cancelled when the client closes the connection
        if rule.action == "drop":
            if self.transport is not None:
                self.transport.close()
            return None
        return rule.reply if rule.action == "reply" else ""

    async def _intercepted(self, stage: str) -> bool:
        """Apply `stage`'s fault: True when it replaced the normal handling (a reply or a
        drop), False to go on as usual."""
        reply = await self.apply(stage)
        if reply is None:
            return True
        if reply:
            await self.push(reply)
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.recorder.log("close", self.conn, self.key)
        super().connection_lost(exc)

    async def _handle_client(self) -> None:
        self.recorder.log("connect", self.conn, None)
        reply = await self.apply("GREETING")
        if reply is None:
            return
        if reply:
            await self.push(reply)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._intercepted("EHLO"):
            await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        found = _PATH.search(arg or "")
        self.key = found.group(1).partition("@")[0] if found else None
        self.recorder.log("mail", self.conn, self.key)
        if not await self._intercepted("MAIL"):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._intercepted("RCPT"):
            await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self._intercepted("DATA"):
            return
        self.recorder.log("data", self.conn, self.key)
        if self.recorder.book.check("BODY", self.key) is not None:
            self.recorder.log("fault", self.conn, self.key, "BODY:drop")
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            try:
                await asyncio.wait_for(self._reader.readuntil(b"\r\n"), 5)
            finally:
                if self.transport is not None:
                    self.transport.close()
            return
        await super().smtp_DATA(arg)


class _Handler:
    """The EHLO reply (no PIPELINING: each message's MAIL comes after the previous result) and
    the end of the data."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_EHLO(
        self, smtp: _FaultySMTP, session: Session, envelope: Envelope, hostname: str, _: Any
    ) -> list[str]:
        session.host_name = hostname
        return ["250-faults.test", "250-8BITMIME", "250 SMTPUTF8"]

    async def handle_DATA(self, smtp: _FaultySMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)
        found = _MESSAGE_ID.search(content)
        key = found.group(1).decode() if found else smtp.key
        smtp.key = key
        self.recorder.log("body", smtp.conn, key, str(len(content)))
        reply = await smtp.apply("END")
        if reply is None:
            self.recorder.log("vanish", smtp.conn, key)
            return "421 4.4.2 gone"  # written to a closed transport: nobody reads it
        if reply and not reply.startswith("2"):
            self.recorder.log("refuse", smtp.conn, key, reply[:3])
            return reply
        self.recorder.log("accept", smtp.conn, key)
        return reply or "250 2.0.0 Ok: queued"


async def serve(args: argparse.Namespace) -> None:
    recorder = Recorder(Path(args.log), Path(args.faults))
    loop = asyncio.get_running_loop()

    def factory() -> _FaultySMTP:
        return _FaultySMTP(
            recorder,
            hostname="faults.test",
            decode_data=False,
            enable_SMTPUTF8=True,
            timeout=args.idle,
            loop=loop,
        )

    server = await loop.create_server(factory, host="127.0.0.1", port=args.port)
    port = server.sockets[0].getsockname()[1]
    temp = Path(args.port_file + ".tmp")
    temp.write_text(str(port))
    temp.replace(args.port_file)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.lifetime)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True)
    parser.add_argument("--faults", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=900.0)
    parser.add_argument("--idle", type=float, default=60.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
