"""Spec -> JetStream API configs: the stream and the two durable consumers, as the server holds them.

The dicts are exactly what `nats stream add --config` / `nats consumer add --config` accept and what
`$JS.API.STREAM.INFO` / `CONSUMER.INFO` return under `config` (durations in integer nanoseconds), so
the providers can compare desired and live field by field. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsb_infra.core import names
from jsb_infra.core.capacity import stream_max_bytes
from jsb_infra.core.spec import Pair

StreamConfig = dict[str, Any]
ConsumerConfig = dict[str, Any]


def stream_config(pair: Pair) -> StreamConfig:
    """The stream's config. An update must send all of it: the server treats it as a replacement."""
    opts = pair.stream_options
    config: StreamConfig = {
        "name": pair.stream,
        "subjects": pair.subjects(),
        "retention": opts.retention,
        "storage": opts.storage,
        "num_replicas": opts.replicas,
        "duplicate_window": opts.duplicate_window,
        "max_age": opts.max_age,
        "max_bytes": stream_max_bytes(pair),
        "max_msgs": opts.max_msgs,
        "max_msg_size": opts.max_msg_size,
        "max_msgs_per_subject": opts.max_msgs_per_subject,
        "discard": opts.discard,
    }
    if opts.discard == "new" and opts.max_msgs_per_subject > 0:
        # a full subject refuses publishes to it alone (the server allows it only with discard new);
        # left out otherwise: the server omits it when false
        config["discard_new_per_subject"] = True
    if opts.description:
        config["description"] = opts.description
    if opts.placement is not None:
        config["placement"] = placement_config(pair)
    return config


def placement_config(pair: Pair) -> dict[str, Any] | None:
    """The stream's `placement` as the server holds it (it omits empty keys), or None when unset."""
    placement = pair.stream_options.placement
    if placement is None:
        return None
    out: dict[str, Any] = {}
    if placement.cluster is not None:
        out["cluster"] = placement.cluster
    if placement.tags:
        out["tags"] = list(placement.tags)
    return out


def consumer_config(pair: Pair, app: str) -> ConsumerConfig:
    """`app`'s durable pull consumer, reading what the other app publishes to it.

    `num_replicas` is left out (the server's 0: follow the stream, so scaling the stream carries the
    consumer along) unless the spec sets replicas on a limits stream. On workqueue and interest streams
    the spec only allows the stream's own count, which is what 0 means there.
    """
    settings = pair.consumer_for(app)
    durable = names.durable_name(app)
    config: ConsumerConfig = {
        "durable_name": durable,
        "name": durable,
        "filter_subject": names.publish_subject(pair.destination(app), app),
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "replay_policy": "instant",
        "max_deliver": settings.max_deliver,
        "ack_wait": settings.ack_wait,
        "max_ack_pending": settings.max_ack_pending,
    }
    if settings.backoff:
        config["backoff"] = list(settings.backoff)
    if settings.replicas is not None and pair.stream_options.retention == "limits":
        config["num_replicas"] = settings.replicas
    if settings.memory_storage:
        config["mem_storage"] = True
    return config


def consumer_configs(pair: Pair) -> dict[str, ConsumerConfig]:
    """Both consumers, keyed by durable name."""
    return {names.durable_name(app): consumer_config(pair, app) for app in pair.apps}


def dlq_keeper_config(pair: Pair) -> ConsumerConfig | None:
    """The durable that keeps the pair's DLQ messages on the stream (`names.DLQ_KEEPER`), or None
    without a DLQ. Pull, never pulled: nothing is delivered, so nothing is ever acked away."""
    if not pair.dlq:
        return None
    return {
        "durable_name": names.DLQ_KEEPER,
        "name": names.DLQ_KEEPER,
        "description": "jsb-infra: holds the DLQ messages (no app reads or acks through it)",
        "filter_subjects": [names.dlq_subject(app) for app in pair.apps],
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "replay_policy": "instant",
    }


def stream_incarnation_key(config: Mapping[str, Any]) -> str:
    """What identifies one incarnation of a stream, from its rendered config: it changes exactly when
    a change of the config replaces the stream (name, storage, retention to or from workqueue).

    Consumers compare it to know at preview, when the stream's `created` is still unknown, whether
    the stream they live on is about to be recreated (and they with it)."""
    retention = "workqueue" if config.get("retention") == "workqueue" else "limits|interest"
    return f"{config.get('name')}/{config.get('storage', 'file')}/{retention}"


def pair_incarnation_key(pair: Pair) -> str:
    """`stream_incarnation_key` of the pair's rendered stream config."""
    return stream_incarnation_key(dict(stream_config(pair)))
