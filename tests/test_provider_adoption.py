"""Create-first, adoption and in-place updates as the server sees them: request counts, adopted
objects reported, subject order, fields jsb-infra does not manage, and server refusals explained."""

from __future__ import annotations

from typing import Any

import pytest
from provider_host import (
    ProviderCallError,
    ProviderHost,
    admin_call,
)

from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import consumer_config, stream_config
from jsb_infra.deploy.providers.consumer import ConsumerProvider, consumer_inputs
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs
from jsb_infra.local.server import LocalNatsServer

S, C = StreamProvider(), ConsumerProvider()
STREAM = "orders-billing"


def pair(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"stream": STREAM, "apps": ["orders", "billing"], "protect": False, **changes}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


def stream_props(**changes: Any) -> dict[str, Any]:
    return stream_inputs(parse_pairs([pair(**changes)]).pairs[0])


def consumer_props(app: str, stream_created: str, **changes: Any) -> dict[str, Any]:
    return consumer_inputs(parse_pairs([pair(**changes)]).pairs[0], app, stream_created)


def rendered(**changes: Any) -> dict[str, Any]:
    return stream_config(parse_pairs([pair(**changes)]).pairs[0])


def api_requests(url: str) -> int:
    """The account's count of $JS.API requests so far (this INFO request included)."""
    info = admin_call(url, lambda js: js._request("$JS.API.INFO"))
    return int(info["api"]["total"])


def stream_live(url: str) -> dict[str, Any]:
    info = admin_call(url, lambda js: js.stream_info(STREAM))
    assert info is not None
    return info  # type: ignore[no-any-return]


def test_a_new_pair_takes_four_requests_and_is_not_reported_adopted(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    before = api_requests(server.url)
    _, stream = host.up(S, stream_props())
    consumers = [host.up(C, consumer_props(app, stream["created"]))[1] for app in ("orders", "billing")]
    # the checks of the creates ask once which streams are there (is one to adopt?), and look no
    # durable up on a stream that was not; then one CREATE each, answered with the full info; the
    # stream's create also makes its DLQ keeper
    assert api_requests(server.url) - before - 1 == 1 + 4
    assert stream["adopted"] is False and [c["adopted"] for c in consumers] == [False, False]
    assert stream_live(server.url)["state"]["consumer_count"] == 3  # 2 apps and the DLQ keeper
    host.close()
    assert "adopted" not in host.stderr


def test_a_cli_made_stream_in_another_subject_order_is_adopted_as_it_is(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    by_hand = {**rendered(), "allow_direct": True}
    by_hand["subjects"] = list(reversed(by_hand["subjects"]))
    made = admin_call(server.url, lambda js: js.create_stream(by_hand))
    durable = consumer_config(parse_pairs([pair()]).pairs[0], "orders")
    admin_call(server.url, lambda js: js.create_consumer(STREAM, durable))

    _, stream = host.up(S, stream_props())
    _, consumer = host.up(C, consumer_props("orders", stream["created"]))
    live = stream_live(server.url)
    assert stream["adopted"] is True and consumer["adopted"] is True
    assert live["created"] == made["created"] == stream["created"]
    assert live["config"]["subjects"] == by_hand["subjects"], "not rewritten to jsb-infra's order"
    assert live["config"]["allow_direct"] is True
    outcome = host.diff(S, STREAM, stream, host.checked(S, stream_props()))
    assert outcome.changes == "DIFF_NONE"
    host.change(S, STREAM, stream, stream_props(stream_options={"max_age": "1d"}))
    updated = stream_live(server.url)["config"]
    assert updated["max_age"] == 86_400_000_000_000
    assert updated["subjects"] == by_hand["subjects"] and updated["allow_direct"] is True
    host.close()
    assert f"adopted stream '{STREAM}'" in host.stderr
    assert f"adopted consumer {STREAM}/orders-workers" in host.stderr


def test_updates_keep_the_fields_jsb_infra_does_not_manage(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, stream = host.up(S, stream_props())
    admin_call(
        server.url,
        lambda js: js.update_stream({**rendered(), "allow_direct": True, "metadata": {"team": "sync"}}),
    )
    host.change(S, id_, stream, stream_props(stream_options={"max_age": "1d", "description": "daily"}))
    live = stream_live(server.url)["config"]
    assert live["max_age"] == 86_400_000_000_000 and live["description"] == "daily"
    assert live["allow_direct"] is True and live["metadata"]["team"] == "sync"

    c_id, consumer = host.up(C, consumer_props("billing", stream["created"]))
    durable = consumer_config(parse_pairs([pair()]).pairs[0], "billing")
    admin_call(server.url, lambda js: js.update_consumer(STREAM, {**durable, "description": "by hand"}))
    news = consumer_props("billing", stream["created"], consumer={"max_deliver": 9})
    host.change(C, c_id, consumer, news)
    live_consumer = admin_call(server.url, lambda js: js.consumer_info(STREAM, "billing-workers"))
    assert live_consumer["config"]["max_deliver"] == 9
    assert live_consumer["config"]["description"] == "by hand"


def test_a_stream_whose_subjects_overlap_another_is_refused_in_one_line(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    admin_call(server.url, lambda js: js.create_stream({"name": "other", "subjects": ["orders.sync.>"]}))
    with pytest.raises(ProviderCallError) as err:
        host.up(S, stream_props())
    message = err.value.details.strip().splitlines()[-1]
    assert "the server refused the stream create of 'orders-billing'" in message
    assert "err_code 10065" in message and "nats stream ls --subject" in message
    assert "JetStreamApiError" not in err.value.details
    assert admin_call(server.url, lambda js: js.stream_info(STREAM)) is None


def test_unset_values_come_from_the_server_at_create_not_from_a_version_table(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    _, stream = host.up(S, stream_props())
    c_id, consumer = host.up(C, consumer_props("orders", stream["created"]))
    live = admin_call(server.url, lambda js: js.consumer_info(STREAM, "orders-workers"))
    assert consumer["unset"]["max_waiting"] == live["config"]["max_waiting"]
    assert stream["unset"]["deny_delete"] == stream_live(server.url)["config"]["deny_delete"]

    # State written against a server whose default max_waiting is 1000: no drift, no replace.
    other_default = {
        **consumer,
        "config": {**consumer["config"], "max_waiting": 1000},
        "unset": {**consumer["unset"], "max_waiting": 1000},
    }
    news = host.checked(C, consumer_props("orders", stream["created"]))
    assert host.diff(C, c_id, other_default, news).changes == "DIFF_NONE"
    # The same live value changed by hand after the create is still seen, and replaces.
    by_hand = {**consumer, "config": {**consumer["config"], "max_waiting": 1000}}
    outcome = host.diff(C, c_id, by_hand, news)
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == ["max_waiting"]


# -- adoption at preview: the check of a create says what the create will find ---------------------------
def test_the_preview_of_a_create_says_it_adopts_an_equal_stream_and_durable_made_by_hand(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    made = admin_call(server.url, lambda js: js.create_stream(rendered()))
    durable = consumer_config(parse_pairs([pair()]).pairs[0], "orders")
    admin_call(server.url, lambda js: js.create_consumer(STREAM, durable))
    inputs, failures = host.check(S, stream_props())
    assert failures == []
    assert inputs["adopts"] == (
        f"stream {STREAM!r} is on the server (created {made['created']}, 0 message(s)): equal to the spec; "
        "the create adopts it as is"
    )
    consumer, failures = host.check(C, consumer_props("orders", made["created"]))
    assert failures == [] and "the create adopts it as is" in consumer["adopts"]
    # nothing was written by the checks, and a durable that is not there is no adoption
    assert stream_live(server.url)["created"] == made["created"]
    billing, _ = host.check(C, consumer_props("billing", made["created"]))
    assert "adopts" not in billing
    # the adoption note is no difference once the object is under management
    _, stream = host.create(S, inputs)
    assert stream["adopted"] is True
    assert host.diff(S, STREAM, stream, host.checked(S, stream_props())).changes == "DIFF_NONE"


def test_the_preview_of_a_create_fails_where_the_create_would_refuse_the_object_it_finds(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    admin_call(server.url, lambda js: js.create_stream({**rendered(), "max_age": 3_600_000_000_000}))
    _, failures = host.check(S, stream_props())
    assert len(failures) == 1 and failures[0][0] == "config"
    assert f"stream {STREAM!r} already exists on the server with a different config" in failures[0][1]
    assert "max_age" in failures[0][1] and "adopt: true" in failures[0][1]
    # with adopt, the preview says what the create will change in place; still nothing written
    inputs, failures = host.check(S, stream_props(adopt=True))
    assert failures == [] and inputs["adopts"].endswith("the create adopts it and updates in place max_age")
    assert stream_live(server.url)["config"]["max_age"] == 3_600_000_000_000
    # a change the server cannot make in place is refused at preview even with adopt
    admin_call(server.url, lambda js: js.delete_stream(STREAM))
    admin_call(server.url, lambda js: js.create_stream({**rendered(), "storage": "memory"}))
    _, failures = host.check(S, stream_props(adopt=True))
    assert len(failures) == 1 and "cannot change storage" in failures[0][1], failures


def test_a_preview_without_the_server_checks_inputs_and_says_nothing_of_adoption(host: ProviderHost) -> None:
    dead = {"name": "gone", "servers": ["nats://127.0.0.1:9"]}
    inputs, failures = host.check(S, {**stream_props(), "connection": dead})
    assert failures == [] and "adopts" not in inputs


def test_the_check_of_a_replacement_does_not_take_the_object_it_replaces_for_one_to_adopt(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, stream = host.up(S, stream_props(allow_destroy_with_messages=True))
    news = host.checked(
        S, stream_props(allow_destroy_with_messages=True, stream_options={"storage": "memory"})
    )
    assert host.diff(S, id_, stream, news).replaces == ["config.storage"]
    # the engine then checks the replacement with no old inputs, as if it were new
    inputs, failures = host.check(S, news)
    assert failures == [] and "adopts" not in inputs
