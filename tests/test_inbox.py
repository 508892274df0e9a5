"""The idempotent inbox against a real nats-server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from reliability_support import business, effects, wait_for
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jsb_infra.core.outputs import ConsumerOutputs
from jsb_infra.runtime import BridgeClient, Delivery, Event, encode
from jsb_infra.runtime.inbox import Inbox, minimum_retention, redelivery_span_ns
from jsb_infra.runtime.outbox import Outbox, OutboxRelay
from jsb_infra.runtime.storage import create_schema, engine_for_url, inbox_table, utc_now

S = 1_000_000_000
FAST = {
    "stream": "inbox-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 4, "backoff": ["1s"]},
}


@pytest.fixture
def engine(database_url):
    engine = engine_for_url(database_url)
    create_schema(engine)
    business.create_all(engine)
    yield engine
    engine.dispose()


def effect_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(select(effects.c.event_id))]


def test_retention_covers_the_duplicate_window_and_every_redelivery():
    consumer = ConsumerOutputs(
        max_deliver=3, ack_wait_ns=1 * S, backoff_ns=[1 * S, 5 * S], max_ack_pending=10
    )
    # deliveries 1 and 2 may each hold the message for the ack wait and wait for the next delivery
    # (backoff 1 s, then 5 s); delivery 3 may hold it for another ack wait.
    assert redelivery_span_ns(consumer) == (1 + 1) * S + (1 + 5) * S + 1 * S
    assert minimum_retention(consumer, 120 * S) == timedelta(seconds=129)


@pytest.mark.parametrize("open_pair", [FAST], indirect=True)
async def test_a_failed_handler_leaves_nothing_and_its_redelivery_applies_once(open_pair, engine):
    bridge = open_pair.bridges["billing"]
    inbox = Inbox(engine, bridge)
    calls = 0

    async def apply(event: Event, delivery: Delivery, session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(effects.insert().values(event_id=event.event_id))
        if delivery.count == 1:
            raise RuntimeError("the first delivery fails after writing")

    async with BridgeClient(open_pair.bridges["orders"]) as orders, BridgeClient(bridge) as billing:
        event = orders.event("order.created", "order", 1, {})
        await orders.publish_event(event)
        consumer = billing.consumer(inbox.handler(apply), fetch_timeout=0.2)
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: inbox.stats.handled == 1)
        await consumer.stop()
        await task
    assert calls == 2 and consumer.stats.naked == 1 and inbox.stats.failed == 1
    assert effect_ids(engine) == [event.event_id]  # the failed attempt's write was rolled back


async def test_an_event_that_arrives_again_is_acked_without_running_the_handler(open_pair, engine):
    """The same event stored twice (as after a relay re-publish outside the duplicate window), and a
    consumer restarted in between: the inbox in the database answers, not the process's memory."""
    bridge = open_pair.bridges["billing"]
    calls = 0

    async def apply(event: Event, delivery: Delivery, session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(effects.insert().values(event_id=event.event_id))

    async with BridgeClient(open_pair.bridges["orders"]) as orders:
        event = orders.event("order.created", "order", 1, {})
        for copy in ("first", "second"):
            # a different Nats-Msg-Id, so the stream stores it again
            await orders.publish_raw(bridge.consume_subject, encode(event), {"Nats-Msg-Id": copy})
            inbox = Inbox(engine, bridge)  # a fresh process's inbox
            async with BridgeClient(bridge) as billing:
                consumer = billing.consumer(inbox.handler(apply), fetch_timeout=0.2)
                task = asyncio.create_task(consumer.run())
                await wait_for(lambda inbox=inbox: inbox.stats.handled + inbox.stats.duplicates == 1)
                await consumer.stop()
                await task
            assert consumer.stats.acked == 1
    assert calls == 1 and inbox.stats.duplicates == 1
    assert effect_ids(engine) == [event.event_id]


async def test_cleanup_deletes_only_rows_past_the_retention(open_pair, engine):
    inbox = Inbox(engine, open_pair.bridges["billing"])
    with pytest.raises(
        ValueError, match="keep: must be at least the duplicate window plus the redelivery span"
    ):
        inbox.cleanup(keep=timedelta(seconds=1))

    async def noop(event: Event, delivery: Delivery, session: Session) -> None:
        return None

    async with (
        BridgeClient(open_pair.bridges["orders"]) as orders,
        BridgeClient(open_pair.bridges["billing"]) as billing,
    ):
        await orders.publish_batch([orders.event("order.created", "order", n, {}) for n in range(4)])
        consumer = billing.consumer(inbox.handler(noop), fetch_timeout=0.2)
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: inbox.stats.handled == 4)
        await consumer.stop()
        await task
    with engine.begin() as conn:  # age two rows past the retention
        old = [r[0] for r in conn.execute(select(inbox_table.c.event_id).limit(2))]
        conn.execute(
            update(inbox_table)
            .where(inbox_table.c.event_id.in_(old))
            .values(received_at=utc_now() - inbox.retention - timedelta(seconds=1))
        )
    assert inbox.cleanup() == 2
    with engine.connect() as conn:
        left = {r[0] for r in conn.execute(select(inbox_table.c.event_id))}
        assert conn.execute(select(func.count()).select_from(inbox_table)).scalar_one() == 2
    assert not left & set(old)


@pytest.mark.parametrize("open_pair", [FAST], indirect=True)
async def test_a_redelivery_to_a_second_consumer_while_the_first_still_handles_waits_and_is_a_duplicate(
    open_pair, engine
):
    """Two consumers of one durable in one process. The first holds the event's transaction open past
    the ack wait (no in_progress), so the server redelivers to the second: its transaction must wait
    for the first without blocking the event loop, then find the row."""
    bridge = open_pair.bridges["billing"]
    inbox = Inbox(engine, bridge)
    calls = 0

    async def slow_apply(event: Event, delivery: Delivery, session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(effects.insert().values(event_id=event.event_id))
        await asyncio.sleep(1.6)  # past the 1 s ack wait

    async with BridgeClient(open_pair.bridges["orders"]) as orders, BridgeClient(bridge) as billing:
        event = orders.event("order.created", "order", 1, {})
        await orders.publish_event(event)
        handler = inbox.handler(slow_apply)
        consumers = [billing.consumer(handler, fetch_timeout=0.2, progress_interval=3600) for _ in range(2)]
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        started = time.monotonic()
        await wait_for(lambda: inbox.stats.handled == 1 and inbox.stats.duplicates == 1, timeout=8)
        assert time.monotonic() - started < 5
        for consumer in consumers:
            await consumer.stop()
        await asyncio.gather(*tasks)
    assert calls == 1 and effect_ids(engine) == [event.event_id]


async def test_a_handler_records_its_follow_up_event_in_the_same_transaction(open_pair, engine):
    """billing handles order.created and records invoice.created in the inbox's session: effect, inbox
    row and outbox row commit together; a failed attempt leaves no follow-up behind."""
    billing_bridge = open_pair.bridges["billing"]
    inbox = Inbox(engine, billing_bridge)
    outbox = Outbox(billing_bridge)

    async def apply(event: Event, delivery: Delivery, session: Session) -> None:
        session.execute(effects.insert().values(event_id=event.event_id))
        outbox.record(session, outbox.event("invoice.created", "invoice", event.resource_id, {}))
        if delivery.count == 1:
            raise RuntimeError("first attempt fails after recording")

    received: list[Event] = []

    async def on_invoice(event: Event, delivery: Delivery) -> None:
        received.append(event)

    async with (
        BridgeClient(open_pair.bridges["orders"]) as orders,
        BridgeClient(billing_bridge) as billing,
    ):
        await orders.publish_event(orders.event("order.created", "order", 7, {}))
        relay = OutboxRelay(billing, engine, poll_interval=0.05)
        workers = [
            billing.consumer(inbox.handler(apply), fetch_timeout=0.2),
            orders.consumer(on_invoice, fetch_timeout=0.2),
        ]
        tasks = [asyncio.create_task(relay.run()), *(asyncio.create_task(w.run()) for w in workers)]
        await wait_for(lambda: len(received) == 1)
        await asyncio.sleep(0.3)
        await relay.stop()
        for worker in workers:
            await worker.stop()
        await asyncio.gather(*tasks)
    assert [(e.event_type, e.producer, e.resource_id) for e in received] == [
        ("invoice.created", "billing", "7")
    ]
    assert relay.stats.published == 1 and len(effect_ids(engine)) == 1
