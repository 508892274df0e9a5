"""The runtime client when things go wrong: a DLQ that refuses, replies that fail, bad events in a batch,
a stop in the middle of a fetch. Against a real nats-server enforcing the generated permissions."""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
import pytest
from nats.js.api import PubAck

from jsb_infra.core.topology import stream_config
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, Credentials, Delivery, EnvelopeError, Event, PublishError
from jsb_infra.runtime.consumer import DLQ_DELIVERY_COUNT, DLQ_REASON, DLQ_STREAM_SEQUENCE

TWO_TRIES = {
    "stream": "dlqfail-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 2, "backoff": ["1s", "1s"]},
}
ONE_TRY = {
    "stream": "onetry-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 1, "backoff": ["1s"]},
}
QUICK = {
    "stream": "quick-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 5, "backoff": ["500ms"]},
}


def app_client(pp, app: str, **options) -> BridgeClient:
    options.setdefault("reconnect_time_wait", 0.2)
    return BridgeClient(pp.bridges[app], Credentials(nkey_seed=pp.seeds[app]), **options)


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        await asyncio.sleep(0.02)


async def consumer_state(pp, durable: str = "billing-workers") -> tuple[int, int]:
    """(num_pending, num_ack_pending) as the server sees them."""
    admin = await pp.admin()
    info = await admin.jetstream().consumer_info(pp.pair.stream, durable)
    await admin.close()
    return info.num_pending, info.num_ack_pending


async def set_dlq_captured(pp, captured: bool) -> None:
    """Take the DLQ subject out of the stream (its publishes then find no responder) or put it back."""
    config = stream_config(pp.pair)
    if not captured:
        config["subjects"] = [s for s in config["subjects"] if not s.endswith(".dlq")]
    admin = await pp.admin()
    await JetStreamAdmin(admin).update_stream(config)
    await admin.close()


# -- 1. a DLQ publish that fails ----------------------------------------------------------------------
@pytest.mark.parametrize("provisioned_pair", [TWO_TRIES], indirect=True)
async def test_failed_dlq_publish_naks_early_and_holds_the_last_delivery_until_it_succeeds(provisioned_pair):
    pp = provisioned_pair
    await set_dlq_captured(pp, False)
    admin = await pp.admin()
    ack = await admin.jetstream().publish("orders.sync.billing", b"not an envelope")
    await admin.close()
    billing = await app_client(pp, "billing", publish_budget=0, publish_timeout=0.5).connect()
    consumer = billing.consumer(None, fetch_timeout=0.5, dlq_retry_wait=0.2, dlq_retry_max_wait=0.4)
    task = asyncio.create_task(consumer.run())
    # delivery 1 of 2: the DLQ refuses, so the message is nak'd for the backoff's redelivery
    await wait_for(lambda: consumer.stats.naked == 1)
    # delivery 2 of 2 (the last): held and retried; the server would never deliver it again
    await wait_for(lambda: consumer.stats.dlq_failures >= 3)
    await asyncio.sleep(1.5)  # longer than the 1 s ack wait: in_progress keeps it with this client
    assert consumer.stats.dead_lettered == 0 and not task.done()
    assert await consumer_state(pp) == (0, 1)
    await set_dlq_captured(pp, True)
    await wait_for(lambda: consumer.stats.dead_lettered == 1)
    await consumer.stop()
    await task
    await billing.close()
    assert consumer.stats.naked == 1 and billing.permission_violations == []
    admin = await pp.admin()
    js = admin.jetstream()
    dlq = await js.get_last_msg(pp.pair.stream, "billing.sync.dlq")
    info = await js.stream_info(pp.pair.stream)
    await admin.close()
    assert dlq.headers[DLQ_REASON] == "malformed" and dlq.headers[DLQ_DELIVERY_COUNT] == "2"
    assert dlq.headers[DLQ_STREAM_SEQUENCE] == str(ack.seq) and dlq.data == b"not an envelope"
    assert info.state.messages == 1  # only the DLQ copy: the original left the work queue
    assert await consumer_state(pp) == (0, 0)


@pytest.mark.parametrize("provisioned_pair", [ONE_TRY], indirect=True)
async def test_stop_while_the_dlq_refuses_leaves_the_message_and_names_its_sequence(provisioned_pair, caplog):
    pp = provisioned_pair
    await set_dlq_captured(pp, False)
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing", publish_budget=0, publish_timeout=0.5).connect()

    async def always_fail(event: Event, delivery: Delivery) -> None:
        raise RuntimeError("cannot handle")

    consumer = billing.consumer(always_fail, fetch_timeout=0.5, dlq_retry_wait=5.0, dlq_retry_max_wait=5.0)
    ack = await orders.publish("order.created", "order", 1, {})
    with caplog.at_level(logging.ERROR, logger="jsb_infra.runtime"):
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.stats.dlq_failures == 1)
        started = time.monotonic()
        await consumer.stop()  # wakes the 5 s retry pause at once
        await task
        stopped_in = time.monotonic() - started
    await orders.close()
    await billing.close()
    assert stopped_in < 4.0, stopped_in
    assert consumer.stats.dead_lettered == 0 and consumer.stats.acked == 0
    stranded = [r.getMessage() for r in caplog.records if "NOT dead-lettered" in r.getMessage()]
    assert len(stranded) == 1 and f"stream seq {ack.seq} " in stranded[0], stranded
    assert await consumer_state(pp) == (0, 1)  # left unacknowledged, not silently dropped


# -- 2. a failed reply or idempotency store does not end the loop ------------------------------------
class FlakyStore:
    """An idempotency store whose `seen` fails once for one event and whose `mark` fails for another."""

    def __init__(self, seen_fails_for: str, mark_fails_for: str):
        self.seen_fails_for = seen_fails_for
        self.mark_fails_for = mark_fails_for
        self.ids: set[str] = set()

    async def seen(self, event_id: str) -> bool:
        if event_id == self.seen_fails_for:
            self.seen_fails_for = ""
            raise ConnectionError("store unreachable")
        return event_id in self.ids

    async def mark(self, event_id: str) -> None:
        if event_id == self.mark_fails_for:
            raise ConnectionError("store unreachable")
        self.ids.add(event_id)


@pytest.mark.parametrize("provisioned_pair", [QUICK], indirect=True)
async def test_handler_answering_itself_and_a_failing_idempotency_store_do_not_stop_the_loop(
    provisioned_pair,
):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    events = [orders.event("order.created", "order", i, {}) for i in range(4)]
    self_acked, seen_fails, mark_fails, plain = (e.event_id for e in events)
    handled: list[tuple[str, int]] = []

    async def handle(event: Event, delivery: Delivery) -> None:
        handled.append((event.event_id, delivery.count))
        if event.event_id == self_acked:
            await delivery.msg.ack()  # the handler answers itself; the loop must not trip over it

    store = FlakyStore(seen_fails_for=seen_fails, mark_fails_for=mark_fails)
    consumer = billing.consumer(handle, idempotency=store, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    results = await orders.publish_batch(events)
    assert all(isinstance(r, PubAck) for r in results)
    await wait_for(lambda: len(handled) == 4 and consumer.stats.acked == 3)
    await consumer.stop()
    await task
    await orders.close()
    await billing.close()
    assert sorted(handled) == sorted([(self_acked, 1), (seen_fails, 2), (mark_fails, 1), (plain, 1)])
    assert consumer.stats.answered_by_handler == 1 and consumer.stats.idempotency_failures == 2
    assert consumer.stats.naked == 1  # the delivery whose `seen` failed comes back after the backoff
    assert await consumer_state(pp) == (0, 0)


@pytest.mark.parametrize("provisioned_pair", [QUICK], indirect=True)
async def test_an_ack_refused_while_disconnected_does_not_end_the_loop(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    started, release = asyncio.Event(), asyncio.Event()
    counts: list[int] = []

    async def held(event: Event, delivery: Delivery) -> None:
        counts.append(delivery.count)
        started.set()
        await release.wait()

    consumer = billing.consumer(held, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await orders.publish("order.created", "order", 1, {})
    await started.wait()
    pp.server.stop(kill=True)
    await wait_for(lambda: not billing.nc.is_connected)
    size = 1_000_000  # fill the reconnect buffer: the ack then raises OutboundBufferLimitError
    while size >= 1:
        try:
            await billing.nc.publish("billing.sync.orders", b"x" * size)
        except nats.errors.OutboundBufferLimitError:
            size //= 2
    release.set()
    await wait_for(lambda: consumer.stats.answer_failures == 1)
    await asyncio.sleep(0.2)
    assert not task.done()
    await asyncio.to_thread(pp.server.start)
    # the unacknowledged message comes back after the ack wait, to the same, still running loop; the
    # handler had succeeded (its id is marked), so the redelivery is acked as a duplicate
    await wait_for(lambda: consumer.stats.duplicates == 1, timeout=20)
    await consumer.stop()
    await task
    await orders.close()
    await billing.close()
    assert counts == [1] and consumer.stats.acked == 0
    assert await consumer_state(pp) == (0, 0)


# -- 3. publish_batch with bad events ------------------------------------------------------------------
async def test_batch_reports_bad_events_and_still_sends_the_rest(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders", publish_timeout=1.0).connect()
    good = [orders.event("order.created", "order", i, {"i": i}) for i in range(3)]
    unencodable = orders.event("order.created", "order", "u", {"when": object()})
    huge = orders.event("order.created", "order", "h", "x" * (orders.nc.max_payload + 1))
    results = await orders.publish_batch([good[0], unencodable, huge, good[1], good[2]], max_in_flight=2)
    assert (
        isinstance(results[0], PubAck) and isinstance(results[3], PubAck) and isinstance(results[4], PubAck)
    )
    assert isinstance(results[1], EnvelopeError) and "payload" in str(results[1])
    assert isinstance(results[2], PublishError) and "max_payload" in str(results[2])
    for _ in range(5):  # nothing leaked: later batches with the same bound still complete
        again = await asyncio.wait_for(
            orders.publish_batch([huge, orders.event("e", "r", 1, {}), orders.event("e", "r", 2, {})], 2), 10
        )
        assert [type(r) for r in again] == [PublishError, PubAck, PubAck]
    assert orders.nc.is_connected
    await orders.close()


async def test_batch_while_disconnected_leaks_no_in_flight_slot(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders", publish_timeout=0.5, publish_budget=0).connect()
    pp.server.stop(kill=True)
    await wait_for(lambda: not orders.nc.is_connected)
    # each ~700 kB: the third overflows the 2 MiB reconnect buffer when it is sent
    big = [orders.event("order.created", "order", i, "x" * 700_000) for i in range(5)]
    results = await asyncio.wait_for(orders.publish_batch(big, max_in_flight=2), 20)
    assert len(results) == 5 and any(not isinstance(r, PubAck) for r in results)
    await asyncio.to_thread(pp.server.start)
    await wait_for(lambda: orders.nc.is_connected)
    small = [orders.event("order.created", "order", i, {}) for i in range(6)]
    results = await asyncio.wait_for(orders.publish_batch(small, max_in_flight=2), 15)
    assert all(isinstance(r, PubAck) for r in results), results
    assert (await orders._pubacks()).pending == {}  # no future left waiting for a PubAck
    await orders.close()


# -- 8. stop() during a fetch -----------------------------------------------------------------------------
@pytest.mark.parametrize("provisioned_pair", [QUICK], indirect=True)
async def test_stop_lets_the_running_fetch_finish_and_answers_what_it_brings(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    handled: list[str] = []

    async def handle(event: Event, delivery: Delivery) -> None:
        handled.append(event.event_id)

    consumer = billing.consumer(handle, batch=10, fetch_timeout=2.0)
    task = asyncio.create_task(consumer.run())
    await consumer.started.wait()
    await asyncio.sleep(0.3)  # the loop now waits inside a fetch on an empty queue
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.1)
    events = [orders.event("order.created", "order", i, {}) for i in range(3)]
    for event in events:  # the first one at least reaches the fetch running when stop() was called
        await orders.publish_event(event)
    await asyncio.wait_for(stopping, 10)
    await task
    await orders.close()
    await billing.close()
    # what the fetch brought was handled and acked; the rest stays queued for the next run
    assert 1 <= len(handled) == consumer.stats.acked
    assert handled == [e.event_id for e in events[: len(handled)]]
    assert await consumer_state(pp) == (3 - len(handled), 0)
