"""The rendered stream and consumer JSON, applied by plain nats-py admin calls (a path independent of
our nats_admin), produce exactly those configs on a real server: every rendered key, durations in ns."""

from __future__ import annotations

import copy
import json
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, StreamConfig

from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.local.server import env_nats_url

S = 1_000_000_000

GEM_DEFAULTS = {"stream": "orders-billing-sync", "apps": ["orders", "billing"]}
NON_DEFAULT = {
    "stream": "ledger-crm",
    "apps": ["ledger", "crm"],
    "dlq": False,
    "consumer": {"max_deliver": 3, "backoff": [], "ack_wait": "2s", "max_ack_pending": 100},
    "consumer_overrides": {
        "crm": {"backoff": ["500ms", "2s"], "ack_wait": "500ms", "max_deliver": 4, "max_ack_pending": 7}
    },
    "stream_options": {
        "storage": "memory",
        "retention": "limits",
        "max_age": "1h",
        "duplicate_window": "30s",
        "max_bytes": 10_000_000,
        "max_msgs": 5000,
        "max_msg_size": 65536,
        "description": "non-default pair",
    },
}
INTEREST_NO_BACKOFF = {
    "stream": "a-b",
    "apps": ["a", "b"],
    "dlq": False,
    "consumer": {"backoff": [], "ack_wait": "1m30s", "max_deliver": 1},
    "stream_options": {"retention": "interest", "duplicate_window": "1s"},
}


async def api(nc: NATS, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = await nc.request(subject, json.dumps(body).encode() if body is not None else b"", timeout=2)
    return json.loads(msg.data)


async def apply_with_nats_py(nc: NATS, pair: Pair) -> None:
    """nats-py's own dataclasses convert our ns to seconds and back; the server must end up with ns."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig.from_response(copy.deepcopy(stream_config(pair))))
    for config in consumer_configs(pair).values():
        await js.add_consumer(pair.stream, ConsumerConfig.from_response(copy.deepcopy(config)))


def assert_holds(rendered: dict[str, Any], live: dict[str, Any]) -> None:
    mismatched = {key: (value, live.get(key)) for key, value in rendered.items() if live.get(key) != value}
    assert not mismatched, f"server holds something else: {{field: (rendered, live)}} = {mismatched}"


@pytest.mark.container
@pytest.mark.parametrize(
    "spec", [GEM_DEFAULTS, NON_DEFAULT, INTEREST_NO_BACKOFF], ids=["gem", "custom", "interest"]
)
async def test_rendered_configs_are_what_the_server_holds(nats_server, spec):
    pair = parse_pairs([spec]).pairs[0]
    nc = await nats.connect(nats_server.url)
    try:
        await apply_with_nats_py(nc, pair)
        stream = await api(nc, f"$JS.API.STREAM.INFO.{pair.stream}")
        assert "error" not in stream, stream
        assert_holds(stream_config(pair), stream["config"])
        for durable, rendered in consumer_configs(pair).items():
            info = await api(nc, f"$JS.API.CONSUMER.INFO.{pair.stream}.{durable}")
            assert "error" not in info, info
            assert_holds(rendered, info["config"])
            assert "deliver_subject" not in info["config"], "must be a pull consumer"
    finally:
        await nc.close()


async def test_non_default_values_really_reach_the_server(nats_server):
    """Spot-check the values themselves, so a renderer and server that agree on a wrong value still fail."""
    pair = parse_pairs([NON_DEFAULT]).pairs[0]
    nc = await nats.connect(nats_server.url)
    try:
        await apply_with_nats_py(nc, pair)
        stream = (await api(nc, "$JS.API.STREAM.INFO.ledger-crm"))["config"]
        assert stream["subjects"] == ["ledger.sync.crm", "crm.sync.ledger"], "no DLQ subjects with dlq off"
        assert (stream["storage"], stream["retention"]) == ("memory", "limits")
        assert (stream["max_age"], stream["duplicate_window"]) == (3600 * S, 30 * S)
        assert stream["description"] == "non-default pair"
        ledger = (await api(nc, "$JS.API.CONSUMER.INFO.ledger-crm.ledger-workers"))["config"]
        assert (ledger["ack_wait"], ledger.get("backoff"), ledger["max_deliver"]) == (2 * S, None, 3)
        assert ledger["filter_subject"] == "crm.sync.ledger"
        crm = (await api(nc, "$JS.API.CONSUMER.INFO.ledger-crm.crm-workers"))["config"]
        assert (crm["ack_wait"], crm["backoff"], crm["max_deliver"]) == (S // 2, [S // 2, 2 * S], 4)
        assert crm["max_ack_pending"] == 7 and crm["filter_subject"] == "ledger.sync.crm"
    finally:
        await nc.close()


async def test_server_replaces_a_contradicting_ack_wait_which_is_why_the_spec_refuses_it(nats_server):
    """The gem's recipe (ack_wait 30s + backoff 1s,...) sent as-is: the server keeps ack_wait = backoff[0]."""
    pair = parse_pairs([GEM_DEFAULTS]).pairs[0]
    nc = await nats.connect(nats_server.url)
    try:
        await api(nc, f"$JS.API.STREAM.CREATE.{pair.stream}", stream_config(pair))
        gem_recipe = {**consumer_configs(pair)["orders-workers"], "ack_wait": 30 * S}
        created = await api(
            nc,
            f"$JS.API.CONSUMER.CREATE.{pair.stream}.orders-workers",
            {
                "stream_name": pair.stream,
                "config": gem_recipe,
            },
        )
        assert "error" not in created, created
        assert created["config"]["ack_wait"] == S
        assert consumer_configs(pair)["orders-workers"]["ack_wait"] == S, "what we render"
    finally:
        await nc.close()


async def test_server_refuses_a_backoff_longer_than_max_deliver_which_the_spec_catches_first(nats_server):
    pair = parse_pairs([GEM_DEFAULTS]).pairs[0]
    nc = await nats.connect(nats_server.url)
    try:
        await api(nc, f"$JS.API.STREAM.CREATE.{pair.stream}", stream_config(pair))
        too_long = {**consumer_configs(pair)["orders-workers"], "max_deliver": 2}
        reply = await api(
            nc,
            f"$JS.API.CONSUMER.CREATE.{pair.stream}.orders-workers",
            {
                "stream_name": pair.stream,
                "config": too_long,
            },
        )
        assert "error" in reply and "backoff" in reply["error"]["description"].lower(), reply
    finally:
        await nc.close()


@pytest.mark.container
def test_a_container_test_runs_on_the_embedded_server_where_no_docker_answers(nats_server):
    from conftest import docker_answers

    if env_nats_url():
        assert nats_server.server is None
    else:
        # Docker here: a container serves (no local process); no Docker: the embedded binary does.
        assert (nats_server.server is None) == docker_answers()
