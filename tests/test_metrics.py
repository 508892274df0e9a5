"""Runtime Prometheus metrics, read over the optional HTTP endpoint, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from reliability_support import wait_for
from sqlalchemy.orm import Session

from jsb_infra.local.server import free_port
from jsb_infra.runtime import BridgeClient, Delivery, Event, encode
from jsb_infra.runtime.inbox import Inbox
from jsb_infra.runtime.metrics import BridgeMetrics
from jsb_infra.runtime.outbox import Outbox, OutboxRelay
from jsb_infra.runtime.storage import create_schema, engine_for_url

PAIR = {
    "stream": "metrics-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 3, "backoff": ["200ms"]},
}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("stream", "app")))
            samples[(sample.name, labels)] = sample.value
    return samples


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_metrics_count_publishes_outcomes_lag_and_backlog(open_pair, tmp_path):
    engine = engine_for_url(f"sqlite:///{tmp_path / 'app.db'}")
    create_schema(engine)
    orders = await BridgeClient(open_pair.bridges["orders"]).connect()
    billing = await BridgeClient(open_pair.bridges["billing"]).connect()
    orders_metrics = BridgeMetrics(orders)
    orders_metrics.track_publishes()
    billing_metrics = BridgeMetrics(billing)
    orders_port, billing_port = free_port(), free_port()
    servers = [await orders_metrics.serve(orders_port), await billing_metrics.serve(billing_port)]
    try:
        # orders: 2 events through the outbox relay, 6 directly (one of them twice, under two msg ids)
        outbox = Outbox(orders.bridge)
        with Session(engine) as session, session.begin():
            outbox.record_many(session, [outbox.event("order.created", "order", n, {}) for n in range(2)])
        relay = OutboxRelay(orders, engine)
        orders_metrics.watch(relay=relay)
        before = await scrape(orders_port)
        assert before[("jsb_outbox_backlog", ())] == 2
        assert before[("jsb_connection_up", ())] == 1
        assert before[("jsb_connection_state", (("state", "connected"),))] == 1
        await relay.relay_once()
        await orders_metrics.refresh()
        failing = orders.event("order.created", "order", "f", {"fail_once": True})
        twice = orders.event("order.created", "order", "t", {})
        results = await orders.publish_batch(
            [failing, twice, *[orders.event("order.created", "order", n, {}) for n in range(3)]]
        )
        assert not [r for r in results if isinstance(r, BaseException)]
        await orders.publish_raw(orders.bridge.publish_subject, encode(twice), {"Nats-Msg-Id": "again"})
        after = await scrape(orders_port)
        assert after[("jsb_outbox_backlog", ())] == 0
        assert after[("jsb_outbox_published_total", ())] == 2
        assert after[("jsb_events_published_total", ())] == 2 + 5 + 1  # relay batch, batch, raw

        # billing: an inbox handler that fails the first delivery of one event
        inbox = Inbox(engine, billing.bridge)
        lag_seen: list[float] = []
        own_pending: list[int] = []

        async def apply(event: Event, delivery: Delivery, session: Session) -> None:
            if not lag_seen:
                lag_seen.append(
                    billing_metrics.registry.get_sample_value("jsb_consumer_lag", billing_metrics.labels)
                )
                own_pending.append(delivery.msg.metadata.num_pending)
            if event.payload.get("fail_once") and delivery.count == 1:
                raise RuntimeError("once")

        consumer = billing.consumer(billing_metrics.instrument(inbox.handler(apply)), fetch_timeout=0.2)
        billing_metrics.watch(consumer=consumer, inbox=inbox)
        task = asyncio.create_task(consumer.run())
        # the second copy is answered by the consumer's in-process memory, before the inbox is asked
        await wait_for(lambda: inbox.stats.handled == 7 and consumer.stats.duplicates == 1)
        await consumer.stop()
        await task
        # 8 stored, all delivered by the first pull: nothing waits on the server while the first is
        # handled, though that delivery's own metadata says 7 came after it (what the gauge said when
        # it took the newer of the pull's and the instrumented delivery's figures)
        assert lag_seen == [0] and own_pending == [7]
        handled = await scrape(billing_port)
        outcome = {k[1][0][1]: v for k, v in handled.items() if k[0] == "jsb_events_handled_total"}
        assert outcome == {"ack": 7, "nak": 1, "dlq": 0, "term": 0, "duplicate": 1}
        assert handled[("jsb_handler_failures_total", ())] == 1
        assert handled[("jsb_handler_seconds_count", ())] == 8  # 7 handled + 1 failed
        assert handled[("jsb_consumer_lag", ())] == 0

        status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{billing_port}/health")
        assert status == 200 and json.loads(body)["healthy"] is True
        await billing.close()
        status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{billing_port}/health")
        assert status == 503 and json.loads(body)["connection"] == "closed"
        closed = await scrape(billing_port)
        assert closed[("jsb_connection_up", ())] == 0
        status, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{billing_port}/nothing")
        assert status == 404
        await relay.stop()
    finally:
        for server in servers:
            server.close()
        await orders.close()
        await billing.close()
        engine.dispose()
