"""Failures: nak with the bridge's backoff (measured), DLQ after max_deliver, malformed -> DLQ at once."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event
from jsb_infra.runtime.consumer import (
    DLQ_CONSUMER,
    DLQ_DELIVERY_COUNT,
    DLQ_ERROR,
    DLQ_ORIGINAL_SUBJECT,
    DLQ_REASON,
    DLQ_STREAM_SEQUENCE,
)

SHORT = {
    "stream": "short-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 3, "backoff": ["1s", "2s", "3s"]},
}
NO_DLQ = {
    "stream": "nodlq-sync",
    "apps": ["orders", "billing"],
    "dlq": False,
    "consumer": {"max_deliver": 2, "backoff": ["1s", "1s"]},
}


def app_client(pp, app: str, **options) -> BridgeClient:
    return BridgeClient(
        pp.bridges[app], Credentials(nkey_seed=pp.seeds[app]), reconnect_time_wait=0.2, **options
    )


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        await asyncio.sleep(0.02)


async def work_queue_is_empty(pp, durable: str) -> bool:
    admin = await pp.admin()
    info = await admin.jetstream().consumer_info(pp.pair.stream, durable)
    await admin.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


async def stored_on(pp, subject: str) -> int:
    """Messages the stream holds on `subject`."""
    admin = await pp.admin()
    info = await admin.jetstream().stream_info(pp.pair.stream, subjects_filter=subject)
    await admin.close()
    return (info.state.subjects or {}).get(subject, 0)


async def dlq_message(pp, subject: str):
    admin = await pp.admin()
    msg = await admin.jetstream().get_last_msg(pp.pair.stream, subject)
    await admin.close()
    return msg


@pytest.mark.parametrize("provisioned_pair", [SHORT], indirect=True)
async def test_redeliveries_follow_the_backoff(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    arrivals: list[tuple[int, float]] = []

    async def fail_twice(event: Event, delivery: Delivery) -> None:
        arrivals.append((delivery.count, time.monotonic()))
        if delivery.count < 3:
            raise RuntimeError(f"not yet ({delivery.count})")

    consumer = billing.consumer(fail_twice, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await orders.publish("order.created", "order", 1, {})
    await wait_for(lambda: consumer.stats.acked == 1)
    await consumer.stop()
    await task
    assert [count for count, _ in arrivals] == [1, 2, 3]
    backoff_s = [ns / 1e9 for ns in pp.bridges["billing"].consumer.backoff_ns]
    for n in (1, 2):
        waited = arrivals[n][1] - arrivals[n - 1][1]
        expected = backoff_s[n - 1]
        assert abs(waited - expected) <= 0.2 * expected + 0.5, (n, waited, expected)
    assert consumer.stats.naked == 2 and consumer.stats.dead_lettered == 0
    await orders.close()
    await billing.close()
    assert await work_queue_is_empty(pp, "billing-workers")


@pytest.mark.parametrize("provisioned_pair", [SHORT], indirect=True)
async def test_always_failing_goes_to_dlq_after_max_deliver(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    counts: list[int] = []

    async def always_fail(event: Event, delivery: Delivery) -> None:
        counts.append(delivery.count)
        raise ValueError("cannot bill\nthis order")

    consumer = billing.consumer(always_fail, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    ack = await orders.publish("order.created", "order", 7, {"total": 1})
    await wait_for(lambda: consumer.stats.dead_lettered == 1)
    await asyncio.sleep(0.3)  # a fourth delivery would show up here
    await consumer.stop()
    await task
    assert counts == [1, 2, 3] == list(range(1, pp.bridges["billing"].consumer.max_deliver + 1))
    # the ack of the last delivery crossed the account import as a request and came back confirmed
    assert consumer.stats.final_answers_confirmed == 1 and consumer.stats.final_answers_unconfirmed == 0
    dlq = await dlq_message(pp, "billing.sync.dlq")
    assert dlq.headers[DLQ_REASON] == "max_deliver"
    assert dlq.headers[DLQ_DELIVERY_COUNT] == "3"
    assert dlq.headers[DLQ_ORIGINAL_SUBJECT] == "orders.sync.billing"
    assert dlq.headers[DLQ_STREAM_SEQUENCE] == str(ack.seq)
    assert dlq.headers[DLQ_CONSUMER] == "billing-workers"
    assert dlq.headers[DLQ_ERROR] == "ValueError: cannot bill this order"
    assert b'"resource_id":"7"' in dlq.data  # body kept
    await orders.close()
    await billing.close()
    assert await work_queue_is_empty(pp, "billing-workers")


@pytest.mark.parametrize("provisioned_pair", [SHORT], indirect=True)
async def test_malformed_message_goes_to_dlq_at_once(provisioned_pair):
    pp = provisioned_pair
    billing = await app_client(pp, "billing").connect()
    admin = await pp.admin()
    ack = await admin.jetstream().publish("orders.sync.billing", b'{"event_id": 5}')
    await admin.close()
    called: list[Event] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        called.append(event)

    consumer = billing.consumer(handler, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: consumer.stats.dead_lettered == 1)
    await consumer.stop()
    await task
    await billing.close()
    assert called == [] and consumer.stats.naked == 0
    dlq = await dlq_message(pp, "billing.sync.dlq")
    assert dlq.headers[DLQ_REASON] == "malformed"
    assert dlq.headers[DLQ_DELIVERY_COUNT] == "1"
    assert dlq.headers[DLQ_STREAM_SEQUENCE] == str(ack.seq)
    assert "event_id" in dlq.headers[DLQ_ERROR]
    assert dlq.data == b'{"event_id": 5}'
    assert await work_queue_is_empty(pp, "billing-workers")


@pytest.mark.parametrize("provisioned_pair", [NO_DLQ], indirect=True)
async def test_without_dlq_the_message_is_terminated_with_a_log_line(provisioned_pair, caplog):
    pp = provisioned_pair
    billing = await app_client(pp, "billing").connect()
    admin = await pp.admin()
    await admin.jetstream().publish("orders.sync.billing", b"garbage")
    await admin.close()

    async def handler(event: Event, delivery: Delivery) -> None:
        raise AssertionError("never called for garbage")

    consumer = billing.consumer(handler, fetch_timeout=0.5)
    with caplog.at_level(logging.ERROR, logger="jsb_infra.runtime"):
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.stats.terminated == 1)
        await consumer.stop()
        await task
    await billing.close()
    assert any("DLQ is off; terminating" in r.getMessage() for r in caplog.records)
    assert billing.permission_violations == []
    assert await work_queue_is_empty(pp, "billing-workers")


@pytest.mark.parametrize("provisioned_pair", [NO_DLQ], indirect=True)
async def test_without_dlq_the_last_delivery_is_terminated_for_sure(provisioned_pair):
    """A handler that fails every delivery: the last one (2/2) is terminated by a request the server
    confirms (the garbage test above terminates a first delivery with a plain `+TERM`), counted once,
    and the message leaves the work queue."""
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    counts: list[int] = []

    async def always_fail(event: Event, delivery: Delivery) -> None:
        counts.append(delivery.count)
        raise ValueError("cannot bill")

    work = pp.bridges["billing"].consume_subject
    await orders.publish("order.created", "order", 1, {})
    assert await stored_on(pp, work) == 1  # the control of the count below
    consumer = billing.consumer(always_fail, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: consumer.stats.terminated == 1)
    await asyncio.sleep(0.3)  # a third delivery would show up here
    await consumer.stop()
    await task
    await orders.close()
    await billing.close()
    assert counts == [1, 2] == list(range(1, pp.bridges["billing"].consumer.max_deliver + 1))
    stats = consumer.stats
    assert (stats.final_answers_confirmed, stats.final_answers_unconfirmed) == (1, 0)
    assert (stats.terminated, stats.naked, stats.dead_lettered) == (1, 1, 0)
    assert await work_queue_is_empty(pp, "billing-workers")
    assert await stored_on(pp, work) == 0


@pytest.mark.parametrize("provisioned_pair", [SHORT], indirect=True)
async def test_slow_handler_sends_in_progress_and_is_not_redelivered(provisioned_pair):
    """Two instances on the same durable: while one works slowly, the other keeps a pull open, so a
    missing `in_progress` would show up as a second delivery to it after the 1 s ack wait."""
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    instances = [await app_client(pp, "billing").connect() for _ in range(2)]
    counts: list[int] = []

    async def slow(event: Event, delivery: Delivery) -> None:
        counts.append(delivery.count)
        await asyncio.sleep(2.5)  # 2.5x the 1s ack wait

    consumers = [client.consumer(slow, fetch_timeout=0.5) for client in instances]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    await asyncio.gather(*(c.started.wait() for c in consumers))
    await orders.publish("order.created", "order", 1, {})
    await wait_for(lambda: sum(c.stats.acked for c in consumers) >= 1)
    await asyncio.sleep(1.5)  # a redelivery would have started by now (and appended to counts)
    for consumer in consumers:
        await consumer.stop()
    await asyncio.gather(*tasks)
    await orders.close()
    for client in instances:
        await client.close()
    assert counts == [1] and sum(c.stats.acked for c in consumers) == 1
    assert all(client.permission_violations == [] for client in instances)
    assert await work_queue_is_empty(pp, "billing-workers")
