"""The Stream provider, driven through the real dynamic-provider host against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from provider_host import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    UNKNOWN,
    ProviderCallError,
    ProviderHost,
    admin_call,
    assert_no_secret,
    publish,
)
from pulumi.output import Unknown

from jsb_infra.core import names
from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import stream_config, stream_incarnation_key
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs
from jsb_infra.local.server import LocalNatsServer

STREAM = "orders-billing"


def pair(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"stream": STREAM, "apps": ["orders", "billing"], "dlq": False, "protect": False}
    spec.update(changes)
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


def inputs(**changes: Any) -> dict[str, Any]:
    """The Stream inputs the pair with `changes` renders (what the AppPair component registers)."""
    return stream_inputs(parse_pairs([pair(**changes)]).pairs[0])


P = StreamProvider()


def info(url: str, name: str = STREAM) -> dict[str, Any] | None:
    return admin_call(url, lambda js: js.stream_info(name))


def test_create_reads_back_and_a_rerun_is_a_no_op(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs())
    live = info(server.url)
    assert id_ == STREAM and live is not None
    assert outs["name"] == STREAM
    assert outs["created"] == live["created"]
    assert outs["messages"] == 0
    assert outs["config"]["subjects"] == ["orders.sync.billing", "billing.sync.orders"]
    assert outs["config"]["retention"] == "workqueue" and outs["config"]["storage"] == "file"
    assert set(outs["config"]) == set(stream_config(parse_pairs([pair()]).pairs[0])) | {
        "description",
        *MANAGED_UNSET,
    }
    outcome = host.diff(P, id_, outs, host.checked(P, inputs()))
    assert outcome.changes == "DIFF_NONE" and outcome.replaces == []


@pytest.mark.parametrize(
    ("field", "new_pair", "check"),
    [
        (
            "description",
            inputs(stream_options={"description": "orders <-> billing"}),
            ("description", "orders <-> billing"),
        ),
        ("max_age", inputs(stream_options={"max_age": "1h"}), ("max_age", 3600 * 10**9)),
        (
            "duplicate_window",
            inputs(stream_options={"duplicate_window": "30s"}),
            ("duplicate_window", 30 * 10**9),
        ),
        (
            "subjects (dlq on)",
            inputs(dlq=True),
            (
                "subjects",
                ["orders.sync.billing", "billing.sync.orders", "orders.sync.dlq", "billing.sync.dlq"],
            ),
        ),
        ("max_msgs", inputs(stream_options={"max_msgs": 1000}), ("max_msgs", 1000)),
    ],
)
def test_in_place_change_updates_and_keeps_messages(
    host: ProviderHost, server: LocalNatsServer, field: str, new_pair: dict[str, Any], check: tuple[str, Any]
) -> None:
    id_, outs = host.up(P, inputs())
    publish(server.url, "orders.sync.billing", 3)
    outcome, new_outs = host.change(P, id_, outs, new_pair)
    assert outcome.changes == "DIFF_SOME", field
    assert outcome.replaces == [] and not outcome.delete_before_replace
    key, value = check
    live = info(server.url)
    assert live is not None
    assert live["config"][key] == value and new_outs["config"][key] == value
    assert live["state"]["messages"] == 3 and new_outs["messages"] == 3
    assert new_outs["created"] == outs["created"], "an in-place update must not recreate the stream"
    assert new_outs["config"]["retention"] == "workqueue", "the whole config is sent, retention included"
    again = host.diff(P, id_, new_outs, host.checked(P, new_pair))
    assert again.changes == "DIFF_NONE"


def test_removing_the_description_is_a_change(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs(stream_options={"description": "temporary"}))
    outcome, new_outs = host.change(P, id_, outs, inputs())
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = info(server.url)
    assert live is not None and "description" not in live["config"]
    assert new_outs["config"].get("description", "") == ""


@pytest.mark.parametrize(
    ("before", "after", "replace_key"),
    [
        ({"storage": "file"}, {"storage": "memory"}, "config.storage"),
        ({"retention": "workqueue"}, {"retention": "limits"}, "config.retention"),
        ({"retention": "interest"}, {"retention": "workqueue"}, "config.retention"),
    ],
)
def test_server_immutable_fields_replace_delete_first(
    host: ProviderHost,
    server: LocalNatsServer,
    before: dict[str, Any],
    after: dict[str, Any],
    replace_key: str,
) -> None:
    id_, outs = host.up(P, inputs(stream_options=before))
    outcome = host.diff(P, id_, outs, host.checked(P, inputs(stream_options=after)))
    assert outcome.changes == "DIFF_SOME"
    assert outcome.replaces == [replace_key]
    assert outcome.delete_before_replace is True
    # and the engine's replacement (delete, then create) really lands the new setting
    host.delete(P, id_, outs)
    _, new_outs = host.up(P, inputs(stream_options=after))
    field, value = next(iter(after.items()))
    live = info(server.url)
    assert live is not None and live["config"][field] == value == new_outs["config"][field]


def test_stream_rename_replaces(host: ProviderHost) -> None:
    id_, outs = host.up(P, inputs())
    outcome = host.diff(P, id_, outs, host.checked(P, inputs(stream="renamed")))
    assert outcome.replaces == ["name"] and outcome.delete_before_replace


def test_limits_to_interest_is_in_place(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs(stream_options={"retention": "limits"}))
    outcome, new_outs = host.change(P, id_, outs, inputs(stream_options={"retention": "interest"}))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = info(server.url)
    assert live is not None and live["config"]["retention"] == "interest"
    assert new_outs["created"] == outs["created"]


def test_guard_refuses_replacing_a_stream_with_messages(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs())
    publish(server.url, "billing.sync.orders", 2)
    memory = {"storage": "memory"}
    with pytest.raises(ProviderCallError, match="still holds 2 message"):
        host.diff(P, id_, outs, host.checked(P, inputs(stream_options=memory)))
    # opting in together with the destructive change is refused too: the stored state must allow it first
    with pytest.raises(ProviderCallError, match="stored state does not allow"):
        host.diff(
            P,
            id_,
            outs,
            host.checked(P, inputs(stream_options=memory, allow_destroy_with_messages=True)),
        )
    # step 1: store the opt-in (an in-place update that touches nothing on the server)
    outcome, outs = host.change(P, id_, outs, inputs(allow_destroy_with_messages=True))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    # step 2: the replace is now accepted
    outcome = host.diff(
        P, id_, outs, host.checked(P, inputs(stream_options=memory, allow_destroy_with_messages=True))
    )
    assert outcome.replaces == ["config.storage"]
    live = info(server.url)
    assert live is not None and live["state"]["messages"] == 2, "the guard must not touch the stream"


def test_guard_refuses_deleting_a_stream_with_messages(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs())
    publish(server.url, "orders.sync.billing", 1)
    with pytest.raises(ProviderCallError, match="refusing to delete stream 'orders-billing'"):
        host.delete(P, id_, outs)
    assert info(server.url) is not None
    _, outs = host.change(P, id_, outs, inputs(allow_destroy_with_messages=True))
    host.delete(P, id_, outs)
    assert info(server.url) is None


def test_delete_cleans_the_server_and_tolerates_a_missing_stream(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, inputs())
    host.delete(P, id_, outs)
    assert info(server.url) is None
    host.delete(P, id_, outs)  # already gone: nothing to do


def test_adopt_an_equal_stream(host: ProviderHost, server: LocalNatsServer) -> None:
    desired = stream_config(parse_pairs([pair()]).pairs[0])
    made = admin_call(server.url, lambda js: js.create_stream(desired))
    publish(server.url, "orders.sync.billing", 2)
    id_, outs = host.up(P, inputs())
    assert id_ == STREAM
    assert outs["created"] == made["created"], "adopted, not recreated"
    assert outs["messages"] == 2


def test_adopt_refuses_a_different_stream_naming_each_field(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    other = {
        **stream_config(parse_pairs([pair()]).pairs[0]),
        "max_age": 7200 * 10**9,
        "description": "by hand",
    }
    admin_call(server.url, lambda js: js.create_stream(other))
    with pytest.raises(ProviderCallError) as err:
        host.up(P, inputs())
    assert "already exists on the server with a different config" in err.value.details
    assert "max_age: desired 0, server has 7200000000000" in err.value.details
    assert "description: desired '', server has 'by hand'" in err.value.details
    assert "adopt: true" in err.value.details
    live = info(server.url)
    assert live is not None and live["config"]["max_age"] == 7200 * 10**9, (
        "refusal must not change the stream"
    )


def test_adopt_true_updates_in_place(host: ProviderHost, server: LocalNatsServer) -> None:
    other = {**stream_config(parse_pairs([pair()]).pairs[0]), "max_age": 7200 * 10**9}
    made = admin_call(server.url, lambda js: js.create_stream(other))
    publish(server.url, "orders.sync.billing", 4)
    _, outs = host.up(P, inputs(adopt=True))
    live = info(server.url)
    assert live is not None and live["config"]["max_age"] == 0 == outs["config"]["max_age"]
    assert outs["created"] == made["created"] and live["state"]["messages"] == 4


def test_adopt_true_still_refuses_what_the_server_cannot_change(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    other = {**stream_config(parse_pairs([pair()]).pairs[0]), "storage": "memory"}
    admin_call(server.url, lambda js: js.create_stream(other))
    with pytest.raises(
        ProviderCallError, match=r"cannot adopt stream 'orders-billing'.*storage: desired 'file'"
    ):
        host.up(P, inputs(adopt=True))


def test_read_reports_an_out_of_band_change_and_the_next_up_fixes_it(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, inputs())
    drifted = {**stream_config(parse_pairs([pair()]).pairs[0]), "max_msgs": 50}
    admin_call(server.url, lambda js: js.update_stream(drifted))
    read_id, refreshed = host.read(P, id_, outs)
    assert read_id == id_ and refreshed["config"]["max_msgs"] == 50
    assert {k: refreshed[k] for k in INPUTS_BUT_CONFIG} == {k: outs[k] for k in INPUTS_BUT_CONFIG}, (
        "read keeps the inputs"
    )
    outcome, fixed = host.change(P, id_, refreshed, inputs())
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = info(server.url)
    assert live is not None and live["config"]["max_msgs"] == -1 == fixed["config"]["max_msgs"]


def test_read_reports_an_out_of_band_delete_as_gone(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs())
    admin_call(server.url, lambda js: js.delete_stream(STREAM))
    read_id, props = host.read(P, id_, outs)
    assert read_id == "" and props == {}
    _, again = host.up(P, inputs())  # the next up creates it anew
    assert info(server.url) is not None and again["created"] != outs["created"]


INPUTS_BUT_CONFIG = ("connection", "name", "dlq_keeper", "allow_destroy_with_messages", "adopt")


@pytest.mark.parametrize(
    ("change", "prop", "reason"),
    [
        ({"name": ""}, "name", "name: must be a non-empty stream name"),
        ({"name": "other"}, "config", "config.name: must equal name 'other'"),
        ({"config": ["not", "an", "object"]}, "config", "config: must be the rendered stream config"),
        ({"dlq_keeper": None}, "dlq_keeper", "dlq_keeper: must be an object"),
        ({"adopt": "yes"}, "adopt", "adopt: must be true or false"),
        ({"allow_destroy_with_messages": 1}, "allow_destroy_with_messages", "must be true or false"),
        ({"connection": {"servers": []}}, "connection", "connection.servers: must be a non-empty list"),
    ],
)
def test_check_names_the_property_and_the_rule(
    host: ProviderHost, change: dict[str, Any], prop: str, reason: str
) -> None:
    _, failures = host.check(P, {**inputs(), **change})
    assert [p for p, _ in failures] == [prop] and reason in failures[0][1]


def test_check_passes_unknowns_through_at_preview(host: ProviderHost) -> None:
    checked, failures = host.check(P, {**inputs(), "config": UNKNOWN, "connection": UNKNOWN})
    assert failures == [] and isinstance(checked["config"], Unknown)


def test_an_unknown_config_at_preview_is_an_update_and_a_new_connection_never_replaces(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, inputs())
    outcome = host.diff(P, id_, outs, {**host.checked(P, inputs()), "config": UNKNOWN})
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    named = {"name": "same", "servers": [server.url], "admin_config_key": "jsb:admin"}
    outcome, moved = host.change(P, id_, outs, {**inputs(), "connection": named})
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert moved["connection"] == named and moved["created"] == outs["created"]


def test_no_admin_secret_in_any_response_even_errors(host: ProviderHost, server: LocalNatsServer) -> None:
    id_, outs = host.up(P, inputs())
    publish(server.url, "orders.sync.billing", 1)
    host.read(P, id_, outs)
    with pytest.raises(ProviderCallError):
        host.delete(P, id_, outs)
    with pytest.raises(ProviderCallError):
        host.diff(P, id_, outs, host.checked(P, inputs(stream_options={"storage": "memory"})))
    assert len(host.transcript) >= 5
    assert_no_secret(host)


# -- fields jsb-infra does not render but manages: adopt and drift see them -------------------------
MANAGED_UNSET: dict[str, Any] = {
    "sealed": False,
    "no_ack": False,
    "sources": [],
    "deny_delete": False,
    "deny_purge": False,
    "allow_msg_ttl": False,
}
"""The managed keys and their unset values (`mirror` is unset when absent)."""

SOURCE = "upstream"


def rendered() -> dict[str, Any]:
    return stream_config(parse_pairs([pair()]).pairs[0])


def make_by_hand(url: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Create the pair's stream as someone with the NATS CLI might have, with `extra` set."""
    config = {**rendered(), **extra}
    if "mirror" in extra:
        config.pop("subjects")
    admin_call(url, lambda js: js.create_stream({"name": SOURCE, "subjects": ["upstream.>"]}))
    if config.get("sealed"):  # the server only seals through an update
        made = admin_call(url, lambda js: js.create_stream({**config, "sealed": False}))
        admin_call(url, lambda js: js.update_stream(config))
        return made  # type: ignore[no-any-return]
    return admin_call(url, lambda js: js.create_stream(config))  # type: ignore[no-any-return]


STREAM_MUTABLE_EXTRAS: list[tuple[dict[str, Any], str]] = [
    ({"no_ack": True}, "no_ack: desired False, server has True"),
    ({"max_msgs_per_subject": 10}, "max_msgs_per_subject: desired 10000, server has 10"),
    ({"sources": [{"name": SOURCE}]}, "sources: desired [], server has [{'name': 'upstream'}]"),
]
STREAM_IMMUTABLE_EXTRAS: list[tuple[dict[str, Any], str]] = [
    ({"sealed": True}, "sealed: desired False, server has True"),
    ({"mirror": {"name": SOURCE}}, "mirror: desired None, server has {'name': 'upstream'}"),
    ({"deny_delete": True}, "deny_delete: desired False, server has True"),
    ({"deny_purge": True}, "deny_purge: desired False, server has True"),
    ({"allow_msg_ttl": True}, "allow_msg_ttl: desired False, server has True"),
]


def test_create_outputs_the_managed_fields_with_their_unset_values(host: ProviderHost) -> None:
    _, outs = host.up(P, inputs())
    assert {k: outs["config"].get(k) for k in MANAGED_UNSET} == MANAGED_UNSET
    assert "mirror" not in outs["config"]


@pytest.mark.parametrize(("extra", "described"), STREAM_MUTABLE_EXTRAS + STREAM_IMMUTABLE_EXTRAS)
def test_adopt_refuses_a_stream_that_differs_in_a_field_jsb_does_not_render(
    host: ProviderHost, server: LocalNatsServer, extra: dict[str, Any], described: str
) -> None:
    make_by_hand(server.url, extra)
    with pytest.raises(ProviderCallError) as err:
        host.up(P, inputs())
    assert "stream 'orders-billing' already exists on the server with a different config" in err.value.details
    assert described in err.value.details


@pytest.mark.parametrize(("extra", "described"), STREAM_IMMUTABLE_EXTRAS)
def test_adopt_true_refuses_clearly_a_stream_field_the_server_cannot_reset(
    host: ProviderHost, server: LocalNatsServer, extra: dict[str, Any], described: str
) -> None:
    make_by_hand(server.url, extra)
    with pytest.raises(ProviderCallError) as err:
        host.up(P, inputs(adopt=True))
    assert "cannot adopt stream 'orders-billing'" in err.value.details and described in err.value.details
    assert "err_code" not in err.value.details, "refused before the server is asked"


@pytest.mark.parametrize(("extra", "described"), STREAM_MUTABLE_EXTRAS)
def test_adopt_true_resets_a_stream_field_jsb_does_not_render(
    host: ProviderHost, server: LocalNatsServer, extra: dict[str, Any], described: str
) -> None:
    made = make_by_hand(server.url, extra)
    id_, outs = host.up(P, inputs(adopt=True))
    live = info(server.url)
    assert live is not None and outs["created"] == made["created"]
    for key in extra:
        want = rendered().get(key, MANAGED_UNSET.get(key))
        assert live["config"].get(key, want) == want == outs["config"][key]
    assert host.diff(P, id_, outs, host.checked(P, inputs(adopt=True))).changes == "DIFF_NONE"


def test_refresh_sees_deny_delete_set_by_hand_and_the_diff_replaces(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, inputs())
    admin_call(server.url, lambda js: js.update_stream({**rendered(), "deny_delete": True}))
    _, refreshed = host.read(P, id_, outs)
    assert refreshed["config"]["deny_delete"] is True
    outcome = host.diff(P, id_, refreshed, host.checked(P, inputs()))
    assert outcome.replaces == ["deny_delete"] and outcome.delete_before_replace


def test_refresh_sees_max_msgs_per_subject_set_by_hand_and_up_resets_it_in_place(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, inputs())
    admin_call(server.url, lambda js: js.update_stream({**rendered(), "max_msgs_per_subject": 3}))
    _, refreshed = host.read(P, id_, outs)
    outcome, fixed = host.change(P, id_, refreshed, inputs())
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = info(server.url)
    bound = rendered()["max_msgs_per_subject"]
    assert live is not None and live["config"]["max_msgs_per_subject"] == bound
    assert fixed["config"]["max_msgs_per_subject"] == bound


def test_stream_state_written_before_the_managed_fields_existed_shows_no_diff(host: ProviderHost) -> None:
    id_, outs = host.up(P, inputs())
    older = {**outs, "config": {k: v for k, v in outs["config"].items() if k not in MANAGED_UNSET}}
    assert host.diff(P, id_, older, host.checked(P, inputs())).changes == "DIFF_NONE"


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [
        ({"storage": "file"}, {"storage": "memory"}, False),
        ({"retention": "workqueue"}, {"retention": "limits"}, False),
        ({"retention": "interest"}, {"retention": "workqueue"}, False),
        ({"retention": "limits"}, {"retention": "interest"}, True),
        ({"max_age": "1h"}, {"max_age": "2h", "description": "x", "max_msgs": 9}, True),
    ],
)
def test_incarnation_key_changes_exactly_when_the_stream_is_replaced(
    before: dict[str, Any], after: dict[str, Any], same: bool
) -> None:
    old, new = (inputs(stream_options=o)["config"] for o in (before, after))
    assert (stream_incarnation_key(old) == stream_incarnation_key(new)) is same
    renamed = inputs(stream="renamed")["config"]
    assert stream_incarnation_key(renamed) != stream_incarnation_key(inputs()["config"])


def keeper(url: str) -> dict[str, Any] | None:
    return admin_call(url, lambda js: js.consumer_info(STREAM, names.DLQ_KEEPER))


def test_the_dlq_keeper_follows_the_dlq_and_is_repaired_after_a_delete(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    """With the DLQ on the stream carries the keeper durable (it holds the dead letters against acks
    from other consumers); DLQ off removes it; deleted behind Pulumi's back, refresh shows it and the
    update puts it back."""
    id_, outs = host.up(P, inputs(dlq=True))
    live = keeper(server.url)
    assert outs["dlq_keeper_present"] is True and live is not None
    assert sorted(live["config"]["filter_subjects"]) == ["billing.sync.dlq", "orders.sync.dlq"]

    admin_call(server.url, lambda js: js.delete_consumer(STREAM, names.DLQ_KEEPER))
    _, refreshed = host.read(P, id_, outs)
    assert refreshed["dlq_keeper_present"] is False
    outcome, repaired = host.change(P, id_, refreshed, inputs(dlq=True))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert repaired["dlq_keeper_present"] is True and keeper(server.url) is not None

    outcome, off = host.change(P, id_, repaired, inputs(dlq=False))
    assert (
        outcome.replaces == []
        and off["dlq_keeper_present"] is False
        and off["dlq_keeper"] == {}
        and keeper(server.url) is None
    )


# -- bounding a stream that exists unbounded (an upgrade): in place, or a previewed, guarded change --
OLD_UNBOUNDED = {"max_bytes": -1, "max_msgs_per_subject": -1, "max_msg_size": -1, "discard": "old"}


def subject_counts(url: str) -> dict[str, int]:
    found = admin_call(url, lambda js: js.stream_info_subjects(STREAM, ">"))
    return {k: int(v) for k, v in (found["state"].get("subjects") or {}).items()}


def test_an_unbounded_stream_is_bounded_in_place_keeping_its_messages(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, inputs(stream_options=OLD_UNBOUNDED))
    publish(server.url, "orders.sync.billing", 5)
    outcome, updated = host.change(P, id_, outs, inputs())
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    live = info(server.url)
    assert live is not None and live["created"] == outs["created"], "updated in place, not replaced"
    want = stream_config(parse_pairs([pair()]).pairs[0])
    for key in ("max_bytes", "max_msgs_per_subject", "max_msg_size", "discard", "discard_new_per_subject"):
        assert live["config"][key] == want[key] == updated["config"][key], key
    assert subject_counts(server.url) == {"orders.sync.billing": 5}


def test_a_bound_that_would_delete_stored_messages_fails_the_preview(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    """The server deletes a subject's oldest messages at once when max_msgs_per_subject drops below its
    count, even with discard new: the preview refuses, naming the subject and the bound; allowed, the
    update really deletes them (the control: the guard is what kept them)."""
    id_, outs = host.up(P, inputs(stream_options=OLD_UNBOUNDED))
    publish(server.url, "orders.sync.billing", 7)
    bounded = {"max_msgs_per_subject": 4, "max_msg_size": 1024}
    with pytest.raises(ProviderCallError) as err:
        host.diff(P, id_, outs, host.checked(P, inputs(stream_options=bounded), outs))
    assert "orders.sync.billing holds 7 messages, max_msgs_per_subject 4" in err.value.details
    assert "allow_destroy_with_messages" in err.value.details
    with pytest.raises(ProviderCallError):  # the update itself checks again (no preview, or a race)
        host.update(P, id_, outs, host.checked(P, inputs(stream_options=bounded), outs))
    assert subject_counts(server.url) == {"orders.sync.billing": 7}, "nothing was written"

    allowed = inputs(stream_options=bounded, allow_destroy_with_messages=True)
    host.change(P, id_, outs, allowed)
    assert subject_counts(server.url) == {"orders.sync.billing": 4}, "the server deleted the oldest 3"


@pytest.mark.parametrize("limit", ["max_msgs", "max_bytes"])
def test_a_whole_stream_bound_with_discard_old_that_would_delete_messages_fails_the_preview(
    host: ProviderHost, server: LocalNatsServer, limit: str
) -> None:
    """With discard old, the server deletes the stream's oldest messages at once when max_msgs or
    max_bytes drops below what it holds: the preview and the update refuse, naming the bound; allowed,
    the update really deletes them (the control: the guard is what kept them)."""
    id_, outs = host.up(P, inputs(stream_options=OLD_UNBOUNDED))
    publish(server.url, "orders.sync.billing", 7)
    held = info(server.url)
    assert held is not None and held["state"]["bytes"] % 7 == 0, "seven messages of one size"
    bound = 4 if limit == "max_msgs" else held["state"]["bytes"] // 7 * 4  # what 4 of them take
    bounded = {**OLD_UNBOUNDED, limit: bound}
    unit = "messages" if limit == "max_msgs" else "bytes"
    refusal = f"the stream holds {held['state'][unit]} {unit}, {limit} {bound} with discard old"
    with pytest.raises(ProviderCallError) as err:
        host.diff(P, id_, outs, host.checked(P, inputs(stream_options=bounded), outs))
    assert refusal in err.value.details and "allow_destroy_with_messages" in err.value.details
    with pytest.raises(ProviderCallError) as err:  # the update itself checks again
        host.update(P, id_, outs, host.checked(P, inputs(stream_options=bounded), outs))
    assert refusal in err.value.details
    assert subject_counts(server.url) == {"orders.sync.billing": 7}, "nothing was written"

    allowed = inputs(stream_options=bounded, allow_destroy_with_messages=True)
    _, updated = host.change(P, id_, outs, allowed)
    assert updated["config"][limit] == bound
    assert subject_counts(server.url) == {"orders.sync.billing": 4}, "the server deleted the oldest 3"


def test_a_max_age_below_the_oldest_messages_age_fails_the_preview(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    """A lowered max_age expires every message older than it at once, whatever the discard policy: the
    preview and the update refuse, naming the oldest message's age and the bound; allowed, the server
    really expires them (the control: the guard is what kept them)."""
    id_, outs = host.up(P, inputs())
    publish(server.url, "orders.sync.billing", 3)
    time.sleep(2.2)
    aged = {"max_age": "1s", "duplicate_window": "1s"}
    with pytest.raises(ProviderCallError) as err:
        host.diff(P, id_, outs, host.checked(P, inputs(stream_options=aged), outs))
    assert re.search(r"the oldest message is [23]s old, max_age 1s", err.value.details), err.value.details
    with pytest.raises(ProviderCallError) as err:  # the update itself checks again
        host.update(P, id_, outs, host.checked(P, inputs(stream_options=aged), outs))
    assert "max_age 1s" in err.value.details
    assert subject_counts(server.url) == {"orders.sync.billing": 3}, "nothing was written"

    host.change(P, id_, outs, inputs(stream_options=aged, allow_destroy_with_messages=True))
    deadline = time.monotonic() + 5
    while (
        (held := info(server.url)) is not None and held["state"]["messages"] and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert held is not None and held["state"]["messages"] == 0, "the server expired all three"


@contextlib.contextmanager
def subject_count_requests(url: str) -> Iterator[list[str]]:
    """The `subjects_filter` of every STREAM.INFO asked for the stream while in the block, as an admin
    subscribed to the API subject sees the provider's requests."""
    seen: list[str] = []
    ready, stop = threading.Event(), threading.Event()

    async def spy() -> None:
        nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)

        async def note(msg: Any) -> None:
            seen.append((json.loads(msg.data) if msg.data else {}).get("subjects_filter", ""))

        await nc.subscribe(f"$JS.API.STREAM.INFO.{STREAM}", cb=note)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await nc.flush()
        await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(spy(),))
    thread.start()
    assert ready.wait(5)
    try:
        yield seen
    finally:
        time.sleep(0.1)  # the last requests reach the subscriber
        stop.set()
        thread.join()


def test_only_a_change_of_a_limit_counts_the_subjects(host: ProviderHost, server: LocalNatsServer) -> None:
    """A change that cannot delete messages by its limits (here the description) is diffed and written
    without the per-subject count; the control, a max_msgs change, still asks for it in both."""
    id_, outs = host.up(P, inputs())
    with subject_count_requests(server.url) as seen:
        _, outs = host.change(P, id_, outs, inputs(stream_options={"description": "the orders pair"}))
    assert ">" not in seen and seen, seen
    assert outs["config"]["description"] == "the orders pair"
    with subject_count_requests(server.url) as seen:
        _, outs = host.change(P, id_, outs, inputs(stream_options={"max_msgs": 1000}))
    assert seen.count(">") == 2, "the diff's and the update's guard"
    assert outs["config"]["max_msgs"] == 1000
