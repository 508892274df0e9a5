"""The event envelope two apps exchange: the gem's fields, encoded as compact JSON.

`event_id` doubles as the `Nats-Msg-Id` header, so the stream's duplicate window drops a retried
publish. Decoding checks every field and names the one that is wrong: a message that fails here is
dead-lettered at once, because no amount of redelivery will make it readable.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ENVELOPE_SCHEMA_VERSION = 1
MSG_ID_HEADER = "Nats-Msg-Id"  # exact case: JetStream matches it byte for byte (the gem sent it lowercase)

_STRING_FIELDS = ("event_id", "event_type", "producer", "resource_type", "resource_id", "occurred_at")


class EnvelopeError(ValueError):
    """A message body that is not a valid envelope; the text names the field."""


@dataclass(slots=True)
class Event:
    """One event as it travels between the apps (treat as immutable; not frozen, which costs per field)."""

    event_type: str
    producer: str
    resource_type: str
    resource_id: str
    payload: Any = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=lambda: utc_now_iso())
    trace_id: str | None = None
    schema_version: int = ENVELOPE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "schema_version": self.schema_version,
            "event_type": self.event_type,
            "producer": self.producer,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "occurred_at": self.occurred_at,
            "trace_id": self.trace_id,
            "payload": self.payload,
        }


_second_cache: list[Any] = [-1, ""]


def utc_now_iso() -> str:
    """Now as ISO 8601 in UTC with a `Z`, microsecond precision.

    The date-time part is formatted once per second (strftime was the costliest step of a pipelined
    publish); only the microseconds are filled in per call.
    """
    now_us = time.time_ns() // 1000
    second, micro = divmod(now_us, 1_000_000)
    if second != _second_cache[0]:
        _second_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0] = second
    return f"{_second_cache[1]}.{micro:06d}Z"


def new_event(
    event_type: str,
    resource_type: str,
    resource_id: str | int,
    payload: Any,
    *,
    producer: str,
    trace_id: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | str | None = None,
) -> Event:
    """A fresh envelope; `event_id` defaults to a uuid4, `occurred_at` to now (UTC)."""
    if isinstance(occurred_at, datetime):
        if occurred_at.tzinfo is None:
            raise EnvelopeError("occurred_at: must be timezone-aware (UTC), got a naive datetime")
        occurred_at = occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for name, value in (("event_type", event_type), ("resource_type", resource_type)):
        if not isinstance(value, str) or not value:
            raise EnvelopeError(f"{name}: must be a non-empty string, got {value!r}")
    return Event(
        event_type=event_type,
        producer=producer,
        resource_type=resource_type,
        resource_id=str(resource_id),
        payload=payload,
        event_id=event_id or str(uuid.uuid4()),
        occurred_at=occurred_at or utc_now_iso(),
        trace_id=trace_id,
    )


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(event: Event) -> bytes:
    """Compact UTF-8 JSON; raises EnvelopeError when the payload is not JSON-serialisable."""
    try:
        return _encoder.encode(event.to_dict()).encode()
    except (TypeError, ValueError) as err:
        raise EnvelopeError(f"payload: not JSON-serialisable: {err}") from None


def decode(data: bytes) -> Event:
    """Parse and check an envelope; raises EnvelopeError naming the first bad field."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise EnvelopeError(f"body: not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError(f"body: must be a JSON object, got {type(doc).__name__}")
    for name in _STRING_FIELDS:
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise EnvelopeError(f"{name}: required non-empty string, got {value!r}")
    version = doc.get("schema_version")
    if version != ENVELOPE_SCHEMA_VERSION or isinstance(version, bool):
        raise EnvelopeError(
            f"schema_version: this client reads envelope version {ENVELOPE_SCHEMA_VERSION}, got {version!r}"
        )
    trace_id = doc.get("trace_id")
    if trace_id is not None and not isinstance(trace_id, str):
        raise EnvelopeError(f"trace_id: must be a string or null, got {trace_id!r}")
    if "payload" not in doc:
        raise EnvelopeError("payload: required (may be null)")
    return Event(
        event_id=doc["event_id"],
        schema_version=version,
        event_type=doc["event_type"],
        producer=doc["producer"],
        resource_type=doc["resource_type"],
        resource_id=doc["resource_id"],
        occurred_at=doc["occurred_at"],
        trace_id=trace_id,
        payload=doc["payload"],
    )
