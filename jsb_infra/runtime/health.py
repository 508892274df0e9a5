"""Health of an app's bridge: connectivity, JetStream availability for its publishes, config summary.

No JetStream management call (the app's permissions would deny it anyway): a PING, and the
stored-nothing publish probe (`jsb_infra.runtime.probe`) to the app's own publish subject, whose
"wrong last sequence" answer proves that the stream has a leader taking this app's publishes.

The rule (`health_check`): healthy when all of
1. the connection is up and a PONG came back within `timeout`;
2. the stream's leader answered the probe within `timeout` (`jetstream == "ok"`);
3. no publish has been retrying without a PubAck for longer than `stall_after` seconds (a leader that
   still answers but cannot commit, such as one that lost its quorum and has not yet stepped down);
4. no permission violation within the last `violation_window` seconds;
5. every consumer loop running on this client has its pulls answered: one whose requests met a
   refusal (no durable or no consumer leader: 503, 409) or silence (requests that ended unanswered,
   missed heartbeats, a reconnect) since the server last answered it (a message, a heartbeat, an
   expiry) makes the app unhealthy at once, and the next answer makes it healthy again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jsb_infra.core.durations import format_duration
from jsb_infra.core.outputs import BridgeOutputs
from jsb_infra.runtime.client import BridgeClient
from jsb_infra.runtime.probe import probe_publish

VIOLATION_WINDOW_S = 60.0  # a denial makes the app unhealthy for this long after it happened
STALL_AFTER_S = 2.0  # publishes retrying without a PubAck this long make the app unhealthy


@dataclass
class HealthReport:
    healthy: bool
    connection: str
    rtt_ms: float | None
    server: str | None
    config: dict[str, Any]
    jetstream: str = "not checked"  # "ok", or why the stream's leader did not answer the probe
    last_puback_age_s: float | None = None  # since this client's last PubAck (None: none yet)
    publish_failing_for_s: float | None = None  # publishes retrying without a PubAck this long
    pull_failing_for_s: float | None = None  # a running consumer's pulls unanswered this long
    reconnects: int = 0
    permission_violations: list[str] = field(default_factory=list)  # those within the window
    permission_violations_total: int = 0  # since the client was created
    violation_window_s: float = VIOLATION_WINDOW_S
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_summary(bridge: BridgeOutputs) -> dict[str, Any]:
    """What this app is wired to, with durations readable; nothing secret."""
    c = bridge.consumer
    return {
        "stream": bridge.stream,
        "app": bridge.app,
        "destination": bridge.destination,
        "publish_subject": bridge.publish_subject,
        "consume_subject": bridge.consume_subject,
        "dlq_subject": bridge.dlq_subject,
        "durable": bridge.durable,
        "inbox_prefix": bridge.inbox_prefix,
        "max_deliver": c.max_deliver,
        "ack_wait": format_duration(c.ack_wait_ns),
        "backoff": [format_duration(ns) for ns in c.backoff_ns],
        "max_ack_pending": c.max_ack_pending,
        "auto_provision": False,
        "servers": list(bridge.servers),
    }


def _connection_state(client: BridgeClient) -> str:
    nc = client._nc
    if nc is None:
        return "not connected"
    if nc.is_closed:
        return "closed"
    if nc.is_reconnecting:
        return "reconnecting"
    if nc.is_connected:
        return "connected"
    return "disconnected"


async def health_check(
    client: BridgeClient,
    timeout: float = 2.0,
    violation_window: float = VIOLATION_WINDOW_S,
    stall_after: float = STALL_AFTER_S,
) -> HealthReport:
    """PING and probe the stream; healthy by the rule in this module's docstring. One old denial does
    not mark an app unhealthy forever: only those within `violation_window` seconds count."""
    state = _connection_state(client)
    rtt_ms: float | None = None
    error: str | None = None
    jetstream = "not checked"
    if state == "connected":
        try:
            rtt_ms = round(await client.nc.rtt(timeout=timeout) * 1000, 3)  # type: ignore[arg-type]
        except Exception as err:
            error = f"no PONG within {timeout}s: {err!r}"
        subject = client.bridge.publish_subject
        try:
            probe = await probe_publish(client.nc, subject, timeout, body=b"jsb-infra health probe")
            ok = probe.leader_answered(client.bridge.stream)
            jetstream = "ok" if ok else probe.describe(subject, timeout)
        except Exception as err:  # the connection closed under the probe
            jetstream = f"probe failed: {err!r}"
    server = None
    if client._nc is not None and client._nc.connected_url is not None:
        server = client._nc.connected_url.geturl()
    violations = client.recent_permission_violations(violation_window)
    now = time.monotonic()
    failing_for = None if client.publish_failing_since is None else now - client.publish_failing_since
    puback_age = None if client.last_puback_at is None else now - client.last_puback_at
    stalled = failing_for is not None and failing_for > stall_after
    pull_since = client.pull_failing_since
    pull_failing_for = None if pull_since is None else now - pull_since
    return HealthReport(
        healthy=state == "connected"
        and rtt_ms is not None
        and jetstream == "ok"
        and not stalled
        and pull_failing_for is None
        and not violations,
        connection=state,
        rtt_ms=rtt_ms,
        server=server,
        config=config_summary(client.bridge),
        jetstream=jetstream,
        last_puback_age_s=None if puback_age is None else round(puback_age, 3),
        publish_failing_for_s=None if failing_for is None else round(failing_for, 3),
        pull_failing_for_s=None if pull_failing_for is None else round(pull_failing_for, 3),
        reconnects=client.reconnects,
        permission_violations=violations,
        permission_violations_total=client.permission_violation_count,
        violation_window_s=violation_window,
        error=error,
    )
