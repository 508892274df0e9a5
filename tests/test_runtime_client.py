"""The runtime client against a real nats-server that enforces the generated permissions."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from nats.js.api import PubAck

import jsb_infra.runtime as runtime_pkg
from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.server import free_port
from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event, health_check
from jsb_infra.runtime.client import KEPT_PERMISSION_VIOLATIONS

RUNTIME_DIR = Path(runtime_pkg.__file__).parent
FORBIDDEN = ["$JS.API.STREAM", "CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE", "$JS.API.INFO",
             "pull_subscribe(", "add_stream", "add_consumer", "_jsm", "consumer_info"]  # fmt: skip


def bridge_doc() -> dict:
    pair = parse_pairs([{"stream": "orders-billing-sync", "apps": ["orders", "billing"]}]).pairs[0]
    return bridge_outputs(pair, "orders", ["nats://127.0.0.1:4222"]).model_dump(mode="json")


def app_client(pp, app: str, **options) -> BridgeClient:
    options.setdefault("reconnect_time_wait", 0.2)
    return BridgeClient(pp.bridges[app], Credentials(nkey_seed=pp.seeds[app]), **options)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached within the timeout")
        await asyncio.sleep(0.02)


def test_client_source_has_no_management_api():
    for module in sorted(RUNTIME_DIR.glob("*.py")):
        text = module.read_text()
        for needle in FORBIDDEN:
            assert needle not in text, f"{module.name} mentions {needle!r}"
    # and it does use only the data-path calls
    data_path = ("client.py", "consumer.py", "pull.py", "pubacks.py")
    client_text = "".join((RUNTIME_DIR / name).read_text() for name in data_path)
    # publishing is a plain publish with a reply inbox (the stream answers with the PubAck)
    for call in (
        "CONSUMER.MSG.NEXT.",
        "nc.publish(subject, body, reply=",
        ".ack(",
        ".nak(",
        ".in_progress(",
        ".term(",
    ):
        assert call in client_text


async def test_two_apps_exchange_both_ways_with_only_their_permissions(provisioned_pair):
    pp = provisioned_pair
    seen_errors: list[Exception] = []

    async def record(err: Exception) -> None:
        seen_errors.append(err)

    orders = await app_client(pp, "orders", error_cb=record).connect()
    billing = await app_client(pp, "billing", error_cb=record).connect()
    received: dict[str, list[Event]] = {"orders": [], "billing": []}

    def handler_for(app: str):
        async def handle(event: Event, delivery: Delivery) -> None:
            assert delivery.count == 1 and delivery.subject == pp.bridges[app].consume_subject
            received[app].append(event)

        return handle

    consumers = [
        orders.consumer(handler_for("orders"), fetch_timeout=0.5),
        billing.consumer(handler_for("billing"), fetch_timeout=0.5),
    ]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        acks = [await orders.publish("order.created", "order", i, {"n": i}, trace_id="tr") for i in range(10)]
        assert all(isinstance(a, PubAck) and not a.duplicate for a in acks)
        assert [a.seq for a in acks] == sorted(a.seq for a in acks)
        batch = [billing.event("invoice.sent", "invoice", i, {"n": i}) for i in range(50)]
        results = await billing.publish_batch(batch, max_in_flight=8)
        assert all(isinstance(r, PubAck) for r in results) and len({r.seq for r in results}) == 50
        await wait_for(lambda: len(received["billing"]) == 10 and len(received["orders"]) == 50)
        report = await health_check(orders)
    finally:
        for c in consumers:
            await c.stop()
        await asyncio.gather(*tasks)
    assert {e.producer for e in received["billing"]} == {"orders"}
    assert [e.payload["n"] for e in received["orders"]] == list(range(50))
    assert [e.event_id for e in received["orders"]] == [e.event_id for e in batch]
    assert received["billing"][0].trace_id == "tr" and received["billing"][0].resource_id == "0"
    assert report.healthy and report.connection == "connected" and report.rtt_ms is not None
    assert (
        report.config["publish_subject"] == "orders.sync.billing" and report.config["auto_provision"] is False
    )
    await orders.close()
    await billing.close()
    assert consumers[0].stats.acked == 50 and consumers[1].stats.acked == 10
    assert orders.permission_violations == [] and billing.permission_violations == []
    assert not [e for e in seen_errors if "violation" in str(e).lower()], seen_errors
    # everything was acked: the work queue is empty on both sides
    admin = await pp.admin()
    js = admin.jetstream()
    for durable in ("orders-workers", "billing-workers"):
        info = await js.consumer_info(pp.pair.stream, durable)
        assert info.num_pending == 0 and info.num_ack_pending == 0
    await admin.close()


async def test_a_denied_operation_is_recorded(provisioned_pair):
    """The violation collector really sees denials, so the zero-violation assertions mean something."""
    pp = provisioned_pair
    orders = await app_client(pp, "orders", publish_budget=0, publish_timeout=0.5).connect()
    with pytest.raises(runtime_pkg.PublishError):
        await orders.publish_raw("billing.sync.orders", b"{}", {"Nats-Msg-Id": "x"})
    await orders.nc.flush()
    await wait_for(lambda: orders.permission_violations)
    assert 'publish to "billing.sync.orders"' in orders.permission_violations[0].lower()
    report = await health_check(orders)
    assert not report.healthy and report.permission_violations
    await orders.close()


async def test_same_event_twice_is_stored_once(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    event = orders.event("order.created", "order", "A-1", {"total": 3})
    first = await orders.publish_event(event)
    second = await orders.publish_event(event)
    batch_again = await orders.publish_batch([event])
    await orders.close()
    assert not first.duplicate
    assert second.duplicate and second.seq == first.seq
    assert isinstance(batch_again[0], PubAck) and batch_again[0].duplicate
    admin = await pp.admin()
    info = await admin.jetstream().stream_info(pp.pair.stream)
    await admin.close()
    assert info.state.messages == 1


async def test_publish_header_is_exact_case(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    event = orders.event("order.created", "order", "A-2", None)
    ack = await orders.publish_event(event)
    await orders.close()
    admin = await pp.admin()
    stored = await admin.jetstream().get_msg(pp.pair.stream, ack.seq)
    await admin.close()
    # the event id keyed by the app's secret (tests/test_msg_id_preemption.py), in exact case
    assert stored.headers == {"Nats-Msg-Id": orders.msg_ids.event(event.event_id)}
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", runtime_pkg.decode(stored.data).occurred_at
    )


async def test_graceful_stop_answers_the_batch_in_hand(provisioned_pair, caplog):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    billing = await app_client(pp, "billing").connect()
    await orders.publish_batch([orders.event("e", "r", i, None) for i in range(20)])
    handled: list[str] = []
    consumer = billing.consumer(None, batch=20)
    started = asyncio.Event()

    async def slow(event: Event, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.02)
        handled.append(event.event_id)

    consumer.handler = slow
    task = asyncio.create_task(consumer.run())
    await started.wait()
    with caplog.at_level(logging.INFO):
        await consumer.stop()
    await task
    await billing.close()
    await orders.close()
    assert len(handled) == 20 and consumer.stats.acked == 20
    admin = await pp.admin()
    info = await admin.jetstream().consumer_info(pp.pair.stream, "billing-workers")
    await admin.close()
    assert info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.parametrize("attempts", [1, 3])
async def test_first_connect_tries_exactly_connect_attempts_times(attempts):
    refused: list[Exception] = []

    async def record(err: Exception) -> None:
        refused.append(err)

    bridge = BridgeOutputs.model_validate({**bridge_doc(), "servers": [f"nats://127.0.0.1:{free_port()}"]})
    client = BridgeClient(bridge, connect_attempts=attempts, reconnect_time_wait=0.05, error_cb=record)
    with pytest.raises(runtime_pkg.ConnectGaveUp, match=f"after {attempts} attempt"):
        await asyncio.wait_for(client.connect(), 10)
    assert len(refused) == attempts, refused
    assert all(isinstance(err, ConnectionRefusedError) for err in refused)


@pytest.mark.parametrize("attempts", [0, -1])
def test_connect_attempts_below_one_is_refused(attempts):
    with pytest.raises(ValueError, match="connect_attempts: must be at least 1"):
        BridgeClient(BridgeOutputs.model_validate(bridge_doc()), connect_attempts=attempts)


async def test_violations_are_bounded_and_health_recovers_after_the_window(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    denied = 150
    for _ in range(denied):
        await orders.nc.publish("billing.sync.orders", b"{}")  # billing's subject: denied to orders
    await orders.nc.flush()
    await wait_for(lambda: orders.permission_violation_count == denied)
    assert len(orders.permission_violations) == KEPT_PERMISSION_VIOLATIONS < denied
    report = await health_check(orders, violation_window=1.0)
    assert (
        not report.healthy and report.permission_violations and report.permission_violations_total == denied
    )
    await asyncio.sleep(1.3)  # the window passes without a new denial
    report = await health_check(orders, violation_window=1.0)
    assert (
        report.healthy and report.permission_violations == [] and report.permission_violations_total == denied
    )
    await orders.close()


async def test_publish_batch_keeps_at_most_max_in_flight_unanswered(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders").connect()
    pubacks = await orders._pubacks()
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, len(pubacks.pending))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    events = [orders.event("order.created", "order", i, {"n": i}) for i in range(300)]
    results = await orders.publish_batch(events, max_in_flight=5)
    sampling = False
    await sampler
    assert all(isinstance(r, PubAck) for r in results) and len({r.seq for r in results}) == 300
    assert 1 <= peak <= 5
    await orders.close()
