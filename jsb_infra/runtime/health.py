"""Health of an app's bridge connection: connectivity, round-trip time, config summary.

Like the gem's health_check with auto_provision=false, it asks the server nothing but a PING: no
JetStream management call (the app's permissions would deny it anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from jsb_infra.durations import format_duration
from jsb_infra.outputs import BridgeOutputs
from jsb_infra.runtime.client import BridgeClient

VIOLATION_WINDOW_S = 60.0  # a denial makes the app unhealthy for this long after it happened


@dataclass
class HealthReport:
    healthy: bool
    connection: str
    rtt_ms: float | None
    server: str | None
    config: dict[str, Any]
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
    client: BridgeClient, timeout: float = 2.0, violation_window: float = VIOLATION_WINDOW_S
) -> HealthReport:
    """PING the server; healthy when connected, the PONG came back, and nothing was denied within the
    last `violation_window` seconds (one old denial should not mark an app unhealthy forever)."""
    state = _connection_state(client)
    rtt_ms: float | None = None
    error: str | None = None
    if state == "connected":
        try:
            rtt_ms = round(await client.nc.rtt(timeout=timeout) * 1000, 3)  # type: ignore[arg-type]
        except Exception as err:
            error = f"no PONG within {timeout}s: {err!r}"
    server = None
    if client._nc is not None and client._nc.connected_url is not None:
        server = client._nc.connected_url.geturl()
    violations = client.recent_permission_violations(violation_window)
    return HealthReport(
        healthy=state == "connected" and rtt_ms is not None and not violations,
        connection=state,
        rtt_ms=rtt_ms,
        server=server,
        config=config_summary(client.bridge),
        reconnects=client.reconnects,
        permission_violations=violations,
        permission_violations_total=client.permission_violation_count,
        violation_window_s=violation_window,
        error=error,
    )
