"""The PairStream provider (one pair's stream and durables as one resource) through the real
dynamic-provider host against a real nats-server.

Each test is one story told as the engine would: check, create, diff, update, read (a refresh),
delete; and each step is judged by what the server holds afterwards (streams, durables and their
configs and creation times, message counts), not by the provider's answers alone. The per-object
rules (adopt, read-modify-write, replace guards) are the Stream and Consumer providers' and are
tested with them; these tests prove the pair resource applies them part by part.
"""

from __future__ import annotations

from typing import Any

import pytest
from provider_host import (
    ProviderCallError,
    ProviderHost,
    admin_call,
    publish,
)

from jsb_infra.core import names
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.pair_stream import PairStreamProvider
from jsb_infra.local.server import LocalNatsServer

STREAM = "orders-billing"
P = PairStreamProvider()
INTEREST = {"stream_options": {"retention": "interest"}, "dlq": False}


def pair(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"stream": STREAM, "apps": ["orders", "billing"], "protect": False, **changes}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


def on_server(url: str) -> dict[str, Any]:
    """What the server holds for the pair: the stream's info and {durable: info} of its consumers."""

    async def go(js: Any) -> dict[str, Any]:
        info = await js.stream_info(STREAM)
        durables = {}
        if info is not None:
            for name in ("orders-workers", "billing-workers", "invoicing-workers", names.DLQ_KEEPER):
                found = await js.consumer_info(STREAM, name)
                if found is not None:
                    durables[name] = found
        return {"stream": info, "consumers": durables}

    return admin_call(url, go)


def test_create_makes_the_stream_its_keeper_and_both_durables_then_updates_consumers_in_place(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, {"pair": pair()})
    assert id_ == STREAM
    held = on_server(server.url)
    assert held["stream"]["config"]["subjects"] == outs["stream"]["config"]["subjects"]
    assert set(held["consumers"]) == {"orders-workers", "billing-workers", names.DLQ_KEEPER}
    assert set(outs["consumers"]) == {"orders", "billing"}
    for app, entry in outs["consumers"].items():
        live = held["consumers"][names.durable_name(app)]
        assert entry["config"]["max_deliver"] == live["config"]["max_deliver"] == 5
        assert entry["created"] == live["created"] and entry["durable"] == names.durable_name(app)
    assert "pair" not in outs["stream"] and all("pair" not in c for c in outs["consumers"].values())

    assert host.diff(P, id_, outs, host.checked(P, {"pair": pair()})).changes == "DIFF_NONE"

    # a consumer setting: an in-place update of both durables; the stream is not touched
    changed = pair(consumer={"max_deliver": 7, "backoff": ["1s", "5s"]})
    outcome, new_outs = host.change(P, id_, outs, {"pair": changed})
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    after = on_server(server.url)
    assert after["stream"]["created"] == held["stream"]["created"]
    for app in ("orders", "billing"):
        durable = names.durable_name(app)
        assert after["consumers"][durable]["config"]["max_deliver"] == 7
        assert after["consumers"][durable]["created"] == held["consumers"][durable]["created"], (
            "not recreated"
        )
        assert new_outs["consumers"][app]["config"]["max_deliver"] == 7
    assert new_outs["pair"]["consumer"]["max_deliver"] == 7


def test_a_consumer_the_server_cannot_update_is_recreated_inside_the_update_and_guarded(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    """memory_storage cannot change in place: the durable is deleted and created again, within the
    pair's update. On an interest stream its unread messages would go with it: refused at preview
    until the stored pair allows it."""
    id_, outs = host.up(P, {"pair": pair(**INTEREST)})
    publish(server.url, "billing.sync.orders", 3)
    before = on_server(server.url)
    to_memory = {"consumer_overrides": {"orders": {"memory_storage": True}}}

    with pytest.raises(ProviderCallError) as err:
        host.diff(P, id_, outs, host.checked(P, {"pair": pair(**INTEREST, **to_memory)}))
    assert "refusing to replace consumer 'orders-workers'" in err.value.details
    assert "3 message(s) would be dropped" in err.value.details
    held = on_server(server.url)
    assert held["consumers"]["orders-workers"]["created"] == before["consumers"]["orders-workers"]["created"]
    assert held["stream"]["state"]["messages"] == 3

    # store the opt-in first (an in-place change), then make the change
    _, outs = host.change(P, id_, outs, {"pair": pair(**INTEREST, allow_destroy_with_messages=True)})
    outcome, outs = host.change(
        P, id_, outs, {"pair": pair(**INTEREST, allow_destroy_with_messages=True, **to_memory)}
    )
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == [], "the pair is updated, not replaced"
    after = on_server(server.url)
    orders = after["consumers"]["orders-workers"]
    assert orders["config"].get("mem_storage") is True
    assert orders["created"] != before["consumers"]["orders-workers"]["created"], "recreated"
    assert (
        after["consumers"]["billing-workers"]["created"] == before["consumers"]["billing-workers"]["created"]
    )
    assert after["stream"]["created"] == before["stream"]["created"]
    assert outs["consumers"]["orders"]["config"]["mem_storage"] is True


def test_an_app_leaving_loses_its_durable_and_a_durable_deleted_by_hand_comes_back(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, {"pair": pair()})

    # billing is replaced by invoicing: the stream's subjects change in place, durables follow
    renamed = pair(apps=["orders", "invoicing"])
    outcome, outs = host.change(P, id_, outs, {"pair": renamed})
    assert outcome.replaces == []
    held = on_server(server.url)
    assert set(held["consumers"]) == {"orders-workers", "invoicing-workers", names.DLQ_KEEPER}
    assert "invoicing.sync.orders" in held["stream"]["config"]["subjects"]
    assert set(outs["consumers"]) == {"orders", "invoicing"}

    # a durable deleted behind jsb-infra's back: a refresh records it gone, the next update recreates it
    admin_call(server.url, lambda js: js.delete_consumer(STREAM, "orders-workers"))
    _, refreshed = host.read(P, id_, outs)
    assert set(refreshed["consumers"]) == {"invoicing"}
    outcome, repaired = host.change(P, id_, refreshed, {"pair": renamed})
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert "orders-workers" in on_server(server.url)["consumers"]
    assert set(repaired["consumers"]) == {"orders", "invoicing"}
    assert host.diff(P, id_, repaired, host.checked(P, {"pair": renamed})).changes == "DIFF_NONE"


def test_an_app_leaving_an_interest_stream_with_unread_messages_is_refused_at_preview(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, {"pair": pair(**INTEREST)})
    publish(server.url, "orders.sync.billing", 2)
    with pytest.raises(ProviderCallError) as err:
        host.diff(P, id_, outs, host.checked(P, {"pair": pair(**INTEREST, apps=["orders", "invoicing"])}))
    assert "refusing to delete consumer 'billing-workers'" in err.value.details
    assert "2 message(s) would be dropped" in err.value.details
    held = on_server(server.url)
    assert "billing-workers" in held["consumers"] and held["stream"]["state"]["messages"] == 2


def test_a_stream_change_the_server_refuses_replaces_the_whole_pair_guarded_by_its_messages(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, {"pair": pair()})
    to_memory = pair(stream_options={"storage": "memory"})
    outcome = host.diff(P, id_, outs, host.checked(P, {"pair": to_memory}))
    assert outcome.replaces == ["pair.stream_options.storage"] and outcome.delete_before_replace

    publish(server.url, "orders.sync.billing", 1)
    with pytest.raises(ProviderCallError, match="refusing to replace stream 'orders-billing'"):
        host.diff(P, id_, outs, host.checked(P, {"pair": to_memory}))
    assert on_server(server.url)["stream"]["state"]["messages"] == 1

    # what the engine does for the replace: delete (guarded), then create
    with pytest.raises(ProviderCallError, match="still holds 1 message"):
        host.delete(P, id_, outs)
    assert len(on_server(server.url)["consumers"]) == 3, "nothing deleted"


def test_delete_removes_the_stream_with_its_durables_and_a_read_of_a_gone_stream_says_so(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    id_, outs = host.up(P, {"pair": pair()})
    host.delete(P, id_, outs)
    assert on_server(server.url)["stream"] is None
    assert host.read(P, id_, outs) == ("", {})


def test_create_after_a_create_that_failed_halfway_adopts_what_is_there(
    host: ProviderHost, server: LocalNatsServer
) -> None:
    """A create that stopped after the stream (the engine records nothing): the next create takes
    the equal stream and durables over instead of failing on them."""
    id_, first = host.up(P, {"pair": pair()})
    admin_call(server.url, lambda js: js.delete_consumer(STREAM, "billing-workers"))
    again_id, again = host.up(P, {"pair": pair()})
    assert again_id == id_ and again["stream"]["adopted"] is True
    assert again["stream"]["created"] == first["stream"]["created"]
    assert set(on_server(server.url)["consumers"]) == {"orders-workers", "billing-workers", names.DLQ_KEEPER}


def test_check_names_the_field_and_the_rule(host: ProviderHost) -> None:
    _, failures = host.check(P, {"pair": {**pair(), "apps": ["orders"]}})
    assert failures and failures[0][0] == "pair" and "apps" in failures[0][1]
