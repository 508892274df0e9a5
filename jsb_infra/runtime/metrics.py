"""Prometheus metrics for one app's bridge (`prometheus_client`, the `metrics` extra).

`BridgeMetrics` observes what the runtime already counts instead of hooking into its loops:
- on each scrape it reads the client (connection state, reconnects, permission violations), the
  consumer's `ConsumerStats`, the inbox's and the relay's stats, and the outbox backlog (one COUNT
  query, at most every `backlog_interval` seconds, in a worker thread);
- `metrics.instrument(handler)` wraps the consumer handler to time it and to take the consumer lag
  from the delivered message's own metadata (`num_pending` in its ack subject: no management call);
  a watched consumer's pulls give it instead (the newest drained delivery, 0 after a pull that ended
  empty), and it reads NaN while disconnected or while the pulls go unanswered: never a stale figure;
- `metrics.track_publishes(client)` counts the client's publishes to its peer (wrapping this client
  object's `publish_raw` and `publish_batch`).
`await metrics.serve(port)` answers `GET /metrics` and `GET /health` (200 when connected, else 503,
with the health check as JSON) for an app that has no HTTP server of its own.

Names (all labelled `stream`, `app`): jsb_events_published_total, jsb_events_publish_failed_total,
jsb_events_handled_total{outcome=ack|nak|dlq|term|duplicate}, jsb_handler_failures_total,
jsb_handler_seconds (histogram), jsb_consumer_lag, jsb_consumer_in_flight, jsb_handler_running_seconds,
jsb_pull_failing_seconds, jsb_connection_up, jsb_connection_state{state},
jsb_reconnects_total, jsb_permission_violations_total, jsb_outbox_backlog,
jsb_outbox_published_total, jsb_outbox_failed_total, jsb_outbox_republished_total.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jsb_infra.runtime.consumer import Consumer, Delivery, Handler
from jsb_infra.runtime.envelope import Event
from jsb_infra.runtime.health import _connection_state, health_check
from jsb_infra.runtime.pull import LOST_GRACE_S

if TYPE_CHECKING:
    from nats.js.api import PubAck

    from jsb_infra.runtime.client import BridgeClient
    from jsb_infra.runtime.inbox import Inbox
    from jsb_infra.runtime.outbox import OutboxRelay

CONNECTION_STATES = ("connected", "reconnecting", "disconnected", "closed", "not connected")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BridgeMetrics(Collector):
    """Metrics of one app's bridge; attach what the app runs with `watch(...)`."""

    def __init__(
        self, client: BridgeClient, registry: CollectorRegistry | None = None, backlog_interval: float = 5.0
    ):
        self.client = client
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = {"stream": client.bridge.stream, "app": client.bridge.app}
        self.backlog_interval = backlog_interval
        self.consumer: Consumer | None = None
        self.inbox: Inbox | None = None
        self.relay: OutboxRelay | None = None
        self._backlog: int | None = None
        self._backlog_at = 0.0
        self._backlog_task: asyncio.Task[None] | None = None
        names = list(self.labels)
        self._published = Counter(
            "jsb_events_published", "Events the stream acknowledged (PubAck)", names, registry=self.registry
        )
        self._publish_failed = Counter(
            "jsb_events_publish_failed", "Events whose publish failed", names, registry=self.registry
        )
        self._handler_seconds = Histogram(
            "jsb_handler_seconds",
            "Time in the handler (with the inbox: its transaction and commit)",
            names,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._handler_failures = Counter(
            "jsb_handler_failures", "Handler calls that raised", names, registry=self.registry
        )
        # num_pending of the newest instrumented delivery, and when it came (monotonic)
        self._delivery_pending: tuple[int, float] | None = None
        self.registry.register(self)

    def watch(
        self, consumer: Consumer | None = None, inbox: Inbox | None = None, relay: OutboxRelay | None = None
    ) -> BridgeMetrics:
        """Report these objects' counters too (each optional)."""
        self.consumer = consumer or self.consumer
        self.inbox = inbox or self.inbox
        self.relay = relay or self.relay
        return self

    # -- hooks -------------------------------------------------------------------------------------
    def instrument(self, handler: Handler) -> Handler:
        """`handler`, timed, with the consumer lag read from each delivery's metadata."""
        histogram = self._handler_seconds.labels(**self.labels)
        failures = self._handler_failures.labels(**self.labels)

        async def timed(event: Event, delivery: Delivery) -> None:
            self._delivery_pending = (delivery.msg.metadata.num_pending, time.monotonic())
            started = time.perf_counter()
            try:
                await handler(event, delivery)
            except BaseException:
                failures.inc()
                raise
            finally:
                histogram.observe(time.perf_counter() - started)

        return timed

    def track_publishes(self, client: BridgeClient | None = None) -> None:
        """Count `client`'s (default: this one's) publishes to its peer's subject."""
        client = client or self.client
        subject = client.bridge.publish_subject
        published = self._published.labels(**self.labels)
        failed = self._publish_failed.labels(**self.labels)
        publish_raw, publish_batch = client.publish_raw, client.publish_batch

        async def counted_raw(to: str, body: bytes, headers: dict[str, str]) -> PubAck:
            try:
                ack = await publish_raw(to, body, headers)
            except Exception:
                if to == subject:
                    failed.inc()
                raise
            if to == subject:
                published.inc()
            return ack

        async def counted_batch(events: Any, max_in_flight: int = 512) -> list[PubAck | BaseException]:
            results = await publish_batch(events, max_in_flight=max_in_flight)
            errors = sum(1 for r in results if isinstance(r, BaseException))
            published.inc(len(results) - errors)
            failed.inc(errors)
            return results

        client.publish_raw = counted_raw  # type: ignore[method-assign,assignment]
        client.publish_batch = counted_batch  # type: ignore[method-assign]

    # -- collection (runs on each scrape) ------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at collect time; nothing to check for name clashes up front

    def _family(self, kind: type, name: str, doc: str, extra: list[str] | None = None) -> Any:
        return kind(name, doc, labels=[*self.labels, *(extra or [])])

    def collect(self) -> Iterator[Metric]:
        values = list(self.labels.values())
        client = self.client
        state = _connection_state(client)
        up = self._family(GaugeMetricFamily, "jsb_connection_up", "1 while connected to a server")
        up.add_metric(values, 1.0 if state == "connected" else 0.0)
        yield up
        states = self._family(GaugeMetricFamily, "jsb_connection_state", "1 for the current state", ["state"])
        for name in CONNECTION_STATES:
            states.add_metric([*values, name], 1.0 if state == name else 0.0)
        yield states
        reconnects = self._family(CounterMetricFamily, "jsb_reconnects", "Reconnects since start")
        reconnects.add_metric(values, client.reconnects)
        yield reconnects
        violations = self._family(
            CounterMetricFamily, "jsb_permission_violations", "Permission violations the server reported"
        )
        violations.add_metric(values, client.permission_violation_count)
        yield violations
        if self.consumer is not None or self.inbox is not None:
            yield self._handled()
        yield from self._consumer_gauges(values, state == "connected")
        if self.relay is not None:
            yield from self._relay_metrics(values)

    def consumer_lag(self, connected: bool) -> float | None:
        """What waits on the server for this app's durable, as the server last said it: the watched
        consumer's pull answers (the newest drained delivery's num_pending, 0 after a pull that ended
        empty), else the instrumented deliveries' num_pending. A pull drains a batch before its first
        message is handled, so a delivery's own figure (older than the batch's newest) never overrides
        the pull's. NaN (unknown) while disconnected or while the consumer's pulls go unanswered or it
        stopped asking (a stalled handler), so it is never a stale figure; None when nothing tells."""
        known: tuple[int, float] | None = self._delivery_pending
        pull = self.consumer.stats.pull if self.consumer is not None else None
        if pull is not None and pull.server_pending is not None and pull.server_pending_at is not None:
            known = (pull.server_pending, pull.server_pending_at)
        if known is None and pull is None:
            return None
        failing = self.consumer is not None and self.consumer.client.pull_failing_since is not None
        if not connected or failing or known is None:
            return math.nan
        pending, learnt_at = known
        if self.consumer is not None and time.monotonic() - learnt_at > self._lag_max_age(self.consumer):
            return math.nan  # nothing from the server for longer than an idle pull takes: unknown
        return float(pending)

    @staticmethod
    def _lag_max_age(consumer: Consumer) -> float:
        """An answered pull ends within `fetch_timeout`: a figure twice as old (plus the grace after
        which a request counts as lost) means the consumer stopped asking, e.g. a stalled handler."""
        return 2 * consumer.fetch_timeout + LOST_GRACE_S

    def _consumer_gauges(self, values: list[str], connected: bool) -> Iterator[Metric]:
        lag = self.consumer_lag(connected)
        if lag is not None:
            family = self._family(
                GaugeMetricFamily,
                "jsb_consumer_lag",
                "Messages of the durable not yet delivered, as the server last said (NaN: unknown now)",
            )
            family.add_metric(values, lag)
            yield family
        consumer = self.consumer
        if consumer is None:
            return
        failing_since = consumer.client.pull_failing_since
        for name, doc, value in (
            ("jsb_consumer_in_flight", "Messages this consumer holds unanswered", float(consumer.in_flight)),
            (
                "jsb_handler_running_seconds",
                "How long the message in hand has been processed (0: idle); growing means stalled",
                consumer.handling_for(),
            ),
            (
                "jsb_pull_failing_seconds",
                "How long the durable's pulls have met only refusals or silence (0: answered)",
                0.0 if failing_since is None else time.monotonic() - failing_since,
            ),
        ):
            family = self._family(GaugeMetricFamily, name, doc)
            family.add_metric(values, value)
            yield family

    def _handled(self) -> Metric:
        values = list(self.labels.values())
        family = self._family(
            CounterMetricFamily,
            "jsb_events_handled",
            "Delivered events by how they were answered",
            ["outcome"],
        )
        stats = self.consumer.stats if self.consumer is not None else None
        inbox_duplicates = self.inbox.stats.duplicates if self.inbox is not None else 0
        outcomes = {
            # the consumer acks an inbox duplicate like any handled event
            "ack": (stats.acked if stats else 0) - inbox_duplicates,
            "nak": stats.naked if stats else 0,
            "dlq": stats.dead_lettered if stats else 0,
            "term": stats.terminated if stats else 0,
            "duplicate": (stats.duplicates if stats else 0) + inbox_duplicates,
        }
        for outcome, count in outcomes.items():
            family.add_metric([*values, outcome], max(count, 0))
        return family

    def _relay_metrics(self, values: list[str]) -> Iterator[Metric]:
        assert self.relay is not None
        stats = self.relay.stats
        for name, doc, value in (
            ("jsb_outbox_published", "Outbox rows published and marked sent", stats.published),
            ("jsb_outbox_failed", "Outbox publishes that failed (the row stays pending)", stats.failed),
            (
                "jsb_outbox_republished",
                "Rows the stream already had (re-published after a crash)",
                stats.duplicates,
            ),
        ):
            family = self._family(CounterMetricFamily, name, doc)
            family.add_metric(values, value)
            yield family
        self._refresh_backlog()
        if self._backlog is not None:
            backlog = self._family(GaugeMetricFamily, "jsb_outbox_backlog", "Outbox rows not yet sent")
            backlog.add_metric(values, self._backlog)
            yield backlog

    def _refresh_backlog(self) -> None:
        """Start a backlog COUNT in a worker thread when the last is older than `backlog_interval`;
        the scrape reports the latest finished one (a scrape never waits for the database)."""
        if time.monotonic() - self._backlog_at < self.backlog_interval or self.relay is None:
            return
        if self._backlog_task is not None and not self._backlog_task.done():
            return
        relay = self.relay
        self._backlog_at = time.monotonic()

        async def count() -> None:
            self._backlog = await asyncio.to_thread(relay.backlog)

        try:
            self._backlog_task = asyncio.get_running_loop().create_task(count())
        except RuntimeError:  # scraped from a thread without a loop (tests, start_http_server)
            self._backlog = relay.backlog()

    async def refresh(self) -> None:
        """Update the outbox backlog now (for a first scrape that should already show it)."""
        if self.relay is not None:
            self._backlog = await asyncio.to_thread(self.relay.backlog)
            self._backlog_at = time.monotonic()

    # -- HTTP ----------------------------------------------------------------------------------------
    async def serve(self, port: int, host: str = "127.0.0.1") -> asyncio.Server:
        """Answer `GET /metrics` and `GET /health` on `host:port` until the returned server is closed."""
        return await asyncio.start_server(self._answer, host, port)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)).strip():
                pass  # headers: not needed
            parts = request.decode(errors="replace").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] != "GET":
                status, content_type, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                if self._backlog is None:
                    await self.refresh()
                status, content_type = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = generate_latest(self.registry)
            elif path == "/health":
                report = await health_check(self.client)
                status = "200 OK" if report.healthy else "503 Service Unavailable"
                content_type, body = "application/json", json.dumps(report.to_dict()).encode() + b"\n"
            else:
                status, content_type, body = "404 Not Found", "text/plain", b"/metrics or /health\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
