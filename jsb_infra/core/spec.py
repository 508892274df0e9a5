"""The typed app-pair spec: the one input everything else is derived from.

One YAML shape serves the CLI and the Pulumi stack config (`jsb:pairs`). Every rule the NATS server
would enforce later (or, worse, silently work around) is checked here, before anything touches a
server, with a message that names the field and the rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jsb_infra.core import names, strict_yaml
from jsb_infra.core.durations import DURATION_PATTERN, format_duration, parse_duration

MAX_NAME_LEN = 255  # nats-server JSMaxNameLen (bytes), for streams and consumers alike
MAX_FILE_NAME_LEN = 255  # bytes in one path component on common file systems (ext4, XFS, APFS, NTFS)
LONGEST_APP_FILE = names.durable_name("") + ".json"  # render writes consumers/<app>-workers.json
MAX_APP_LEN = min(MAX_NAME_LEN - len(names.durable_name("")), MAX_FILE_NAME_LEN - len(LONGEST_APP_FILE))
MAX_DESCRIPTION_LEN = 4096  # nats-server JSMaxDescriptionLen (bytes), server/jetstream.go
MAX_REPLICAS = 5  # nats-server StreamMaxReplicas
INT32_MAX = 2**31 - 1  # the server's int32 fields (max_msg_size)
# The server holds the other counts in 64 bits (2^63-1), but a pair travels through Pulumi (inputs,
# state) as a protobuf Struct, whose numbers are 64-bit floats: exact only up to 2^53-1. Durations
# travel as text (`1m30s`) and keep the server's own 2^63 ns bound (jsb_infra.core.durations).
MAX_EXACT_INT = 2**53 - 1
MIN_WINDOW_NS = 100_000_000  # nats-server refuses a duplicate window or max age under 100ms
NAME_CHARSET = "ASCII letters, digits, '-' and '_'"
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _duration(value: object) -> int:
    try:
        return parse_duration(value)
    except ValueError as err:
        raise rule(str(err)) from None


def _whole_number(value: object, info: ValidationInfo) -> object:
    """New input must be a number that is whole: no `true` or `"5"` taken as a number.

    An integral float (`5.0`) is its integer: Pulumi carries every number as a float.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if enforcing_rules(info) and (isinstance(value, bool) or not isinstance(value, int)):
        raise rule(f"must be a whole number written in decimal, got {value!r}")
    return value


def _bounded(limit: int, why: str) -> Any:
    def check(value: int, info: ValidationInfo) -> int:
        if enforcing_rules(info) and value > limit:
            raise rule(f"{info.field_name} must be at most {limit} ({why}), got {value}")
        return value

    return AfterValidator(check)


Count = Annotated[
    int,
    BeforeValidator(_whole_number),
    _bounded(MAX_EXACT_INT, "2^53-1: Pulumi carries numbers as 64-bit floats, exact only up to there"),
]
Int32 = Annotated[int, BeforeValidator(_whole_number), _bounded(INT32_MAX, "the server holds it in 32 bits")]


Duration = Annotated[
    int,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN, "examples": ["500ms", "30s", "1m30s", "7d"]},
                {"type": "number", "minimum": 0, "description": "seconds"},
            ]
        }
    ),
]
"""A duration held as integer nanoseconds, written as `500ms`, `30s`, `1m30s`, `2h`, `7d` or seconds."""

DEFAULT_MAX_MSG_SIZE = 16 * 1024
"""Default largest message a stream stores (headers and body), bytes."""
DEFAULT_MAX_MSGS_PER_SUBJECT = 10_000
"""Default messages one subject (one direction, one DLQ) may hold."""

STORED_BEFORE_BOUNDS: dict[str, Any] = {"discard": "old", "max_msgs_per_subject": -1}
"""What a stored pair that lacks the bound fields was deployed with (every earlier version's stream)."""

GEM_BACKOFF = ["1s", "5s", "15s", "30s", "60s"]
DEFAULT_ACK_WAIT_NS = 30 * 1_000_000_000


def rule(message: str) -> PydanticCustomError:
    """A validation error whose text is the rule itself (no `Value error,` prefix)."""
    return PydanticCustomError("jsb_rule", message)


STORED_CONTEXT = {"stored": True}
"""Validation context of a pair an earlier run stored: `Pair.model_validate(v, context=STORED_CONTEXT)`."""


def enforcing_rules(info: ValidationInfo) -> bool:
    """False when re-reading a stored pair (`STORED_CONTEXT`): then only types are parsed.

    The pair was valid under the rules of the version that stored it; a rule added since must not
    stop a diff, refresh or destroy of what already exists. New input is always validated in full.
    """
    return not (isinstance(info.context, dict) and info.context.get("stored"))


def _check_nats_name(kind: str, value: str, max_len: int) -> str:
    """Names become subjects, nats-server config strings and file names: one safe charset for all.

    nats-server refuses '.', '*', '>', '/' and '\\' in stream and consumer names; its config parser
    has no escape for non-ASCII text; file systems limit a path component to 255 bytes. Restricting
    names to ASCII letters, digits, '-' and '_' keeps every rendered document parseable as written.
    """
    if not value:
        raise rule(f"{kind} name must not be empty")
    bad = [ch for ch in value if not _NAME.fullmatch(ch)]
    if bad:
        shown = ", ".join(sorted({repr(ch) for ch in bad}))
        raise rule(
            f"{kind} name {value!r} contains {shown}; names may contain only {NAME_CHARSET} (NATS "
            "forbids '.', '*', '>', path separators, whitespace and control characters, and the server's "
            "config files have no escape for non-ASCII text)"
        )
    size = len(value.encode())
    if size > max_len:
        raise rule(f"{kind} name {value!r} is {size} bytes; the limit is {max_len}")
    return value


def _check_app_name(value: str) -> str:
    _check_nats_name("app", value, MAX_APP_LEN)
    if value == names.DLQ_TOKEN:
        raise rule(
            f"app name {value!r} is reserved: every app's DLQ subject is '<app>.sync.{names.DLQ_TOKEN}'"
        )
    if value.startswith("$") or value.startswith("_INBOX"):
        raise rule(
            f"app name {value!r} starts with a reserved prefix "
            "('$' belongs to the server, '_INBOX' to reply inboxes)"
        )
    return value


def _check_positive(field: str, ns: int) -> int:
    if ns <= 0:
        raise rule(f"{field} must be a positive duration, got {format_duration(ns)}")
    return ns


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _ConsumerFieldRules(StrictModel):
    """Single-field rules shared by the pair's settings and per-app overrides (None = not given)."""

    @field_validator("max_deliver", "max_ack_pending", check_fields=False)
    @classmethod
    def _at_least_one(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 1 and enforcing_rules(info):
            raise rule(f"{info.field_name} must be at least 1, got {v}")
        return v

    @field_validator("replicas", check_fields=False)
    @classmethod
    def _consumer_replicas_range(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not 1 <= v <= MAX_REPLICAS and enforcing_rules(info):
            raise rule(
                f"replicas must be between 1 and {MAX_REPLICAS} (leave it out to follow the stream), got {v}"
            )
        return v

    @field_validator("ack_wait", check_fields=False)
    @classmethod
    def _ack_wait_positive(cls, v: int | None, info: ValidationInfo) -> int | None:
        return v if v is None or not enforcing_rules(info) else _check_positive("ack_wait", v)

    @field_validator("backoff", check_fields=False)
    @classmethod
    def _backoff_positive(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is None or not enforcing_rules(info):
            return v
        for i, ns in enumerate(v):
            _check_positive(f"backoff[{i}]", ns)
        return v


class ConsumerSettings(_ConsumerFieldRules):
    """How a durable consumer redelivers. Defaults are the jetstream_bridge gem's.

    `ack_wait` is derived from `backoff[0]` when a backoff is set, because the server replaces ack_wait
    with backoff[0] anyway; an explicit ack_wait that differs is refused rather than silently changed.
    """

    max_deliver: Count = Field(5, description="Deliveries before a message goes to the DLQ (>= 1).")
    ack_wait: Duration | None = Field(
        None, description="Omit when a backoff is set: it is then backoff[0]. Without a backoff: default 30s."
    )
    backoff: list[Duration] = Field(
        default_factory=lambda: [parse_duration(d) for d in GEM_BACKOFF],
        description="Redelivery delays by delivery count; no longer than max_deliver.",
    )
    max_ack_pending: Count = Field(25000, description="Unacknowledged messages in flight (>= 1).")
    replicas: int | None = Field(
        None,
        description="Copies of the consumer's state (1 to 5, at most the stream's). Leave out to follow the "
        "stream (required on workqueue and interest streams, where the server demands equal replicas).",
    )
    memory_storage: bool = Field(
        False,
        description="Keep the consumer's state in memory (fewer disk writes; lost when all its replicas "
        "restart at once, then redelivered). Changing it replaces the consumer.",
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ConsumerSettings:
        if enforcing_rules(info):
            check_consumer_rules(self.max_deliver, self.ack_wait, self.backoff)
        return self


class ConsumerOverride(_ConsumerFieldRules):
    """A per-app change to the pair's consumer settings; fields left out keep the pair's value."""

    max_deliver: Count | None = None
    ack_wait: Duration | None = None
    backoff: list[Duration] | None = None
    max_ack_pending: Count | None = None
    replicas: int | None = None
    memory_storage: bool | None = None


def check_consumer_rules(max_deliver: int, ack_wait: int | None, backoff: list[int]) -> None:
    """Rules that involve more than one consumer field (the server's, plus the ack_wait trap)."""
    if len(backoff) > max_deliver:
        raise rule(
            f"backoff has {len(backoff)} entries but max_deliver is {max_deliver}; "
            "the server refuses a backoff longer than max_deliver"
        )
    if backoff and ack_wait is not None and ack_wait != backoff[0]:
        raise rule(
            f"ack_wait {format_duration(ack_wait)} contradicts backoff[0] {format_duration(backoff[0])}: "
            "with a backoff the server replaces ack_wait by backoff[0]; leave ack_wait out (it is derived) "
            "or start the backoff with it"
        )


class ResolvedConsumer(StrictModel):
    """The settings one app's durable really runs with: what the server holds, nothing derived left."""

    max_deliver: int
    ack_wait: int
    backoff: tuple[int, ...]
    max_ack_pending: int
    replicas: int | None = None  # None: follows the stream
    memory_storage: bool = False


class Placement(StrictModel):
    """Where the stream's replicas may live: a cluster by name and/or servers carrying all of `tags`
    (their `server_tags`). The server picks peers that match when the stream is created or scaled, and
    moves the stream when the placement changes."""

    cluster: str | None = Field(None, description="Name of the cluster (its `cluster { name }`).")
    tags: list[str] = Field(default_factory=list, description="Server tags every replica's server must have.")

    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and enforcing_rules(info) and (not v or any(ch.isspace() for ch in v)):
            raise rule(f"cluster must be a non-empty cluster name without whitespace, got {v!r}")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if not enforcing_rules(info):
            return v
        for i, tag in enumerate(v):
            if not tag.strip():
                raise rule(f"tags[{i}] must not be empty")
        lowered = [t.lower() for t in v]
        if len(set(lowered)) != len(lowered):
            raise rule(f"tags must be distinct (the server compares them ignoring case), got {v}")
        return v

    @model_validator(mode="after")
    def _not_empty(self, info: ValidationInfo) -> Placement:
        if enforcing_rules(info) and self.cluster is None and not self.tags:
            raise rule("placement needs a cluster or tags; leave placement out to let the server choose")
        return self


class StreamOptions(StrictModel):
    """Stream-level options. Storage, and retention to or from workqueue, cannot change in place: such a
    change replaces the stream (limits <-> interest is in place)."""

    replicas: Count = Field(1, description="1 to 5; more than 1 needs a JetStream cluster.")
    placement: Placement | None = Field(
        None, description="Cluster and/or server tags for the replicas; a change moves the stream."
    )
    storage: Literal["file", "memory"] = "file"
    retention: Literal["workqueue", "limits", "interest"] = "workqueue"
    duplicate_window: Duration = Field(2 * 60 * 1_000_000_000, description="Window of Nats-Msg-Id dedupe.")
    max_age: Duration = Field(
        0,
        description="Oldest message kept; 0 sets no age limit (the default: an age limit deletes unread "
        "messages, it does not stop a flood).",
    )
    discard: Literal["new", "old"] = Field(
        "new",
        description="When a limit is reached: `new` refuses the publish (nothing stored is lost), `old` "
        "deletes the oldest messages, whoever published them. `old` lets one app's flood evict its peer's "
        "unread messages and the dead letters: an explicit choice.",
    )
    max_msgs_per_subject: Count = Field(
        DEFAULT_MAX_MSGS_PER_SUBJECT,
        description="Messages each subject (each direction, each DLQ) may hold; with discard new a full "
        "subject refuses further publishes to it alone. -1 for unlimited.",
    )
    max_msg_size: Int32 = Field(
        DEFAULT_MAX_MSG_SIZE,
        description="Largest message (headers and body) the stream stores; -1 for unlimited; at most 2^31-1.",
    )
    max_bytes: Count | None = Field(
        None,
        description="The stream's size, reserved in the JetStream account. Leave out to derive it: every "
        "subject's max_msgs_per_subject messages of max_msg_size (plus the server's per-message overhead), "
        "so no subject can fill the stream. -1 for unlimited (the stream then reserves nothing).",
    )
    max_msgs: Count = Field(-1, description="Messages the whole stream may hold; -1 for unlimited.")
    description: str = Field("", description="At most 4096 bytes of UTF-8.")

    @model_validator(mode="before")
    @classmethod
    def _stored_before_bounds(cls, data: Any, info: ValidationInfo) -> Any:
        """A pair stored before the stream bounds existed was deployed unbounded: read it so."""
        if isinstance(data, dict) and not enforcing_rules(info):
            return {**STORED_BEFORE_BOUNDS, **data}
        return data

    @field_validator("replicas")
    @classmethod
    def _replicas_range(cls, v: int, info: ValidationInfo) -> int:
        if not 1 <= v <= MAX_REPLICAS and enforcing_rules(info):
            raise rule(f"replicas must be between 1 and {MAX_REPLICAS}, got {v}")
        return v

    @field_validator("duplicate_window")
    @classmethod
    def _window_positive(cls, v: int, info: ValidationInfo) -> int:
        if enforcing_rules(info) and v < MIN_WINDOW_NS:
            raise rule(
                f"duplicate_window must be at least 100ms (the server's minimum), got {format_duration(v)}"
            )
        return v

    @field_validator("max_age")
    @classmethod
    def _age_minimum(cls, v: int, info: ValidationInfo) -> int:
        if enforcing_rules(info) and 0 < v < MIN_WINDOW_NS:
            raise rule(
                f"max_age must be 0 (no age limit) or at least 100ms (the server's minimum), "
                f"got {format_duration(v)}"
            )
        return v

    @field_validator("description")
    @classmethod
    def _description(cls, v: str, info: ValidationInfo) -> str:
        if not enforcing_rules(info):
            return v
        try:
            size = len(v.encode())
        except UnicodeEncodeError:
            raise rule("description must be valid Unicode text (it holds a lone surrogate)") from None
        if size > MAX_DESCRIPTION_LEN:
            raise rule(f"description is {size} bytes of UTF-8; the server's limit is {MAX_DESCRIPTION_LEN}")
        return v

    @field_validator("max_bytes", "max_msgs", "max_msg_size", "max_msgs_per_subject")
    @classmethod
    def _limit(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and (v == 0 or v < -1) and enforcing_rules(info):
            raise rule(f"{info.field_name} must be -1 (unlimited) or positive, got {v}")
        return v

    @model_validator(mode="after")
    def _bytes_derivable(self, info: ValidationInfo) -> StreamOptions:
        if enforcing_rules(info) and self.max_bytes is None:
            unlimited = [
                name for name in ("max_msgs_per_subject", "max_msg_size") if getattr(self, name) == -1
            ]
            if unlimited:
                raise rule(
                    f"max_bytes: give it (a size in bytes, or -1 for an unbounded stream) when "
                    f"{' and '.join(unlimited)} is -1: the stream's size is derived from both"
                )
        return self

    @model_validator(mode="after")
    def _window_within_age(self, info: ValidationInfo) -> StreamOptions:
        if enforcing_rules(info) and self.max_age and self.duplicate_window > self.max_age:
            raise rule(
                f"duplicate_window {format_duration(self.duplicate_window)} is longer than max_age "
                f"{format_duration(self.max_age)}; the server refuses a dedupe window longer than max_age"
            )
        return self


class Pair(StrictModel):
    """Two apps that sync over one stream."""

    stream: str = Field(description="Stream name, unique across pairs.")
    id: str | None = Field(
        None,
        description="The pair's identity in the Pulumi state (default: the stream name). To rename a "
        "stream, set `id` to its current name and change `stream`: the rename is then a previewed, guarded "
        "replace of the stream instead of a second pair whose stream collides with the first.",
    )
    apps: tuple[str, str] = Field(description="Exactly two distinct app names.")
    dlq: bool = Field(True, description="Give each app a `<app>.sync.dlq` subject in the stream.")
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    consumer_overrides: dict[str, ConsumerOverride] = Field(
        default_factory=dict, description="Per-app changes to `consumer`, keyed by app name."
    )
    stream_options: StreamOptions = Field(default_factory=StreamOptions)
    adopt: bool = Field(
        False, description="Update an existing stream/consumer that differs, instead of refusing to adopt it."
    )
    allow_destroy_with_messages: bool = Field(
        False, description="Allow replacing or deleting the stream while it still holds messages."
    )
    protect: bool = Field(True, description="Set Pulumi's protect on the stream.")

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, v: str, info: ValidationInfo) -> str:
        return _check_nats_name("stream", v, MAX_NAME_LEN) if enforcing_rules(info) else v

    @field_validator("id")
    @classmethod
    def _id_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _check_nats_name("id", v, MAX_NAME_LEN) if v is not None and enforcing_rules(info) else v

    @property
    def resource_name(self) -> str:
        """The name of the pair's Pulumi component: stable across a stream rename when `id` is set."""
        return self.id or self.stream

    @field_validator("apps")
    @classmethod
    def _app_names(cls, v: tuple[str, str], info: ValidationInfo) -> tuple[str, str]:
        if not enforcing_rules(info):
            return v
        for app in v:
            _check_app_name(app)
        if v[0] == v[1]:
            raise rule(f"apps must be two distinct apps, got {v[0]!r} twice")
        return v

    @model_validator(mode="after")
    def _overrides(self, info: ValidationInfo) -> Pair:
        if not enforcing_rules(info):
            return self
        for app in self.consumer_overrides:
            if app not in self.apps:
                raise rule(
                    f"consumer_overrides names {app!r}, which is not one of this pair's apps "
                    f"{list(self.apps)}"
                )
            try:
                self.consumer_for(app)
            except PydanticCustomError as err:
                raise rule(f"consumer_overrides.{app}: {err.message()}") from None
        return self

    @model_validator(mode="after")
    def _consumer_replicas_fit_the_stream(self, info: ValidationInfo) -> Pair:
        if not enforcing_rules(info):
            return self
        opts = self.stream_options
        for app in self.apps:
            where = (
                f"consumer_overrides.{app}.replicas"
                if self._overridden(app, "replicas")
                else "consumer.replicas"
            )
            replicas = self.consumer_for(app).replicas
            if replicas is None:
                continue
            if replicas > opts.replicas:
                raise rule(
                    f"{where}: {replicas} exceeds the stream's replicas ({opts.replicas}); the server "
                    "refuses a consumer with more replicas than its stream"
                )
            if opts.retention != "limits" and replicas != opts.replicas:
                raise rule(
                    f"{where}: on a {opts.retention} stream the server requires the consumer's replicas to "
                    f"equal the stream's ({opts.replicas}); leave replicas out to follow the stream"
                )
        return self

    def _overridden(self, app: str, field_name: str) -> bool:
        override = self.consumer_overrides.get(app)
        return override is not None and getattr(override, field_name) is not None

    @model_validator(mode="after")
    def _derived_bytes_exact(self, info: ValidationInfo) -> Pair:
        from jsb_infra.core.capacity import stream_max_bytes  # capacity derives from this module

        if enforcing_rules(info) and self.stream_options.max_bytes is None:
            derived = stream_max_bytes(self)
            if derived > MAX_EXACT_INT:
                raise rule(
                    f"stream_options.max_bytes: derived from max_msgs_per_subject x max_msg_size over "
                    f"{len(self.subjects())} subjects it is {derived}, more than 2^53-1 (Pulumi carries "
                    "numbers as 64-bit floats); lower them or give max_bytes"
                )
        return self

    @model_validator(mode="after")
    def _dlq_needs_a_retaining_stream(self, info: ValidationInfo) -> Pair:
        if enforcing_rules(info) and self.dlq and self.stream_options.retention == "interest":
            raise rule(
                "stream_options.retention: interest keeps a message only while a consumer is interested "
                "in it, and no consumer reads the DLQ subjects, so every dead-lettered message would be "
                "dropped; use workqueue or limits, or set dlq: false"
            )
        return self

    # -- derived names -----------------------------------------------------------------------------
    def destination(self, app: str) -> str:
        """The other app of the pair."""
        a, b = self.apps
        if app not in self.apps:
            raise KeyError(f"{app!r} is not an app of stream {self.stream!r}")
        return b if app == a else a

    def subjects(self) -> list[str]:
        """Every subject the stream captures, in a fixed order."""
        a, b = self.apps
        subjects = [names.publish_subject(a, b), names.publish_subject(b, a)]
        if self.dlq:
            subjects += [names.dlq_subject(a), names.dlq_subject(b)]
        return subjects

    def consumer_for(self, app: str) -> ResolvedConsumer:
        """The pair's consumer settings with `app`'s override applied and ack_wait derived."""
        override = self.consumer_overrides.get(app)
        given = override.model_dump(exclude_none=True) if override else {}
        settings = self.consumer.model_copy(update=given)
        check_consumer_rules(settings.max_deliver, settings.ack_wait, settings.backoff)
        if settings.backoff:
            ack_wait = settings.backoff[0]
        else:
            ack_wait = settings.ack_wait if settings.ack_wait is not None else DEFAULT_ACK_WAIT_NS
        return ResolvedConsumer(
            max_deliver=settings.max_deliver,
            ack_wait=ack_wait,
            backoff=tuple(settings.backoff),
            max_ack_pending=settings.max_ack_pending,
            replicas=settings.replicas,
            memory_storage=settings.memory_storage,
        )


# -- app account limits ------------------------------------------------------------------------------
DEFAULT_APP_CONNECTIONS = 100
DEFAULT_APP_SUBSCRIPTIONS = 1000
DEFAULT_APP_PAYLOAD = 1024 * 1024  # nats-server's default max_payload (MAX_PAYLOAD_SIZE)
NO_APP_LIMIT = -1


def _app_limit(value: int | None, info: ValidationInfo) -> int | None:
    """-1 (no limit) or positive: 0 would refuse every connection, subscription or message of the app."""
    if value is not None and enforcing_rules(info) and (value == 0 or value < NO_APP_LIMIT):
        why = " (0 would refuse every connection, subscription or message of the app)" if value == 0 else ""
        raise rule(f"{info.field_name} must be -1 (no limit) or positive, got {value}{why}")
    return value


class _AppLimitFields(StrictModel):
    """The limits of one app's account and user; None in an override: the deployment's value."""

    @field_validator("connections", "subscriptions", "payload", "data", check_fields=False)
    @classmethod
    def _limit(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _app_limit(v, info)


class AppLimitOverride(_AppLimitFields):
    """One app's change to `app_limits`; fields left out keep the deployment's value."""

    connections: Int32 | None = None
    subscriptions: Int32 | None = None
    payload: Int32 | None = None
    data: Count | None = None


class ResolvedAppLimits(StrictModel):
    """What one app's account (and, in JWT mode, its user) is rendered with; -1 is no limit."""

    connections: int
    subscriptions: int
    payload: int
    data: int


class AppLimits(_AppLimitFields):
    """Limits of every app account, so one app cannot exhaust what the server gives all of them.

    Each app has one account and one user, so an account limit is the app's limit. The server counts
    `connections` per account (every instance of the app together), `subscriptions` and `payload` per
    connection; `data` is written into JWT-mode claims only (nats-server 2.15 does not enforce it)."""

    connections: Int32 = Field(
        DEFAULT_APP_CONNECTIONS,
        description="Connections of one app at once, all its instances together (-1: no limit). The "
        "runtime opens one connection per process.",
    )
    subscriptions: Int32 = Field(
        DEFAULT_APP_SUBSCRIPTIONS,
        description="Subscriptions per connection (-1: no limit). The runtime holds 2 per pair of the app "
        "on one connection, plus 1: a smaller limit is refused.",
    )
    payload: Int32 = Field(
        DEFAULT_APP_PAYLOAD,
        description="Largest message one connection may publish, headers included, in bytes (-1: the "
        "server's max_payload). Default 1 MiB, nats-server's default max_payload.",
    )
    data: Count = Field(
        NO_APP_LIMIT,
        description="JWT mode: the claims' data limit in bytes (-1: no limit); nats-server 2.15 does not "
        "enforce it.",
    )
    overrides: dict[str, AppLimitOverride] = Field(
        default_factory=dict, description="Per-app changes to these limits, keyed by app name."
    )

    def for_app(self, app: str) -> ResolvedAppLimits:
        """The deployment's limits with `app`'s override applied."""
        override = self.overrides.get(app)
        given = override.model_dump(exclude_none=True) if override else {}
        return ResolvedAppLimits(**{**self.model_dump(exclude={"overrides"}), **given})

    def check_apps(self, apps: Iterable[str], where: str = "app_limits") -> None:
        """Every override must name an app of the deployment (a typo would silently limit nobody), and
        leave the runtime its subscriptions (`check_runtime_subscriptions`). `apps`: every app of every
        pair, an app once per pair it is in; `where`: how the problem names this setting."""
        pairs_of = Counter(apps)
        known = ", ".join(sorted(pairs_of))
        for app in self.overrides:
            if app not in pairs_of:
                raise rule(f"{where}.overrides.{app}: {app!r} is not an app of any pair ({known})")
        self.check_runtime_subscriptions(pairs_of, where)

    def check_runtime_subscriptions(self, pairs_of: Mapping[str, int], where: str) -> None:
        """`subscriptions` must leave room for what the runtime client holds on one connection: the
        server refuses a subscription over the limit and nats-py then closes the whole client, so a
        consumer would stop at its first pull."""
        for app, pairs in sorted(pairs_of.items()):
            limit = self.for_app(app).subscriptions
            needed = runtime_subscriptions(pairs)
            if limit != NO_APP_LIMIT and limit < needed:
                override = self.overrides.get(app)
                field = (
                    f"{where}.overrides.{app}.subscriptions"
                    if override is not None and override.subscriptions is not None
                    else f"{where}.subscriptions"
                )
                raise rule(
                    f"{field}: {limit} is below what the runtime holds on one connection of {app} "
                    f"({RUNTIME_SUBSCRIPTIONS_PER_PAIR} per pair it is in, {pairs}, plus "
                    f"{RUNTIME_SUBSCRIPTIONS_SPARE}): at least {needed}, or -1"
                )


# The runtime client's subscriptions on one connection: per pair (a BridgeClient, sharing the app's
# connection through `sharing`) its PubAck inbox (runtime/pubacks.py) and its pull inbox
# (runtime/pull.py); per connection, nats-py's request inbox (the publish probe's replies).
RUNTIME_SUBSCRIPTIONS_PER_PAIR = 2
RUNTIME_SUBSCRIPTIONS_SPARE = 1


def runtime_subscriptions(pairs: int) -> int:
    """Subscriptions the runtime may hold on one connection of an app in `pairs` pairs."""
    return RUNTIME_SUBSCRIPTIONS_PER_PAIR * pairs + RUNTIME_SUBSCRIPTIONS_SPARE


# -- storage capacity ---------------------------------------------------------------------------------
_BYTE_SIZE = re.compile(r"\s*([0-9]+)\s*(B|KiB|MiB|GiB|TiB)?\s*")
_BYTE_UNITS = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _byte_size(value: object) -> object:
    """A size in bytes: a whole number, or text such as `512MiB`, `20GiB` (IEC units only: `MB` means
    10^6 to most tools but 2^20 to the nats-server config parser, so it is refused as ambiguous)."""
    if isinstance(value, str):
        match = _BYTE_SIZE.fullmatch(value)
        if not match:
            raise rule(
                "must be a size in bytes such as 1073741824, 512MiB or 20GiB (units B, KiB, MiB, GiB, "
                f"TiB), got {value!r}"
            )
        return int(match.group(1)) * _BYTE_UNITS[match.group(2)]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise rule(f"must be a size in bytes, got {value!r}")
    return value


ByteSize = Annotated[
    int,
    BeforeValidator(_byte_size),
    _bounded(MAX_EXACT_INT, "2^53-1: Pulumi carries numbers as 64-bit floats, exact only up to there"),
]


class Capacity(StrictModel):
    """The JetStream storage the operator gives this deployment's JetStream account, per storage type.

    It becomes the account's limit (config mode `jetstream { max_file, max_mem }`, JWT mode
    `disk_storage`, `mem_storage`), and the streams' reservations (max_bytes x replicas) must fit in it.
    A server refuses to enable JetStream for an account whose limit exceeds its own store
    (`max_file_store` / `max_memory_store`): declare at most the smallest server's."""

    file: ByteSize | None = Field(
        None, description="File storage in bytes (or `20GiB`); leave out: unlimited."
    )
    memory: ByteSize | None = Field(
        None, description="Memory storage in bytes (or `1GiB`); leave out: unlimited."
    )

    @field_validator("file", "memory")
    @classmethod
    def _positive(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 1 and enforcing_rules(info):
            raise rule(f"capacity.{info.field_name} must be at least 1 byte, got {v}")
        return v


class Config(StrictModel):
    """All pairs of a deployment; checks that pairs cannot collide on one server and that their
    storage reservations fit the declared capacity."""

    pairs: list[Pair] = Field(min_length=1)
    app_limits: AppLimits = Field(
        default_factory=AppLimits,
        description="Connection, subscription and payload limits of every app account, with per-app "
        "overrides.",
    )
    capacity: Capacity | None = Field(
        None,
        description="JetStream storage declared for the deployment; render refuses pairs that do not fit.",
    )

    @model_validator(mode="after")
    def _no_collisions(self) -> Config:
        check_pairs_disjoint(self.pairs)
        return self

    @model_validator(mode="after")
    def _app_limit_overrides(self) -> Config:
        self.app_limits.check_apps(app for pair in self.pairs for app in pair.apps)
        return self

    @model_validator(mode="after")
    def _fits_capacity(self) -> Config:
        from jsb_infra.core.capacity import capacity_problems  # capacity derives from this module

        problems = capacity_problems(self.pairs, self.capacity)
        if problems:
            raise rule("; ".join(problems))
        return self


def check_pairs_disjoint(pairs: Iterable[Pair]) -> None:
    """No two pairs share a stream name or a subject (the server would refuse the second stream)."""
    stream_owner: dict[str, int] = {}
    subject_owner: dict[str, tuple[int, str]] = {}
    id_owner: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        if pair.stream in stream_owner:
            raise rule(
                f"pairs[{i}].stream: {pair.stream!r} is already the stream of "
                f"pairs[{stream_owner[pair.stream]}]"
            )
        stream_owner[pair.stream] = i
        if pair.resource_name in id_owner:
            raise rule(
                f"pairs[{i}].id: {pair.resource_name!r} is already the identity (id, or stream name when no "
                f"id is set) of pairs[{id_owner[pair.resource_name]}]; identities must be unique"
            )
        id_owner[pair.resource_name] = i
        for subject in pair.subjects():
            if subject in subject_owner:
                j, other = subject_owner[subject]
                hint = (
                    " (an app in two pairs may have its DLQ on in only one)"
                    if subject.endswith(".dlq")
                    else ""
                )
                raise rule(
                    f"pairs[{i}] (stream {pair.stream!r}) overlaps pairs[{j}] (stream {other!r}) on subject "
                    f"{subject!r}{hint}; subjects of different streams must not overlap"
                )
            subject_owner[subject] = (i, pair.stream)


class ConfigError(ValueError):
    """A config that breaks a rule; `problems` lists `field: rule` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid jsb-infra config:\n" + "\n".join(f"  - {p}" for p in problems))


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_of(err: ValidationError, root: str = "") -> list[str]:
    """`field: rule` lines for every error in `err`, fields written as `pairs[0].consumer.backoff`."""
    lines = []
    for e in err.errors():
        where = _loc(([root] if root else []) + list(e["loc"]))
        lines.append(f"{where}: {e['msg']}" if where else e["msg"])
    return lines


def parse_config(data: Any) -> Config:
    """Validate a config mapping (`{"pairs": [...]}`); raises ConfigError naming every bad field."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems_of(err)) from None


def parse_pairs(pairs: Any) -> Config:
    """Validate the stack config value `jsb:pairs` (the bare list)."""
    return parse_config({"pairs": pairs})


def load_config(path: str | Path) -> Config:
    """Read and validate a config YAML file (strict YAML: see jsb_infra.core.strict_yaml)."""
    try:
        data = strict_yaml.load_file(path)
    except strict_yaml.YamlProblem as err:
        raise ConfigError([str(err)]) from None
    return parse_config(data)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (and of `jsb:pairs` under `properties.pairs`)."""
    return Config.model_json_schema()
