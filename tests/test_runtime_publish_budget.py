"""Publishing retries for a time budget and health follows the stream, on a real server (one node).

The cluster test (tests/test_cluster.py) shows the same through real leader elections; here the gap is
made by deleting the stream and creating it again, which is what an election looks like to an app:
"no responders" on the publish subject until a leader takes it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import provision
from nats.js.api import PubAck
from nats.js.errors import APIError, BadRequestError

from jsb_infra.core.topology import stream_config
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, Credentials, PublishError, health_check
from jsb_infra.runtime.client import is_retryable_publish_error


def app_client(pp, app: str, **options) -> BridgeClient:
    return BridgeClient(
        pp.bridges[app], Credentials(nkey_seed=pp.seeds[app]), reconnect_time_wait=0.2, **options
    )


async def without_stream(pp, seconds: float) -> None:
    """Delete the pair's stream, and create it again (with its consumers) `seconds` later."""
    nc = await pp.admin()
    try:
        await JetStreamAdmin(nc).delete_stream(pp.pair.stream)
    finally:
        await nc.close()
    await asyncio.sleep(seconds)
    await provision(pp.url, pp.pair)


def test_duplicate_in_process_and_leaderless_answers_are_retryable_refusals_are_not():
    assert is_retryable_publish_error(
        APIError(code=409, err_code=10158, description="duplicate message id is in process")
    )
    assert is_retryable_publish_error(
        APIError(code=503, err_code=10008, description="temporarily unavailable")
    )
    assert not is_retryable_publish_error(
        BadRequestError(code=400, err_code=10071, description="wrong last sequence")
    )
    assert not is_retryable_publish_error(ValueError("x"))


async def test_a_publish_rides_through_a_leaderless_gap_and_health_follows(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders", publish_budget=10).connect()
    try:
        assert (await health_check(orders)).healthy
        gap = asyncio.create_task(without_stream(pp, 1.5))
        await asyncio.sleep(0.3)  # the stream is gone now
        report = await health_check(orders)
        assert not report.healthy and "no responders" in report.jetstream, report
        started = time.monotonic()
        event = orders.event("order.created", "order", 1, {"n": 1})
        ack = await orders.publish_event(event)
        waited = time.monotonic() - started
        await gap
        assert isinstance(ack, PubAck) and ack.seq == 1 and not ack.duplicate
        assert waited > 0.8, f"the publish should have waited for the stream, took {waited:.2f}s"
        report = await health_check(orders)
        assert report.healthy and report.jetstream == "ok" and report.last_puback_age_s is not None, report
        assert report.publish_failing_for_s is None
    finally:
        await orders.close()


async def test_the_budget_is_a_deadline_then_the_error_surfaces(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders", publish_budget=1.2, retry_wait=0.1, retry_max_wait=0.2).connect()
    try:
        nc = await pp.admin()
        await JetStreamAdmin(nc).delete_stream(pp.pair.stream)
        await nc.close()
        started = time.monotonic()
        probe = asyncio.create_task(orders.publish("order.created", "order", 1, {}))
        await asyncio.sleep(0.6)
        stalled = await health_check(orders, stall_after=0.3)
        with pytest.raises(PublishError, match=r"publish budget of 1\.2s"):
            await probe
        elapsed = time.monotonic() - started
        assert 1.2 <= elapsed < 2.5, elapsed
        assert not stalled.healthy and stalled.publish_failing_for_s is not None
        assert orders.publish_failing_since is None  # nothing is retrying any more
        results = await orders.publish_batch([orders.event("e", "r", i, {}) for i in range(20)])
        assert all(isinstance(r, PublishError) for r in results)
        assert time.monotonic() - started < 6, "a batch against a missing stream ends after ~one budget"
    finally:
        await orders.close()


async def test_a_batch_retries_every_event_through_a_gap_nothing_lost_or_doubled(provisioned_pair):
    pp = provisioned_pair
    orders = await app_client(pp, "orders", publish_timeout=1.0).connect()
    try:
        events = [orders.event("order.created", "order", i, {"i": i}) for i in range(200)]
        first = await orders.publish_batch(events[:100])
        gap = asyncio.create_task(without_stream(pp, 1.0))
        await asyncio.sleep(0.2)
        second = await orders.publish_batch(events[100:])
        await gap
        assert all(isinstance(r, PubAck) for r in first + second)
        nc = await pp.admin()
        info = await JetStreamAdmin(nc).stream_info(pp.pair.stream)
        await nc.close()
        assert info is not None and info["state"]["messages"] == 100  # the recreated stream: the second batch
        assert stream_config(pp.pair)["name"] == info["config"]["name"]
    finally:
        await orders.close()
