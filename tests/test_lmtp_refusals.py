"""An LMTP refusal is known by its classified event, never by its text: drain, -odi, the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relayd.accounts.account import Account
from relayd.daemon import drain
from relayd.delivery.classify import classify, for_all
from relayd.delivery.result import DeliveryResult, Disposition, Event, RecipientResult, Reply
from relayd.errors import RelaydError
from relayd.settings import Settings
from relayd.store.sql import SqlStore
from relayd.sysexits import ExitCode
from tests.queue_fill import enqueue_many
from tests.store_helpers import message as new_message
from tests.test_delivery_session import account, message, send
from tests.upstream import Fault, Features, UpstreamServer

T0 = 1_700_000_000.0
LOOKALIKE = "the server refuses to send the mail to rcpt@example.org"


def test_the_session_marks_an_lmtp_refusal_with_its_event() -> None:
    with UpstreamServer(lmtp=True) as server:
        server.fail("END", Fault(reply="550 5.1.1 mailbox full"), address="full@example.net")
        (result,) = send(
            account(server, protocol="lmtp"), message("a@example.net", "full@example.net")
        )
    sent, refused = result.recipients
    assert (sent.event, refused.event) == (None, Event.LMTP_RECIPIENT)
    assert drain.lmtp_refusals(result) == [(refused.error, Reply(550, ("5.1.1 mailbox full",)))]


def test_a_refusal_is_recognised_whatever_its_text() -> None:
    reply = Reply(550, ("5.7.1 nothing special here",))
    refusal = RecipientResult("a@x.test", Disposition.FAIL, reply, "refused", Event.LMTP_RECIPIENT)
    result = DeliveryResult(Disposition.FAIL, ExitCode.UNAVAILABLE, "refused", reply, (refusal,))
    assert drain.lmtp_refusals(result) == [("refused", reply)]


def test_another_failure_with_the_refusals_text_is_none() -> None:
    # A password command may say anything, also exactly what msmtp says for an LMTP refusal.
    result = for_all(classify(Event.PASSWORD_LOOKUP, reason=LOOKALIKE), ["rcpt@example.org"])
    assert result.recipients[0].error == LOOKALIKE
    assert drain.lmtp_refusals(result) == []


def test_the_log_tells_a_lookalike_password_failure_from_a_refusal(tmp_path: Path) -> None:
    settings = Settings(database=f"sqlite:///{tmp_path / 'q.sqlite3'}")
    logfile = tmp_path / "msmtp.log"

    def password(_: Account) -> str:
        raise RelaydError(LOOKALIKE)

    features = Features(auth=("PLAIN",))
    with (
        UpstreamServer(lmtp=True, features=features) as server,
        SqlStore.open(settings.database) as store,
    ):
        enqueue_many(store, [new_message()], T0)
        claimed = store.claim_due("default", T0, 300, "r", 1)
        lmtp = account(server, protocol="lmtp", auth="PLAIN", user="me", logfile=str(logfile))
        drained = asyncio.run(
            drain.deliver_claimed(store, lmtp, claimed, settings, owner="r", password=password)
        )
    (delivered,) = drained.delivered
    assert delivered.result.error == LOOKALIKE
    (line,) = logfile.read_text().splitlines()
    assert f"errormsg='{LOOKALIKE}'" in line
    assert "delivery to one or more recipients failed" not in line
