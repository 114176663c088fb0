"""The `[notify] command`: run with a message's id, state and reason when it is held, fails or
is delayed, without ever holding up delivery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess

NOTIFY_TIMEOUT = 30.0  # a notification that takes longer is killed
_OUTPUT_LIMIT = 2000  # characters of the command's output kept for the log

log = logging.getLogger("relayd.daemon.notify")


class Notifier:
    """Starts the command for each event and keeps track of the running ones.

    The command is a shell command line; relayd runs `/bin/sh -c 'COMMAND "$@"' relayd-notify
    ID STATE REASON`, so `notify-send relayd` becomes `notify-send relayd ID STATE REASON`. The
    same facts are in the environment: RELAYD_QUEUE_ID, RELAYD_STATE, RELAYD_REASON,
    RELAYD_ACCOUNT, RELAYD_SENDER.
    """

    def __init__(self, command: str | None, *, timeout: float = NOTIFY_TIMEOUT) -> None:
        self.command = command
        self._timeout = timeout
        self._running: set[asyncio.Task[None]] = set()

    def notify(
        self, queue_id: str, state: str, reason: str | None, *, account: str, sender: str
    ) -> None:
        """Run the command for one event in the background (nothing when none is set)."""
        if not self.command:
            return
        facts = {
            "RELAYD_QUEUE_ID": queue_id,
            "RELAYD_STATE": state,
            "RELAYD_REASON": reason or "",
            "RELAYD_ACCOUNT": account,
            "RELAYD_SENDER": sender,
        }
        task = asyncio.create_task(self._run(self.command, facts))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def wait(self, timeout: float) -> None:
        """Give the running commands up to `timeout` seconds (a stopping daemon)."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout)

    async def _run(self, command: str, facts: dict[str, str]) -> None:
        queue_id, state = facts["RELAYD_QUEUE_ID"], facts["RELAYD_STATE"]
        argv = [f'{command} "$@"', "relayd-notify", queue_id, state, facts["RELAYD_REASON"]]
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, **facts},
                start_new_session=True,  # its own group: signals to the daemon's miss it
            )
        except OSError as exc:
            log.warning("%s: notify command could not start: %s", queue_id, exc.strerror)
            return
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its children too: they hold the pipe
            await proc.communicate()
            log.warning("%s: notify command killed after %.0f s", queue_id, self._timeout)
            return
        text = output.decode("utf-8", "replace").strip()[:_OUTPUT_LIMIT]
        if proc.returncode:
            log.warning(
                "%s: notify command (%s) exited %d%s",
                queue_id,
                state,
                proc.returncode,
                f": {text}" if text else "",
            )
        elif text:
            log.info("%s: notify command (%s): %s", queue_id, state, text)
