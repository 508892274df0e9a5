"""The Consumer provider through the real dynamic-provider host against a real nats-server.

The spec pins deliver all / ack explicit / replay instant, so no pair can ask for another policy:
the policy replaces are shown by diffing against a live config that differs (as one adopted from
the NATS CLI or changed by hand would), and the stream-incarnation replace via `stream_created`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
from provider_host import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    UNKNOWN,
    ProviderCallError,
    ProviderHost,
    admin_server_config,
    assert_no_secret,
    stack_config,
)

from jsb_infra.local_server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.outputs import bridge_outputs_from_live
from jsb_infra.providers.consumer import ConsumerProvider
from jsb_infra.providers.stream import StreamProvider
from jsb_infra.spec import Pair, parse_pairs
from jsb_infra.topology import consumer_config

STREAM = "orders-billing"
DURABLE = "orders-workers"
SECOND = 10**9


def pair(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"stream": STREAM, "apps": ["orders", "billing"], "protect": False, **changes}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


def typed(spec: dict[str, Any]) -> Pair:
    return parse_pairs([spec]).pairs[0]


@pytest.fixture
def server(make_server: Callable[..., LocalNatsServer]) -> LocalNatsServer:
    return make_server(admin_server_config())


@pytest.fixture
def host(server: LocalNatsServer) -> Iterator[ProviderHost]:
    with ProviderHost() as h:
        h.configure(stack_config(server.url))
        yield h
        assert_no_secret(h)


C = ConsumerProvider()
S = StreamProvider()


@pytest.fixture
def stream(host: ProviderHost) -> dict[str, Any]:
    return host.up(S, {"pair": pair()})[1]


def props(stream: dict[str, Any], spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"pair": spec or pair(), "app": "orders", "stream_created": stream["created"], **extra}


def admin_call(url: str, fn: Callable[[JetStreamAdmin], Any]) -> Any:
    async def go() -> Any:
        nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
        try:
            return await fn(JetStreamAdmin(nc))
        finally:
            await nc.close()

    return asyncio.run(go())


def server_config(url: str) -> dict[str, Any] | None:
    got = admin_call(url, lambda js: js.consumer_info(STREAM, DURABLE))
    return None if got is None else got["config"]


def publish(url: str, subject: str, count: int) -> None:
    async def go() -> None:
        nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
        for i in range(count):
            await nc.jetstream().publish(subject, f"m{i}".encode())
        await nc.close()

    asyncio.run(go())


def assert_outputs_match_server(outs: dict[str, Any], url: str) -> None:
    live = server_config(url)
    assert live is not None
    for key, value in outs["config"].items():
        assert live.get(key, [] if key == "backoff" else None) == value, key


def test_create_outputs_what_the_server_holds_and_a_rerun_is_a_no_op(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    assert id_ == f"{STREAM}/{DURABLE}"
    assert outs["stream"] == STREAM and outs["durable"] == DURABLE
    assert_outputs_match_server(outs, server.url)
    assert outs["config"]["ack_wait"] == SECOND, "with a backoff the server runs ack_wait = backoff[0]"
    assert outs["config"]["filter_subject"] == "billing.sync.orders"
    outcome = host.diff(C, id_, outs, host.checked(C, props(stream)))
    assert outcome.changes == "DIFF_NONE" and outcome.replaces == []


@pytest.mark.parametrize(
    ("consumer", "key", "value"),
    [
        ({"backoff": ["2s", "4s"]}, "ack_wait", 2 * SECOND),
        ({"backoff": [], "ack_wait": "45s"}, "ack_wait", 45 * SECOND),
        ({"backoff": [], "ack_wait": "45s"}, "backoff", []),
        ({"max_ack_pending": 100}, "max_ack_pending", 100),
        ({"max_deliver": 9}, "max_deliver", 9),
    ],
)
def test_in_place_change_updates_without_replace_and_keeps_messages(
    host: ProviderHost,
    server: LocalNatsServer,
    stream: dict[str, Any],
    consumer: dict[str, Any],
    key: str,
    value: Any,
) -> None:
    id_, outs = host.up(C, props(stream))
    publish(server.url, "billing.sync.orders", 3)
    new = props(stream, pair(consumer=consumer))
    outcome, new_outs = host.change(C, id_, outs, new)
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == [] and not outcome.delete_before_replace
    assert new_outs["config"].get(key, []) == value
    assert new_outs["created"] == outs["created"], "updated in place, not recreated"
    assert_outputs_match_server(new_outs, server.url)
    pending = admin_call(server.url, lambda js: js.consumer_info(STREAM, DURABLE))["num_pending"]
    assert pending == 3, "the durable keeps its messages"
    assert host.diff(C, id_, new_outs, host.checked(C, new)).changes == "DIFF_NONE"


def test_bridge_says_what_the_server_holds_after_create_and_update(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    bridge = bridge_outputs_from_live(typed(pair()), "orders", [server.url], outs["config"])
    live = server_config(server.url)
    assert live is not None
    assert bridge.consumer.ack_wait_ns == live["ack_wait"]
    assert bridge.consumer.backoff_ns == live["backoff"]
    assert bridge.consumer.max_deliver == live["max_deliver"]
    assert bridge.consumer.max_ack_pending == live["max_ack_pending"]
    changed = pair(consumer={"backoff": ["3s"], "max_deliver": 2, "max_ack_pending": 7})
    _, outs = host.change(C, id_, outs, props(stream, changed))
    bridge = bridge_outputs_from_live(typed(changed), "orders", [server.url], outs["config"])
    live = server_config(server.url)
    assert live is not None
    assert (bridge.consumer.ack_wait_ns, bridge.consumer.backoff_ns) == (live["ack_wait"], live["backoff"])
    assert (
        (bridge.consumer.max_deliver, bridge.consumer.max_ack_pending)
        == (2, 7)
        == (
            live["max_deliver"],
            live["max_ack_pending"],
        )
    )


@pytest.mark.parametrize(
    ("field", "server_value"),
    [("deliver_policy", "new"), ("ack_policy", "all"), ("replay_policy", "original")],
)
def test_policy_differences_replace_delete_first(
    host: ProviderHost, stream: dict[str, Any], field: str, server_value: str
) -> None:
    id_, outs = host.up(C, props(stream))
    as_if_changed_by_hand = {**outs, "config": {**outs["config"], field: server_value}}
    outcome = host.diff(C, id_, as_if_changed_by_hand, host.checked(C, props(stream)))
    assert outcome.changes == "DIFF_SOME"
    assert outcome.replaces == [field] and outcome.delete_before_replace is True


def test_a_new_stream_incarnation_replaces_the_consumer(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    # the stream is replaced: its consumers vanish with it on the server
    host.delete(S, STREAM, stream)
    _, new_stream = host.up(S, {"pair": pair()})
    assert server_config(server.url) is None
    outcome = host.diff(C, id_, outs, host.checked(C, props(new_stream)))
    assert outcome.replaces == ["stream_created"] and outcome.delete_before_replace is True
    host.delete(C, id_, outs)  # gone already: nothing to do
    _, recreated = host.up(C, props(new_stream))
    assert_outputs_match_server(recreated, server.url)


def test_unknown_stream_incarnation_at_preview_is_a_change_not_a_replace(
    host: ProviderHost, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    outcome = host.diff(C, id_, outs, {**props(stream), "stream_created": UNKNOWN})
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []


def test_moving_to_another_stream_replaces(host: ProviderHost, stream: dict[str, Any]) -> None:
    id_, outs = host.up(C, props(stream))
    moved = parse_pairs([{**pair(), "stream": "elsewhere"}]).pairs[0].model_dump(mode="json")
    outcome = host.diff(C, id_, outs, host.checked(C, props(stream, moved)))
    assert outcome.replaces == ["pair.stream"] and outcome.delete_before_replace


def test_adopt_equal_consumer(host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]) -> None:
    made = admin_call(
        server.url, lambda js: js.create_consumer(STREAM, consumer_config(typed(pair()), "orders"))
    )
    _, outs = host.up(C, props(stream))
    assert outs["created"] == made["created"]


def test_adopt_refuses_a_different_consumer(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    other = {**consumer_config(typed(pair()), "orders"), "max_ack_pending": 10}
    admin_call(server.url, lambda js: js.create_consumer(STREAM, other))
    with pytest.raises(ProviderCallError) as err:
        host.up(C, props(stream))
    assert "consumer 'orders-billing/orders-workers' already exists" in err.value.details
    assert "max_ack_pending: desired 25000, server has 10" in err.value.details
    live = server_config(server.url)
    assert live is not None and live["max_ack_pending"] == 10


def test_adopt_true_updates_a_different_consumer(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    other = {**consumer_config(typed(pair()), "orders"), "max_ack_pending": 10}
    made = admin_call(server.url, lambda js: js.create_consumer(STREAM, other))
    _, outs = host.up(C, props(stream, pair(adopt=True)))
    assert outs["config"]["max_ack_pending"] == 25000 and outs["created"] == made["created"]
    assert_outputs_match_server(outs, server.url)


def test_adopt_true_refuses_a_policy_the_server_cannot_change(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    other = {**consumer_config(typed(pair()), "orders"), "replay_policy": "original"}
    admin_call(server.url, lambda js: js.create_consumer(STREAM, other))
    with pytest.raises(ProviderCallError, match=r"cannot adopt consumer .*replay_policy: desired 'instant'"):
        host.up(C, props(stream, pair(adopt=True)))


def test_read_reports_out_of_band_change_then_delete(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    by_hand = {**consumer_config(typed(pair()), "orders"), "max_deliver": 8}
    admin_call(server.url, lambda js: js.update_consumer(STREAM, by_hand))
    read_id, refreshed = host.read(C, id_, outs)
    assert read_id == id_ and refreshed["config"]["max_deliver"] == 8
    outcome = host.diff(C, id_, refreshed, host.checked(C, props(stream)))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    admin_call(server.url, lambda js: js.delete_consumer(STREAM, DURABLE))
    assert host.read(C, id_, refreshed) == ("", {})


def test_delete_cleans_the_server(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    host.delete(C, id_, outs)
    assert server_config(server.url) is None


def test_check_rejects_an_app_outside_the_pair(host: ProviderHost, stream: dict[str, Any]) -> None:
    _, failures = host.check(C, props(stream, app="shipping"))
    assert failures == [("app", "app: 'shipping' is not one of the pair's apps ['orders', 'billing']")]
