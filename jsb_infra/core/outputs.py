"""The contract between deploy and apps: what the stack exports, and what the runtime client reads.

`bridges` = {stream: {app: BridgeOutputs}} (not secret); `credentials` = {app: AppCredentials} (secret:
one identity per app, across all its pairs). Both sides import these models, so a field renamed here
breaks the tests of both at once.
Bump SCHEMA_VERSION on any change an older client could misread.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from jsb_infra.core import names
from jsb_infra.core.spec import Pair

SCHEMA_VERSION: Final = 1


class ConsumerOutputs(BaseModel):
    """The durable's redelivery settings exactly as provisioned (durations in nanoseconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_deliver: int
    ack_wait_ns: int
    backoff_ns: list[int]
    max_ack_pending: int


class BridgeOutputs(BaseModel):
    """Everything one app needs to run its side of a pair, and nothing secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    auto_provision: Literal[False] = Field(
        False, description="Always false: apps never call JetStream management APIs; deploy provisions."
    )
    servers: list[str] = Field(min_length=1)
    stream: str
    app: str
    destination: str
    publish_subject: str
    consume_subject: str
    dlq_subject: str | None
    durable: str
    inbox_prefix: str
    consumer: ConsumerOutputs


class AppCredentials(BaseModel):
    """One app's runtime identity: an NKey user in its own account, one per app across all its pairs.
    The seed is secret. `credentials` = {app: AppCredentials}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    public_key: str
    seed: str
    account: str | None = None
    creds: str | None = Field(
        None, description="JWT mode: the user's .creds document (user JWT and seed); connect with it."
    )


def bridge_outputs(pair: Pair, app: str, servers: list[str]) -> BridgeOutputs:
    """`app`'s bridge config, derived from the same spec the stream and consumer come from."""
    destination = pair.destination(app)
    settings = pair.consumer_for(app)
    return BridgeOutputs(
        servers=list(servers),
        stream=pair.stream,
        app=app,
        destination=destination,
        publish_subject=names.publish_subject(app, destination),
        consume_subject=names.publish_subject(destination, app),
        dlq_subject=names.dlq_subject(app) if pair.dlq else None,
        durable=names.durable_name(app),
        inbox_prefix=names.inbox_prefix(app),
        consumer=ConsumerOutputs(
            max_deliver=settings.max_deliver,
            ack_wait_ns=settings.ack_wait,
            backoff_ns=list(settings.backoff),
            max_ack_pending=settings.max_ack_pending,
        ),
    )


def bridge_outputs_from_live(
    pair: Pair, app: str, servers: list[str], consumer_config: dict[str, Any]
) -> BridgeOutputs:
    """`app`'s bridge config with the consumer settings the server reports (a Consumer's live `config`).

    Names come from the spec; redelivery settings come from the server, so the bridge says what the
    durable really runs with. Numbers may arrive as floats (Pulumi outputs); they are integral.
    """
    base = bridge_outputs(pair, app, servers)
    live = ConsumerOutputs(
        max_deliver=int(consumer_config["max_deliver"]),
        ack_wait_ns=int(consumer_config["ack_wait"]),
        backoff_ns=[int(ns) for ns in consumer_config.get("backoff") or []],
        max_ack_pending=int(consumer_config["max_ack_pending"]),
    )
    return base.model_copy(update={"consumer": live})
