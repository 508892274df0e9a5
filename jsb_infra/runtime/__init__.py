"""The thin runtime client apps use: configured by the stack's `bridges` output, least privilege only."""

from jsb_infra.runtime.client import (
    BridgeClient,
    ConnectAuthorizationError,
    ConnectGaveUp,
    ConnectTLSError,
    ConnectUnreachableError,
    PublishError,
)
from jsb_infra.runtime.config import (
    BridgeConfigError,
    Credentials,
    TlsOptions,
    load_bridge,
    load_credentials,
    parse_bridge,
)
from jsb_infra.runtime.consumer import (
    Consumer,
    ConsumerLoop,
    ConsumerStats,
    Delivery,
    IdempotencyStore,
    InMemoryIdempotency,
    nak_delay_ns,
)
from jsb_infra.runtime.envelope import EnvelopeError, Event, decode, encode, new_event
from jsb_infra.runtime.health import HealthReport, health_check
from jsb_infra.runtime.pull import PullStats

__all__ = [
    "BridgeClient",
    "BridgeConfigError",
    "ConnectAuthorizationError",
    "ConnectGaveUp",
    "ConnectTLSError",
    "ConnectUnreachableError",
    "Consumer",
    "ConsumerLoop",
    "ConsumerStats",
    "Credentials",
    "Delivery",
    "EnvelopeError",
    "Event",
    "HealthReport",
    "IdempotencyStore",
    "InMemoryIdempotency",
    "PublishError",
    "PullStats",
    "TlsOptions",
    "decode",
    "encode",
    "health_check",
    "load_bridge",
    "load_credentials",
    "nak_delay_ns",
    "new_event",
    "parse_bridge",
]
