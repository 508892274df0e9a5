"""A nats-server killed (SIGKILL) and restarted on the same store mid-exchange loses no event."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import PubAck

from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event

SHORT = {
    "stream": "restart-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 5, "backoff": ["1s", "1s"]},
}
TOTAL = 2000


def app_client(pp, app: str) -> BridgeClient:
    return BridgeClient(
        pp.bridges[app],
        Credentials(nkey_seed=pp.seeds[app]),
        reconnect_time_wait=0.2,
        publish_timeout=2.0,
        publish_budget=10,
    )


@pytest.mark.parametrize("provisioned_pair", [SHORT], indirect=True)
async def test_kill_and_restart_mid_exchange_loses_nothing(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    seen: set[str] = set()
    deliveries = 0

    async def handle(event: Event, delivery: Delivery) -> None:
        nonlocal deliveries
        deliveries += 1
        seen.add(event.event_id)
        await asyncio.sleep(0.0005)

    consumer = billing.consumer(handle, batch=50, fetch_timeout=0.5)
    consume_task = asyncio.create_task(consumer.run())
    events = [orders.event("order.created", "order", i, {"i": i}) for i in range(TOTAL)]
    results: list[object] = []
    killed = False
    for start in range(0, TOTAL, 100):
        results += await orders.publish_batch(events[start : start + 100], max_in_flight=50)
        if not killed and start >= TOTAL // 2 - 100:
            killed = True
            assert 0 < len(seen) < TOTAL
            pp.server.stop(kill=True)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pp.server.start)
    errors = [r for r in results if not isinstance(r, PubAck)]
    assert errors == []
    deadline = time.monotonic() + 60
    while len(seen) < TOTAL and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await consumer.stop()
    await consume_task
    assert orders.reconnects >= 1 and billing.reconnects >= 1
    await orders.close()
    await billing.close()
    assert seen == {e.event_id for e in events}
    assert deliveries >= TOTAL
