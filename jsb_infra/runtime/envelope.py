"""The event envelope two apps exchange: the gem's fields, encoded as compact JSON.

`event_id`, keyed by the app's secret (`jsb_infra.runtime.msg_ids`), is the `Nats-Msg-Id` header, so
the stream's duplicate window drops a retried publish. Decoding checks every field and names the one
that is wrong: a message that fails here is dead-lettered at once, because no amount of redelivery
will make it readable.
"""

from __future__ import annotations

import json
import os
import time
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
    event_id: str = field(default_factory=lambda: uuid4_str())
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
    if type(event_type) is not str or not event_type or type(resource_type) is not str or not resource_type:
        for name, value in (("event_type", event_type), ("resource_type", resource_type)):
            if not isinstance(value, str) or not value:
                raise EnvelopeError(f"{name}: must be a non-empty string, got {value!r}")
    return Event(
        event_type,
        producer,
        resource_type,
        resource_id if type(resource_id) is str else str(resource_id),
        payload,
        event_id or uuid4_str(),
        occurred_at or utc_now_iso(),
        trace_id,
    )


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def uuid4_str() -> str:
    """`str(uuid.uuid4())` without building a UUID object: 16 bytes from os.urandom, version 4, RFC 4122
    variant."""
    n = (int.from_bytes(os.urandom(16)) & _UUID4_CLEAR) | _UUID4_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_quote = json.encoder.encode_basestring  # the C quoting `_encoder` uses for every string (ensure_ascii=False)


def encode(event: Event) -> bytes:
    """Compact UTF-8 JSON (the fields in `to_dict` order); raises EnvelopeError when the payload is not
    JSON-serialisable.

    The same bytes as `_encoder.encode(event.to_dict())`, assembled directly: only the payload goes
    through the general encoder, the envelope's strings through its quoting function.
    """
    try:
        payload = _encoder.encode(event.payload)
        trace_id = "null" if event.trace_id is None else _quote(event.trace_id)
        return (
            f'{{"event_id":{_quote(event.event_id)},"schema_version":{event.schema_version:d},'
            f'"event_type":{_quote(event.event_type)},"producer":{_quote(event.producer)},'
            f'"resource_type":{_quote(event.resource_type)},"resource_id":{_quote(event.resource_id)},'
            f'"occurred_at":{_quote(event.occurred_at)},"trace_id":{trace_id},"payload":{payload}}}'
        ).encode()
    except (TypeError, ValueError) as err:
        raise EnvelopeError(f"payload: not JSON-serialisable: {err}") from None


def decode(data: bytes) -> Event:
    """Parse and check an envelope; raises EnvelopeError naming the first bad field."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise EnvelopeError(f"body: not JSON: {err}") from None
    try:  # the common case in one expression; anything off is looked at field by field below
        event_id = doc["event_id"]
        event_type = doc["event_type"]
        producer = doc["producer"]
        resource_type = doc["resource_type"]
        resource_id = doc["resource_id"]
        occurred_at = doc["occurred_at"]
        version = doc["schema_version"]
        trace_id = doc.get("trace_id")
        payload = doc["payload"]
        valid = (
            type(event_id) is str
            and type(event_type) is str
            and type(producer) is str
            and type(resource_type) is str
            and type(resource_id) is str
            and type(occurred_at) is str
            and event_id != ""
            and event_type != ""
            and producer != ""
            and resource_type != ""
            and resource_id != ""
            and occurred_at != ""
            and type(version) is int
            and version == ENVELOPE_SCHEMA_VERSION
            and (trace_id is None or type(trace_id) is str)
        )
    except (KeyError, TypeError):
        valid = False
    if not valid:
        _reject(doc)
    return Event(
        event_type, producer, resource_type, resource_id, payload, event_id, occurred_at, trace_id, version
    )


def _reject(doc: Any) -> None:
    """Raise the EnvelopeError naming the first field of `doc` that is wrong."""
    if not isinstance(doc, dict):
        raise EnvelopeError(f"body: must be a JSON object, got {type(doc).__name__}")
    for name in _STRING_FIELDS:
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise EnvelopeError(f"{name}: required non-empty string, got {value!r}")
    version = doc.get("schema_version")
    if type(version) is not int or version != ENVELOPE_SCHEMA_VERSION:
        raise EnvelopeError(
            f"schema_version: this client reads envelope version {ENVELOPE_SCHEMA_VERSION}, got {version!r}"
        )
    trace_id = doc.get("trace_id")
    if trace_id is not None and not isinstance(trace_id, str):
        raise EnvelopeError(f"trace_id: must be a string or null, got {trace_id!r}")
    if "payload" not in doc:
        raise EnvelopeError("payload: required (may be null)")
    # Not reached while the checks above match `decode`'s.
    raise EnvelopeError(f"body: not an envelope of version {ENVELOPE_SCHEMA_VERSION}")
