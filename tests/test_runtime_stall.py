"""Health and metrics that follow the server while the consumer stalls (real nats-server, the app's
generated permissions): a stalled handler, the durable deleted and recreated, the server killed.

Sampled as a load balancer and Prometheus would: `health_check` and `GET /health` agree in every
sample; unhealthy in every sample while the app cannot pull, healthy within one poll when it can;
`jsb_consumer_lag` is the server's `num_pending` within one scrape, or NaN (unknown) while the client
cannot know it, never a stale figure.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from reliability_support import wait_for

from jsb_infra.core.topology import consumer_configs
from jsb_infra.local.server import free_port
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event, health_check
from jsb_infra.runtime.metrics import BridgeMetrics

pytest.importorskip("prometheus_client")
POLL = 0.2


@dataclass
class Sample:
    at: float
    healthy: bool
    http: int
    lag: float | None
    pull_failing: float | None
    rules_1_to_4: bool  # the control: what the rule said before it looked at the pulls


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


class Sampler:
    def __init__(self, client: BridgeClient, metrics: BridgeMetrics, port: int):
        self.client, self.metrics, self.port = client, metrics, port
        self.samples: list[Sample] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            report = await health_check(self.client, timeout=1.0)
            http = await asyncio.to_thread(get_status, f"http://127.0.0.1:{self.port}/health")
            lag = self.metrics.registry.get_sample_value("jsb_consumer_lag", self.metrics.labels)
            before = (
                report.connection == "connected"
                and report.rtt_ms is not None
                and report.jetstream == "ok"
                and not report.permission_violations
                and (report.publish_failing_for_s or 0) <= 2.0
            )
            failing = report.pull_failing_for_s
            self.samples.append(Sample(time.monotonic(), report.healthy, http, lag, failing, before))
            await asyncio.sleep(POLL)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    async def healthy_after(self, since: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.samples:
                if s.at >= since and s.healthy:
                    return s.at - since
            await asyncio.sleep(0.05)
        raise AssertionError(f"not healthy again: {self.samples[-3:]}")


async def server_pending(pp) -> int:
    admin = await pp.admin()
    try:
        info = await JetStreamAdmin(admin).consumer_info(pp.pair.stream, "billing-workers")
        assert info is not None
        return int(info["num_pending"])
    finally:
        await admin.close()


async def test_health_and_lag_follow_the_server_through_stalls(provisioned_pair):
    pp = provisioned_pair
    orders = await BridgeClient(pp.bridges["orders"], Credentials(nkey_seed=pp.seeds["orders"])).connect()
    billing = BridgeClient(
        pp.bridges["billing"], Credentials(nkey_seed=pp.seeds["billing"]), reconnect_time_wait=0.2
    )
    await billing.connect()
    gate = asyncio.Event()
    gate.set()
    handled: list[str] = []

    async def handle(event: Event, delivery: Delivery) -> None:
        await gate.wait()
        handled.append(event.event_id)

    metrics = BridgeMetrics(billing)
    consumer = billing.consumer(handle, batch=5, fetch_timeout=0.5)
    metrics.watch(consumer=consumer)
    port = free_port()
    http = await metrics.serve(port)
    task = asyncio.create_task(consumer.run())
    sampler = Sampler(billing, metrics, port)

    def lag() -> float | None:
        return metrics.registry.get_sample_value("jsb_consumer_lag", metrics.labels)

    try:
        # flowing: the lag is the server's pending within one scrape
        for i in range(5):
            await orders.publish("order.created", "order", i, {"i": i})
        await wait_for(lambda: len(handled) == 5)
        await asyncio.sleep(0.7)  # one empty pull ends: nothing waits
        assert lag() == await server_pending(pp) == 0

        # a stalled handler: the server's pending grows; the gauge says unknown, never a stale figure
        gate.clear()
        for i in range(20):
            await orders.publish("order.created", "order", 100 + i, {"i": i})
        await asyncio.sleep(2 * 0.5 + 1.0 + 0.3)
        waiting = await server_pending(pp)
        assert waiting >= 10, waiting  # batch 5, window 10: the rest waits on the server
        assert math.isnan(lag()), lag()
        running = metrics.registry.get_sample_value("jsb_handler_running_seconds", metrics.labels)
        assert running is not None and running > 1.5
        in_flight = metrics.registry.get_sample_value("jsb_consumer_in_flight", metrics.labels)
        assert in_flight is not None and in_flight >= 5, in_flight
        gate.set()
        await wait_for(lambda: len(handled) == 25)
        await asyncio.sleep(0.7)
        assert lag() == await server_pending(pp) == 0
        assert metrics.registry.get_sample_value("jsb_handler_running_seconds", metrics.labels) == 0

        # the durable gone: the app cannot pull; unhealthy in every sample, /health agrees
        admin = await pp.admin()
        js = JetStreamAdmin(admin)
        await asyncio.sleep(0.5)
        deleted = time.monotonic()
        assert await js.delete_consumer(pp.pair.stream, "billing-workers")
        for i in range(7):
            await orders.publish("order.created", "order", 200 + i, {"i": i})
        await asyncio.sleep(2.0)
        # at least three samples while the durable is gone (a sample takes longer on a loaded machine)
        await wait_for(lambda: len(sampler.between(deleted + 0.3, time.monotonic())) >= 3)
        gone = sampler.between(deleted + 0.3, time.monotonic())
        assert gone and all(not s.healthy and s.http == 503 for s in gone), gone
        # control: by rules 1-4 alone (connection, probe, publishes, denials) every one was healthy
        assert all(s.rules_1_to_4 for s in gone), gone
        assert all(s.lag is None or math.isnan(s.lag) for s in gone), gone
        assert metrics.registry.get_sample_value("jsb_pull_failing_seconds", metrics.labels) > 1.0
        recreated = time.monotonic()
        config = next(c for c in consumer_configs(pp.pair).values() if c["durable_name"] == "billing-workers")
        await js.create_consumer(pp.pair.stream, config)
        await admin.close()
        back = await sampler.healthy_after(recreated)
        assert back <= 0.5 + 2 * POLL + 0.5, f"healthy {back:.2f}s after the durable came back"
        await wait_for(lambda: len(handled) == 32)
        await asyncio.sleep(0.7)
        assert lag() == await server_pending(pp) == 0

        # the app's own server down: unhealthy while it is down, healthy within a poll of pulling again
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        await asyncio.to_thread(pp.server.stop, True)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(pp.server.start)
        started = time.monotonic()
        down = sampler.between(killed + 0.1, started)
        assert down and all(not s.healthy and s.http in (503, 0) for s in down), down
        back = await sampler.healthy_after(started)
        await orders.publish("order.created", "order", 300, {"i": 300})
        await wait_for(lambda: len(handled) == 33)
    finally:
        sampler.task.cancel()
        gate.set()
        await consumer.stop()
        await task
        http.close()
        await billing.close()
        await orders.close()
    disagree = [s for s in sampler.samples if s.healthy != (s.http == 200)]
    assert disagree == [], disagree[:3]
    unhealthy = sum(not s.healthy for s in sampler.samples)
    print(f"stall: {unhealthy}/{len(sampler.samples)} samples unhealthy; healthy {back:.2f}s after restart")


async def test_lag_of_an_instrumented_handler_is_the_pulls_figure(provisioned_pair):
    """`metrics.instrument` and `watch` together: while the 2nd message of a batch of 5 is handled, the
    gauge is the server's num_pending (the pull noted the batch's newest delivery on draining it), not
    the handled message's own num_pending (3: the rest of its batch), which `instrument` records after
    the pull's figure. The control: a rule taking the newer of both figures read that 3."""
    pp = provisioned_pair
    orders = await BridgeClient(pp.bridges["orders"], Credentials(nkey_seed=pp.seeds["orders"])).connect()
    billing = await BridgeClient(pp.bridges["billing"], Credentials(nkey_seed=pp.seeds["billing"])).connect()
    for i in range(5):
        await orders.publish("order.created", "order", i, {"i": i})
    in_second, gate = asyncio.Event(), asyncio.Event()
    own_pending: list[int] = []

    async def handle(event: Event, delivery: Delivery) -> None:
        own_pending.append(delivery.msg.metadata.num_pending)
        if len(own_pending) == 2:
            in_second.set()
            await gate.wait()

    metrics = BridgeMetrics(billing)
    consumer = billing.consumer(metrics.instrument(handle), batch=5, fetch_timeout=0.5)
    metrics.watch(consumer=consumer)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(in_second.wait(), timeout=10)
        waiting = await server_pending(pp)
        lag = metrics.registry.get_sample_value("jsb_consumer_lag", metrics.labels)
        assert waiting == 0  # the whole batch was delivered
        assert lag == waiting
        assert own_pending == [4, 3]  # control: the handled delivery's own figure, recorded last
    finally:
        gate.set()
        await consumer.stop()
        await task
        await billing.close()
        await orders.close()
    assert consumer.stats.acked == 5


async def test_metrics_see_a_reconnect_the_busy_loop_has_not_noticed(provisioned_pair):
    """The server restarted while the handler holds a message: the loop notices the reconnect only when
    it next pulls, yet `/metrics` says at once what `health_check` says: the pulls are unproven (pull
    failing, lag unknown). The control: the pull's own record still reads answered, with a lag figure
    young enough to be reported."""
    pp = provisioned_pair
    orders = await BridgeClient(pp.bridges["orders"], Credentials(nkey_seed=pp.seeds["orders"])).connect()
    billing = BridgeClient(
        pp.bridges["billing"], Credentials(nkey_seed=pp.seeds["billing"]), reconnect_time_wait=0.2
    )
    await billing.connect()
    await orders.publish("order.created", "order", 1, {})
    in_handler, gate = asyncio.Event(), asyncio.Event()

    async def handle(event: Event, delivery: Delivery) -> None:
        in_handler.set()
        await gate.wait()

    fetch_timeout = 2.0
    metrics = BridgeMetrics(billing)
    consumer = billing.consumer(metrics.instrument(handle), batch=5, fetch_timeout=fetch_timeout)
    metrics.watch(consumer=consumer)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(in_handler.wait(), timeout=10)
        reconnects = billing.reconnects
        await asyncio.to_thread(pp.server.stop, True)
        await asyncio.to_thread(pp.server.start)
        await wait_for(lambda: billing.reconnects > reconnects and billing.nc.is_connected)
        report = await health_check(billing, timeout=1.0)
        failing = metrics.registry.get_sample_value("jsb_pull_failing_seconds", metrics.labels)
        lag = metrics.registry.get_sample_value("jsb_consumer_lag", metrics.labels)
        pull = consumer.stats.pull
        assert pull.failing_since is None and pull.server_pending_at is not None  # control
        assert time.monotonic() - pull.server_pending_at < 2 * fetch_timeout + 1.0  # control
        assert report.pull_failing_for_s is not None and not report.healthy, report
        assert failing is not None and failing > 0, failing
        assert lag is not None and math.isnan(lag), lag
    finally:
        gate.set()
        await consumer.stop()
        await task
        await billing.close()
        await orders.close()
