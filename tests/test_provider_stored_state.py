"""State written before a spec rule existed: diff, refresh and destroy still work; new inputs stay strict.

The host runs today's provider code on yesterday's state. The case here is real: the spec now refuses
`retention: interest` together with `dlq: true`, and a stack created before that rule holds such a
stream. Stream and Consumer store their rendered config, never the pair, so nothing in their state is
validated against today's spec: the old state is simulated as an older jsb-infra would have left it
(the stream and both consumers created through the host as `limits` with a DLQ, valid today, the
server's stream switched to `interest` in place, and the stored live config edited to say `interest`),
and today's rendering of a valid pair diffs, updates or replaces it as the server rules say.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from provider_host import (
    ProviderCallError,
    ProviderHost,
    admin_call,
    admin_server_config,
    assert_no_secret,
    publish,
    stack_config,
)

from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import stream_config
from jsb_infra.deploy.providers.consumer import ConsumerProvider, consumer_inputs
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs
from jsb_infra.local.server import LocalNatsServer

STREAM = "orders-billing"
APPS = ("orders", "billing")

S = StreamProvider()
C = ConsumerProvider()


def pair(**changes: Any) -> dict[str, Any]:
    """A pair valid under today's rules, as check stores it."""
    spec: dict[str, Any] = {"stream": STREAM, "apps": list(APPS), "protect": False, **changes}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


LIMITS_WITH_DLQ = pair(stream_options={"retention": "limits"})


def stream_props(spec: dict[str, Any]) -> dict[str, Any]:
    return stream_inputs(Pair.model_validate(spec))


def consumer_props(spec: dict[str, Any], app: str, created: str) -> dict[str, Any]:
    return consumer_inputs(Pair.model_validate(spec), app, created)


def as_stored_before_the_rule(outs: dict[str, Any]) -> dict[str, Any]:
    """`outs` as an older version stored them for an interest stream with a DLQ (allowed back then)."""
    old = copy.deepcopy(outs)
    if "retention" in old["config"]:  # the stream's live config
        old["config"]["retention"] = "interest"
    return old


def stream_info(url: str) -> dict[str, Any] | None:
    return admin_call(url, lambda js: js.stream_info(STREAM))  # type: ignore[no-any-return]


def consumer_info(url: str, app: str) -> dict[str, Any] | None:
    return admin_call(url, lambda js: js.consumer_info(STREAM, f"{app}-workers"))  # type: ignore[no-any-return]


@pytest.fixture
def server(make_server: Callable[..., LocalNatsServer]) -> LocalNatsServer:
    return make_server(admin_server_config())


@pytest.fixture
def host(server: LocalNatsServer) -> Iterator[ProviderHost]:
    with ProviderHost() as h:
        h.configure(stack_config(server.url))
        yield h
        assert_no_secret(h)


@dataclass
class OldStack:
    stream: dict[str, Any]  # the stream's stored outputs (its id is the stream name)
    consumers: dict[str, tuple[str, dict[str, Any]]]  # app -> (id, stored outputs)


@pytest.fixture
def old_stack(host: ProviderHost, server: LocalNatsServer) -> OldStack:
    _, stream_outs = host.up(S, stream_props(LIMITS_WITH_DLQ))
    consumers = {
        app: host.up(C, consumer_props(LIMITS_WITH_DLQ, app, stream_outs["created"])) for app in APPS
    }
    interest = {**stream_config(Pair.model_validate(LIMITS_WITH_DLQ)), "retention": "interest"}
    admin_call(server.url, lambda js: js.update_stream(interest))
    return OldStack(
        as_stored_before_the_rule(stream_outs),
        {app: (id_, as_stored_before_the_rule(outs)) for app, (id_, outs) in consumers.items()},
    )


def test_refresh_reads_state_stored_before_the_rule(
    host: ProviderHost, server: LocalNatsServer, old_stack: OldStack
) -> None:
    read_id, refreshed = host.read(S, STREAM, old_stack.stream)
    assert read_id == STREAM and refreshed["dlq_keeper"] == old_stack.stream["dlq_keeper"], (
        "read keeps the stored inputs"
    )
    assert refreshed["config"]["retention"] == "interest" and refreshed["dlq_keeper_present"] is True
    assert refreshed["config"]["subjects"] == [
        "orders.sync.billing",
        "billing.sync.orders",
        "orders.sync.dlq",
        "billing.sync.dlq",
    ]
    for app, (id_, outs) in old_stack.consumers.items():
        read_id, refreshed = host.read(C, id_, outs)
        assert read_id == id_ and refreshed["config"] == outs["config"], app
        assert refreshed["stream_incarnation"] == outs["stream_incarnation"]
    # and an object deleted behind Pulumi's back still reads as gone, not as an error
    admin_call(server.url, lambda js: js.delete_consumer(STREAM, "billing-workers"))
    assert host.read(C, *old_stack.consumers["billing"]) == ("", {})


@pytest.mark.parametrize(
    ("new_pair", "stream_replaces", "consumer_replaces"),
    [
        (pair(dlq=False, stream_options={"retention": "interest"}), [], []),
        (pair(stream_options={"retention": "limits"}), [], []),
        (
            pair(stream_options={"retention": "workqueue"}),
            ["config.retention"],
            ["stream_created"],
        ),
    ],
    ids=["interest-without-dlq", "limits-with-dlq", "workqueue"],
)
def test_diff_from_stored_state_to_a_valid_pair_decides_update_or_replace(
    host: ProviderHost,
    old_stack: OldStack,
    new_pair: dict[str, Any],
    stream_replaces: list[str],
    consumer_replaces: list[str],
) -> None:
    outcome = host.diff(S, STREAM, old_stack.stream, host.checked(S, stream_props(new_pair)))
    assert outcome.changes == "DIFF_SOME"
    assert outcome.replaces == stream_replaces
    assert outcome.delete_before_replace is bool(stream_replaces)
    for app, (id_, outs) in old_stack.consumers.items():
        news = host.checked(C, consumer_props(new_pair, app, old_stack.stream["created"]))
        outcome = host.diff(C, id_, outs, news)
        assert outcome.replaces == consumer_replaces, app
        assert outcome.changes == ("DIFF_SOME" if consumer_replaces else "DIFF_NONE"), app


def test_update_from_stored_state_lands_the_valid_pair_in_place(
    host: ProviderHost, server: LocalNatsServer, old_stack: OldStack
) -> None:
    publish(server.url, "billing.sync.orders", 2)
    valid = stream_props(pair(dlq=False, stream_options={"retention": "interest"}))
    outcome, outs = host.change(S, STREAM, old_stack.stream, valid)
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = stream_info(server.url)
    assert live is not None and live["config"]["subjects"] == ["orders.sync.billing", "billing.sync.orders"]
    assert live["config"]["retention"] == "interest" == outs["config"]["retention"]
    assert outs["created"] == old_stack.stream["created"] and live["state"]["messages"] == 2
    assert outs["dlq_keeper"] == {} and outs["dlq_keeper_present"] is False, "the DLQ keeper went"
    assert host.diff(S, STREAM, outs, host.checked(S, valid)).changes == "DIFF_NONE"


def test_delete_of_state_stored_before_the_rule_works_and_the_guards_still_apply(
    host: ProviderHost, server: LocalNatsServer, old_stack: OldStack
) -> None:
    publish(server.url, "billing.sync.orders", 2)  # pending for orders' durable only
    orders_id, orders_outs = old_stack.consumers["orders"]
    with pytest.raises(ProviderCallError) as err:
        host.delete(C, orders_id, orders_outs)
    assert (
        "refusing to delete consumer 'orders-workers' on interest stream 'orders-billing': "
        "2 message(s) would be dropped" in err.value.details
    )
    with pytest.raises(ProviderCallError, match="refusing to delete stream 'orders-billing'"):
        host.delete(S, STREAM, old_stack.stream)
    assert consumer_info(server.url, "orders") is not None and stream_info(server.url) is not None
    host.delete(C, *old_stack.consumers["billing"])  # nothing at stake for billing's durable
    assert consumer_info(server.url, "billing") is None
    # the same old state with the opt-in stored (as an older version would have kept it) lets it all go
    host.delete(C, orders_id, {**orders_outs, "allow_destroy_with_messages": True})
    host.delete(S, STREAM, {**old_stack.stream, "allow_destroy_with_messages": True})
    assert consumer_info(server.url, "orders") is None and stream_info(server.url) is None


def test_state_that_still_holds_a_pair_is_refused_with_the_migration_to_run(
    host: ProviderHost, server: LocalNatsServer, old_stack: OldStack
) -> None:
    """State of the one-input-per-pair shape is rewritten by the migration, never guessed at: a
    refresh must not read it as gone (that would drop it from the stack)."""
    written_by_the_old_shape = {"pair": LIMITS_WITH_DLQ, "name": STREAM, "config": old_stack.stream["config"]}
    for call in (
        lambda: host.read(S, STREAM, written_by_the_old_shape),
        lambda: host.diff(
            S, STREAM, written_by_the_old_shape, host.checked(S, stream_props(LIMITS_WITH_DLQ))
        ),
        lambda: host.delete(S, STREAM, written_by_the_old_shape),
    ):
        with pytest.raises(ProviderCallError, match="jsb-infra migrate-state"):
            call()
    assert stream_info(server.url) is not None, "nothing was deleted"
