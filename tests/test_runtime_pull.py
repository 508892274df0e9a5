"""The consumer's own pull loop against a real nats-server: statuses, heartbeats, stop() with pulls open."""

from __future__ import annotations

import asyncio
import time

import pytest

from jsb_infra import runtime
from jsb_infra.core.topology import consumer_configs
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event
from jsb_infra.runtime.consumer import Consumer, ConsumerLoop


def app_client(pp, app: str) -> BridgeClient:
    return BridgeClient(pp.bridges[app], Credentials(nkey_seed=pp.seeds[app]), reconnect_time_wait=0.2)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        await asyncio.sleep(0.02)


async def durable_state(pp, app: str) -> dict:
    admin = await pp.admin()
    try:
        info = await JetStreamAdmin(admin).consumer_info(pp.pair.stream, pp.bridges[app].durable)
    finally:
        await admin.close()
    assert info is not None
    return info


def recorder() -> tuple[list[tuple[str, int]], object]:
    handled: list[tuple[str, int]] = []

    async def handle(event: Event, delivery: Delivery) -> None:
        handled.append((event.event_id, delivery.count))

    return handled, handle


async def running_loop(pp, **options):
    """Both apps connected, billing's loop running with `options`; returns what it handled too."""
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    handled, handle = recorder()
    consumer = billing.consumer(handle, **options)
    return orders, billing, handled, consumer, asyncio.create_task(consumer.run())


def test_consumer_is_the_deprecated_name_of_consumer_loop():
    assert (
        Consumer is ConsumerLoop and runtime.Consumer is ConsumerLoop and runtime.ConsumerLoop is ConsumerLoop
    )


def test_heartbeat_longer_than_half_the_pull_is_refused_before_anything_runs():
    class NoClient:
        bridge = None

    with pytest.raises(ValueError, match=r"heartbeat: must be 0 \(off\) or at most half of fetch_timeout"):
        ConsumerLoop(NoClient(), None, fetch_timeout=1.0, heartbeat=0.6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fetch_timeout: must be > 0"):
        ConsumerLoop(NoClient(), None, fetch_timeout=0)  # type: ignore[arg-type]


async def test_idle_pulls_get_heartbeats_and_stay_open_until_a_message_comes(provisioned_pair):
    pp = provisioned_pair
    orders, billing, handled, consumer, task = await running_loop(
        pp, batch=10, fetch_timeout=2.0, heartbeat=0.2
    )
    await wait_for(lambda: consumer.stats.pull.heartbeats >= 6)  # two open requests, ~5 beats a second each
    pull = consumer.stats.pull
    assert pull.pulls == 2 and pull.lost == 0 and pull.expired == 0 and pull.delivered == 0
    ack = await orders.publish("order.created", "order", 1, {})
    await wait_for(lambda: consumer.stats.acked == 1, timeout=2.0)
    assert handled[0][1] == 1 and not task.done()
    await consumer.stop()
    await task
    assert billing.permission_violations == []
    state = await durable_state(pp, "billing")
    assert state["ack_floor"]["stream_seq"] == ack.seq and state["num_ack_pending"] == 0
    await orders.close()
    await billing.close()


async def test_deleted_durable_ends_the_pulls_with_409_and_the_loop_resumes_when_it_is_back(provisioned_pair):
    pp = provisioned_pair
    orders, billing, handled, consumer, task = await running_loop(pp, batch=10, fetch_timeout=2.0)
    await wait_for(lambda: consumer.stats.pull.pulls == 2)
    durable = pp.bridges["billing"].durable
    admin_nc = await pp.admin()
    admin = JetStreamAdmin(admin_nc)
    assert await admin.delete_consumer(pp.pair.stream, durable)
    await wait_for(lambda: consumer.stats.pull.conflicts == 2)  # both open requests were told
    assert consumer.stats.pull.last_status.startswith(("409 Consumer Deleted", "503"))
    await wait_for(lambda: consumer.stats.pull.unavailable >= 1)  # the next pulls find no durable
    assert not task.done()
    await admin.create_consumer(pp.pair.stream, consumer_configs(pp.pair)[durable])
    await admin_nc.close()
    await orders.publish("order.created", "order", 1, {})
    await wait_for(lambda: consumer.stats.acked == 1)
    assert [count for _, count in handled] == [1]
    await consumer.stop()
    await task
    assert billing.permission_violations == []
    await orders.close()
    await billing.close()


async def test_stop_with_pulls_open_processes_what_they_bring_and_strands_nothing(provisioned_pair):
    pp = provisioned_pair
    orders, billing, handled, consumer, task = await running_loop(pp, batch=10, fetch_timeout=2.0)
    await wait_for(lambda: consumer.stats.pull.pulls == 2)
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0)
    # Published after stop(): the two open requests (20 messages) take these while they last.
    events = [orders.event("order.created", "order", i, {}) for i in range(15)]
    assert all(not isinstance(r, BaseException) for r in await orders.publish_batch(events))
    started = time.monotonic()
    await stopping
    await task
    assert time.monotonic() - started < 2.0 + 1.0  # the requests end by their expiry
    assert sorted(event_id for event_id, _ in handled) == sorted(e.event_id for e in events)
    assert consumer.stats.acked == 15 and consumer.stats.pull.pulls == 2
    state = await durable_state(pp, "billing")
    assert state["num_ack_pending"] == 0 and state["num_redelivered"] == 0 and state["num_pending"] == 0
    assert state["delivered"]["consumer_seq"] == 15

    # After stop() nothing is pulled: a new message waits in the stream, delivered to no one.
    await orders.publish("order.created", "order", 99, {})
    await asyncio.sleep(0.3)
    state = await durable_state(pp, "billing")
    assert state["num_pending"] == 1 and state["delivered"]["consumer_seq"] == 15
    assert state["num_waiting"] == 0  # no request of the stopped loop is left on the server
    await orders.close()
    await billing.close()


async def test_pulls_lost_to_a_server_restart_are_replaced(provisioned_pair):
    pp = provisioned_pair
    orders, billing, handled, consumer, task = await running_loop(
        pp, batch=10, fetch_timeout=2.0, heartbeat=0.25
    )
    await wait_for(lambda: consumer.stats.pull.pulls == 2)
    pp.server.stop(kill=True)  # the open requests die with it, without a word
    await asyncio.to_thread(pp.server.start)
    await wait_for(lambda: billing.reconnects >= 1 and orders.reconnects >= 1)
    await wait_for(lambda: consumer.stats.pull.lost >= 1)
    assert consumer.stats.pull.pulls >= 3 and not task.done()
    ack = await orders.publish("order.created", "order", 1, {})
    await wait_for(lambda: consumer.stats.acked == 1)
    assert [count for _, count in handled] == [1]
    await consumer.stop()
    await task
    state = await durable_state(pp, "billing")
    assert state["ack_floor"]["stream_seq"] == ack.seq and state["num_ack_pending"] == 0
    await orders.close()
    await billing.close()


async def test_closing_the_client_under_a_running_loop_ends_it_quietly(provisioned_pair):
    pp = provisioned_pair
    orders, billing, handled, consumer, task = await running_loop(pp, batch=10, fetch_timeout=0.5)
    await orders.publish("order.created", "order", 1, {})
    await wait_for(lambda: consumer.stats.acked == 1)
    await billing.close()  # drains the connection while the loop keeps pulling
    stats = await asyncio.wait_for(task, 5)  # returns, does not raise
    assert stats.acked == 1 and len(handled) == 1 and billing.nc.is_closed
    state = await durable_state(pp, "billing")
    assert state["num_ack_pending"] == 0 and state["num_redelivered"] == 0
    await orders.close()
