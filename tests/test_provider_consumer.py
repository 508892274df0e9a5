"""The Consumer provider through the real dynamic-provider host against a real nats-server.

The spec pins deliver all / ack explicit / replay instant, so no pair can ask for another policy:
the policy replaces are shown by diffing against a live config that differs (as one adopted from
the NATS CLI or changed by hand would), and the stream-incarnation replace via `stream_created`.
"""

from __future__ import annotations

from typing import Any

import pytest
from provider_host import (
    UNKNOWN,
    ProviderCallError,
    ProviderHost,
    admin_call,
    publish,
)

from jsb_infra.core.outputs import bridge_outputs_from_live
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import consumer_config
from jsb_infra.deploy.providers.consumer import ConsumerProvider, consumer_inputs
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs
from jsb_infra.local.server import LocalNatsServer

STREAM = "orders-billing"
DURABLE = "orders-workers"
SECOND = 10**9


def pair(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"stream": STREAM, "apps": ["orders", "billing"], "protect": False, **changes}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


def typed(spec: dict[str, Any]) -> Pair:
    return parse_pairs([spec]).pairs[0]


C = ConsumerProvider()
S = StreamProvider()


def stream_props(spec: dict[str, Any]) -> dict[str, Any]:
    """The Stream inputs of the pair `spec`."""
    return stream_inputs(typed(spec))


@pytest.fixture
def stream(host: ProviderHost) -> dict[str, Any]:
    return host.up(S, stream_props(pair()))[1]


def props(stream: dict[str, Any], spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The Consumer inputs of orders' durable in the pair `spec` (what the AppPair component registers)."""
    return {**consumer_inputs(typed(spec or pair()), "orders", stream["created"]), **extra}


def server_config(url: str) -> dict[str, Any] | None:
    got = admin_call(url, lambda js: js.consumer_info(STREAM, DURABLE))
    return None if got is None else got["config"]


def assert_outputs_match_server(outs: dict[str, Any], url: str) -> None:
    live = server_config(url)
    assert live is not None
    for key, value in outs["config"].items():
        assert live.get(key, MANAGED_UNSET.get(key, [] if key == "backoff" else None)) == value, key


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
    _, new_stream = host.up(S, stream_props(pair()))
    assert server_config(server.url) is None
    outcome = host.diff(C, id_, outs, host.checked(C, props(new_stream)))
    assert outcome.replaces == ["stream_created"] and outcome.delete_before_replace is True
    host.delete(C, id_, outs)  # gone already: nothing to do
    _, recreated = host.up(C, props(new_stream))
    assert_outputs_match_server(recreated, server.url)


def test_unknown_stream_incarnation_at_preview_alone_is_no_change(
    host: ProviderHost, stream: dict[str, Any]
) -> None:
    """The stream updating in place makes its `created` unknown at preview; the consumer stays as it is."""
    id_, outs = host.up(C, props(stream))
    outcome = host.diff(C, id_, outs, {**host.checked(C, props(stream)), "stream_created": UNKNOWN})
    assert outcome.changes == "DIFF_NONE" and outcome.replaces == []


def test_moving_to_another_stream_replaces(host: ProviderHost, stream: dict[str, Any]) -> None:
    id_, outs = host.up(C, props(stream))
    moved = parse_pairs([{**pair(), "stream": "elsewhere"}]).pairs[0].model_dump(mode="json")
    outcome = host.diff(C, id_, outs, host.checked(C, props(stream, moved)))
    assert outcome.replaces == ["stream"] and outcome.delete_before_replace


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


@pytest.mark.parametrize(
    ("change", "prop", "reason"),
    [
        (
            {"durable": "billing-workers"},
            "config",
            "config.durable_name: must equal durable 'billing-workers'",
        ),
        ({"stream": ""}, "stream", "stream: must be a non-empty string"),
        (
            {"stream_incarnation": None},
            "stream_incarnation",
            "stream_incarnation: must be a non-empty string",
        ),
        ({"stream_created": 5}, "stream_created", "stream_created: must be text"),
        ({"stream_replicas": 0}, "stream_replicas", "stream_replicas: must be a whole number >= 1"),
        ({"adopt": "no"}, "adopt", "adopt: must be true or false"),
        ({"config": "max_deliver=5"}, "config", "config: must be the rendered consumer config"),
        ({"connection": {"servers": ["nats://x:4222"], "bogus": 1}}, "connection", "unknown key(s) bogus"),
    ],
)
def test_check_names_the_property_and_the_rule(
    host: ProviderHost, stream: dict[str, Any], change: dict[str, Any], prop: str, reason: str
) -> None:
    _, failures = host.check(C, {**props(stream), **change})
    assert [p for p, _ in failures] == [prop] and reason in failures[0][1]


def test_a_rendered_max_deliver_change_is_an_update_not_a_replace(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    """The child carries its rendered config: max_deliver 5 -> 7 updates the durable in place."""
    id_, outs = host.up(C, props(stream))
    assert outs["config"]["max_deliver"] == 5 == server_config(server.url)["max_deliver"]  # type: ignore[index]
    new = props(stream)
    new["config"] = {**new["config"], "max_deliver": 7}
    outcome = host.diff(C, id_, outs, host.checked(C, new))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == [] and not outcome.delete_before_replace
    updated = host.update(C, id_, outs, host.checked(C, new))
    live = server_config(server.url)
    assert live is not None and live["max_deliver"] == 7 == updated["config"]["max_deliver"]
    assert updated["created"] == outs["created"]
    assert host.diff(C, id_, updated, host.checked(C, new)).changes == "DIFF_NONE"


def test_a_new_connection_is_an_update_and_an_unknown_config_at_preview_is_no_replace(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    named = {"name": "direct", "servers": [server.url], "admin_config_key": "jsb:admin"}
    outcome, moved = host.change(C, id_, outs, props(stream, connection=named))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert moved["connection"] == named and moved["created"] == outs["created"]
    preview = {**host.checked(C, props(stream, connection=named)), "config": UNKNOWN}
    outcome = host.diff(C, id_, moved, preview)
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []


def test_outputs_echo_the_inputs_with_the_live_config(host: ProviderHost, stream: dict[str, Any]) -> None:
    news = host.checked(C, props(stream))
    _, outs = host.up(C, props(stream))
    echoed = [k for k in news if k != "config"]
    assert {k: outs[k] for k in echoed} == {k: news[k] for k in echoed}
    assert set(outs) == set(news) | {"created", "adopted", "unset"}
    assert outs["config"]["max_waiting"] == 512 and "max_waiting" not in news["config"], "live, not rendered"


# -- interest retention: a consumer's pending messages go with it ------------------------------------
INTEREST = {"stream_options": {"retention": "interest"}, "dlq": False}


def stream_messages(url: str) -> int:
    got = admin_call(url, lambda js: js.stream_info(STREAM))
    return int(got["state"]["messages"])


def test_deleting_a_consumer_with_pending_messages_on_an_interest_stream_is_refused(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    _, stream_outs = host.up(S, stream_props(pair(**INTEREST)))
    id_, outs = host.up(C, props(stream_outs, pair(**INTEREST)))
    publish(server.url, "billing.sync.orders", 3)
    with pytest.raises(ProviderCallError) as err:
        host.delete(C, id_, outs)
    assert (
        "refusing to delete consumer 'orders-workers' on interest stream 'orders-billing': "
        "3 message(s) would be dropped" in err.value.details
    )
    assert "allow_destroy_with_messages: true" in err.value.details
    assert server_config(server.url) is not None and stream_messages(server.url) == 3
    # the stored pair's opt-in lets it go (and the server drops what only it was interested in);
    # storing it is a change of its own, or the flag would never reach the state delete reads
    outcome, outs = host.change(
        C, id_, outs, props(stream_outs, pair(**INTEREST, allow_destroy_with_messages=True))
    )
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    host.delete(C, id_, outs)
    assert server_config(server.url) is None and stream_messages(server.url) == 0


def test_deleting_a_consumer_of_a_workqueue_stream_keeps_the_messages_without_a_guard(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    publish(server.url, "billing.sync.orders", 2)
    host.delete(C, id_, outs)
    assert server_config(server.url) is None and stream_messages(server.url) == 2


def test_replacing_a_consumer_with_pending_messages_on_an_interest_stream_is_refused_at_preview(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    _, stream_outs = host.up(S, stream_props(pair(**INTEREST)))
    id_, outs = host.up(C, props(stream_outs, pair(**INTEREST)))
    publish(server.url, "billing.sync.orders", 2)
    by_hand = {**outs, "config": {**outs["config"], "replay_policy": "original"}}
    with pytest.raises(ProviderCallError) as err:
        host.diff(C, id_, by_hand, host.checked(C, props(stream_outs, pair(**INTEREST))))
    assert (
        "refusing to replace consumer 'orders-workers' on interest stream 'orders-billing' "
        "(because replay_policy changed): 2 message(s) would be dropped" in err.value.details
    )
    # opting in together with the replace would fail at the delete, which sees the stored state
    allowing = pair(**INTEREST, allow_destroy_with_messages=True)
    with pytest.raises(ProviderCallError, match="stored state does not allow"):
        host.diff(C, id_, by_hand, host.checked(C, props(stream_outs, allowing)))
    _, outs = host.change(C, id_, outs, props(stream_outs, allowing))
    by_hand = {**outs, "config": {**outs["config"], "replay_policy": "original"}}
    outcome = host.diff(C, id_, by_hand, host.checked(C, props(stream_outs, allowing)))
    assert outcome.replaces == ["replay_policy"] and outcome.delete_before_replace
    assert stream_messages(server.url) == 2, "the guard reads, never deletes"


def test_an_interest_consumer_with_nothing_pending_replaces_without_opt_in(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    _, stream_outs = host.up(S, stream_props(pair(**INTEREST)))
    id_, outs = host.up(C, props(stream_outs, pair(**INTEREST)))
    publish(server.url, "orders.sync.billing", 2)  # for billing's consumer, not this one
    by_hand = {**outs, "config": {**outs["config"], "ack_policy": "all"}}
    outcome = host.diff(C, id_, by_hand, host.checked(C, props(stream_outs, pair(**INTEREST))))
    assert outcome.replaces == ["ack_policy"]
    host.delete(C, id_, outs)
    assert server_config(server.url) is None


# -- fields jsb-infra does not render but manages: adopt and drift see them -------------------------
MUTABLE_EXTRAS: list[tuple[dict[str, Any], str]] = [
    ({"headers_only": True}, "headers_only: desired False, server has True"),
    ({"inactive_threshold": 60 * SECOND}, "inactive_threshold: desired 0, server has 60000000000"),
    (
        {"filter_subjects": ["billing.sync.orders", "orders.sync.billing"], "filter_subject": None},
        "filter_subjects: desired [], server has ['billing.sync.orders', 'orders.sync.billing']",
    ),
]
IMMUTABLE_EXTRAS: list[tuple[dict[str, Any], str]] = [
    ({"deliver_subject": "push.orders"}, "deliver_subject: desired '', server has 'push.orders'"),
    ({"mem_storage": True}, "mem_storage: desired False, server has True"),
    ({"max_waiting": 100}, "max_waiting: desired 512, server has 100"),
]


def by_hand_config(extra: dict[str, Any]) -> dict[str, Any]:
    config = {**consumer_config(typed(pair()), "orders"), **extra}
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize(("extra", "described"), MUTABLE_EXTRAS + IMMUTABLE_EXTRAS)
def test_adopt_refuses_a_consumer_that_differs_in_a_field_jsb_does_not_render(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any], extra: dict[str, Any], described: str
) -> None:
    admin_call(server.url, lambda js: js.create_consumer(STREAM, by_hand_config(extra)))
    with pytest.raises(ProviderCallError) as err:
        host.up(C, props(stream))
    assert "consumer 'orders-billing/orders-workers' already exists" in err.value.details
    assert described in err.value.details


@pytest.mark.parametrize(("extra", "described"), IMMUTABLE_EXTRAS)
def test_adopt_true_refuses_clearly_what_the_server_cannot_update(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any], extra: dict[str, Any], described: str
) -> None:
    admin_call(server.url, lambda js: js.create_consumer(STREAM, by_hand_config(extra)))
    with pytest.raises(ProviderCallError) as err:
        host.up(C, props(stream, pair(adopt=True)))
    assert "cannot adopt consumer 'orders-billing/orders-workers'" in err.value.details
    assert described in err.value.details
    assert "err_code" not in err.value.details, "refused before the server is asked"


@pytest.mark.parametrize(("extra", "described"), MUTABLE_EXTRAS)
def test_adopt_true_resets_a_field_jsb_does_not_render(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any], extra: dict[str, Any], described: str
) -> None:
    made = admin_call(server.url, lambda js: js.create_consumer(STREAM, by_hand_config(extra)))
    id_, outs = host.up(C, props(stream, pair(adopt=True)))
    assert outs["created"] == made["created"]
    live = server_config(server.url)
    assert live is not None
    for key in (k for k, v in extra.items() if v is not None):
        assert key not in live, f"{key} is back to its unset value"
    assert_outputs_match_server(outs, server.url)
    assert host.diff(C, id_, outs, host.checked(C, props(stream, pair(adopt=True)))).changes == "DIFF_NONE"


def test_config_output_has_the_managed_fields_and_the_bridge_still_validates(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    _, outs = host.up(C, props(stream))
    assert {k: outs["config"][k] for k in MANAGED_UNSET} == MANAGED_UNSET
    bridge = bridge_outputs_from_live(typed(pair()), "orders", [server.url], outs["config"])
    assert bridge.consumer.max_deliver == 5 and bridge.durable == DURABLE


MANAGED_UNSET: dict[str, Any] = {
    "deliver_subject": "",
    "headers_only": False,
    "inactive_threshold": 0,
    "mem_storage": False,
    "filter_subjects": [],
    "max_waiting": 512,
}


def test_refresh_sees_a_push_consumer_put_in_place_by_hand_and_the_diff_replaces_it(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    admin_call(server.url, lambda js: js.delete_consumer(STREAM, DURABLE))
    admin_call(server.url, lambda js: js.create_consumer(STREAM, by_hand_config({"deliver_subject": "p.o"})))
    _, refreshed = host.read(C, id_, outs)
    assert refreshed["config"]["deliver_subject"] == "p.o"
    outcome = host.diff(C, id_, refreshed, host.checked(C, props(stream)))
    # a push consumer has no max_waiting either; both are fields the server cannot update
    assert outcome.replaces == ["deliver_subject", "max_waiting"] and outcome.delete_before_replace


def test_refresh_sees_headers_only_set_by_hand_and_up_resets_it_in_place(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    admin_call(server.url, lambda js: js.update_consumer(STREAM, by_hand_config({"headers_only": True})))
    _, refreshed = host.read(C, id_, outs)
    outcome, fixed = host.change(C, id_, refreshed, props(stream))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = server_config(server.url)
    assert live is not None and "headers_only" not in live and fixed["config"]["headers_only"] is False


def test_state_written_before_the_managed_fields_existed_shows_no_diff(
    host: ProviderHost, stream: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    older = {**outs, "config": {k: v for k, v in outs["config"].items() if k not in MANAGED_UNSET}}
    assert host.diff(C, id_, older, host.checked(C, props(stream))).changes == "DIFF_NONE"


# -- the stream incarnation, known at preview ------------------------------------------------------
@pytest.mark.parametrize(
    "stream_options",
    [{"storage": "memory"}, {"retention": "limits"}],
    ids=["storage", "retention-from-workqueue"],
)
def test_a_stream_replace_in_the_pair_replaces_the_consumer_already_at_preview(
    host: ProviderHost, stream: dict[str, Any], stream_options: dict[str, Any]
) -> None:
    id_, outs = host.up(C, props(stream))
    preview = {
        **host.checked(C, props(stream, pair(stream_options=stream_options))),
        "stream_created": UNKNOWN,
    }
    outcome = host.diff(C, id_, outs, preview)
    assert outcome.replaces == ["stream_created"] and outcome.delete_before_replace


def test_an_in_place_stream_update_leaves_the_consumer_alone_at_preview(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    limits = pair(stream_options={"retention": "limits", "max_age": "1h"})
    _, stream_outs = host.up(S, stream_props(limits))
    id_, outs = host.up(C, props(stream_outs, limits))
    changed = pair(stream_options={"retention": "interest", "max_age": "2h"}, dlq=False)
    preview = {**host.checked(C, props(stream_outs, changed)), "stream_created": UNKNOWN}
    assert host.diff(C, id_, outs, preview).changes == "DIFF_NONE"


def test_a_create_the_server_answers_with_other_settings_fails_and_leaves_no_durable(
    host: ProviderHost, server: LocalNatsServer, stream: dict[str, Any]
) -> None:
    """An unlucky operator's server that keeps another value than sent (here: max_ack_pending 0, which
    the server turns into its default): the app's bridge would be wrong, so the create fails, and the
    durable it made is taken back (it is in no state, so nothing else would delete it)."""
    rendered = props(stream)
    sent = {**rendered, "config": {**rendered["config"], "max_ack_pending": 0}}
    with pytest.raises(ProviderCallError) as err:
        host.up(C, sent)
    assert "after the write the server holds max_ack_pending" in err.value.details
    assert "the consumer this create made was deleted again" in err.value.details
    assert server_config(server.url) is None
    # the same create with what the server keeps succeeds: nothing left behind was in the way
    _, outs = host.up(C, rendered)
    assert outs["adopted"] is False


def test_a_preview_on_a_connection_whose_admin_key_is_not_set_fails_on_that_input(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    connection = {"name": "east", "servers": [server.url], "admin_config_key": "platform:eastAdmin"}
    _, failures = host.check(S, {**stream_props(pair()), "connection": connection})
    assert [prop for prop, _ in failures] == ["connection"]
    assert "the stack config has no platform:eastAdmin" in failures[0][1]
    assert admin_call(server.url, lambda js: js.stream_info(STREAM)) is None
