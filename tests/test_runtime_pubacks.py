"""PubAckInbox against a real nats-server: the PubAck of a sequential publish, and the timeout that one
watchdog keeps for every awaited request (no timer per publish)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import nats.errors
import nats.js.errors
import pytest

from jsb_infra.local.server import LocalNatsServer
from jsb_infra.runtime.pubacks import WATCHDOG_SLACK, PubAckInbox


async def test_request_returns_the_pubacks_and_times_out_only_the_unanswered_one(
    make_server: Callable[..., LocalNatsServer],
) -> None:
    server = make_server()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s.>"])
        silent = await nc.subscribe("quiet.>")  # takes the message, never answers: not "no responders"
        inbox = await PubAckInbox(nc, "_INBOX").start()

        acks = [
            await inbox.request("s.a", f"m{i}".encode(), {"Nats-Msg-Id": f"id{i}"}, 5.0) for i in range(3)
        ]
        assert [a.seq for a in acks] == [1, 2, 3] and {a.stream for a in acks} == {"S"}
        again = await inbox.request("s.a", b"m0", {"Nats-Msg-Id": "id0"}, 5.0)
        assert again.duplicate and again.seq == 1, "the same msg id: the stream keeps one copy"

        # A long request is waiting when a short one comes: the watchdog wakes for the short one.
        slow = asyncio.create_task(inbox.request("quiet.a", b"x", {}, 30.0))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await inbox.request("quiet.b", b"y", {}, 0.3)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 0.3 + WATCHDOG_SLACK + 0.2, waited
        assert not slow.done(), "the long request still waits"
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        assert inbox.pending == {}, "timed-out and cancelled requests leave no entry behind"

        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await inbox.request("nothing.here", b"z", {}, 5.0)
        assert (await js.stream_info("S")).state.messages == 3
        # closing while a request waits must not leave it waiting forever
        waiting = asyncio.create_task(inbox.request("quiet.c", b"w", {}, 0.3))
        await asyncio.sleep(0.05)
        inbox.close()
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(waiting, 2.0)
        await silent.unsubscribe()
        inbox.close()
    finally:
        await nc.close()


@pytest.mark.parametrize("former", [False, True], ids=["refused-at-once", "control-nats-py-raises"])
async def test_a_publish_the_stream_refuses_fails_at_once_with_the_servers_error(
    make_server: Callable[..., LocalNatsServer], monkeypatch: pytest.MonkeyPatch, former: bool
) -> None:
    """A full subject (discard new per subject: 10077) and a message over max_msg_size (10054) are
    answered with an error PubAck: the request fails at once with that error. Control: the former code
    handed the error document to nats-py's `APIError.from_error`, which raises instead of returning, so
    the answer was lost and the publish waited for its timeout."""
    if former:
        from jsb_infra.runtime import pubacks

        monkeypatch.setattr(pubacks, "api_error", nats.js.errors.APIError.from_error)
    server = make_server()
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().add_stream(
            name="S",
            subjects=["s.>"],
            discard="new",
            max_msgs_per_subject=1,
            discard_new_per_subject=True,
            max_msg_size=64,
        )
        inbox = await PubAckInbox(nc, "_INBOX").start()
        assert (await inbox.request("s.a", b"first", {}, 2.0)).seq == 1
        for subject, body, code in (("s.a", b"second", 10077), ("s.b", b"x" * 100, 10054)):
            started = time.monotonic()
            if former:
                with pytest.raises(nats.errors.TimeoutError):
                    await inbox.request(subject, body, {}, 0.5)
                continue
            with pytest.raises(nats.js.errors.APIError) as refused:
                await inbox.request(subject, body, {}, 2.0)
            assert refused.value.err_code == code and time.monotonic() - started < 0.5
        inbox.close()
    finally:
        await nc.close()
