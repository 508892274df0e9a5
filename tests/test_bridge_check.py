"""`jsb_infra.deploy.bridge_check` against a `PairStream` answered by the mock engine of test_program_mocks:
the bridges an app is given derive from the spec, and the check fails once the pair's consumers
report a live config that differs (provider semantics are tested live)."""

# ruff: noqa: F811  (the `monitor` fixture is imported from test_program_mocks and used as a parameter)
from __future__ import annotations

import json
from typing import Any

import pytest
from test_program_mocks import (  # noqa: F401  (monitor is a fixture)
    PAIR_STREAM_T,
    RecordingMonitor,
    monitor,
    resolved,
    run_program,
)

from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import consumer_config
from jsb_infra.deploy.bridge_check import BridgeMismatch, check_bridge_against_live, checked_bridges
from jsb_infra.deploy.providers.base import canonical_pair
from jsb_infra.deploy.providers.pair_stream import PairStream

PAIR = parse_pairs([{"stream": "orders-billing", "apps": ["orders", "billing"]}]).pairs[0]
SERVERS = ["nats://127.0.0.1:4222"]


def check_pair(monitor: RecordingMonitor) -> dict[str, Any]:
    """Register the pair's PairStream, derive its checked bridges, and wait for the check's verdict."""
    found: dict[str, Any] = {}

    async def check() -> None:
        pair_stream = PairStream("orders-billing", canonical_pair(PAIR))
        checked = checked_bridges(pair_stream, PAIR, SERVERS)
        found["bridges"] = checked.bridges
        found["verdict"] = await resolved(checked.check)

    run_program(check)
    return found


def test_bridges_derive_from_the_spec_and_the_check_passes_when_the_consumers_match(
    monitor: RecordingMonitor,
) -> None:
    found = check_pair(monitor)

    assert found["verdict"] == ("consumers match the bridges", False)
    assert found["bridges"] == {
        app: bridge_outputs(PAIR, app, SERVERS).model_dump(mode="json") for app in PAIR.apps
    }
    json.dumps(found["bridges"])  # a plain value: known at preview, exported as it is
    assert found["bridges"]["orders"]["consumer"]["ack_wait_ns"] == 1_000_000_000
    assert found["bridges"]["orders"]["consumer"]["max_deliver"] == 5
    assert found["bridges"]["billing"]["consume_subject"] == "orders.sync.billing"
    assert [r.name for r in monitor.of_type(PAIR_STREAM_T)] == ["orders-billing"]


@pytest.mark.parametrize(
    ("field", "live_value", "expected"),
    [
        ("max_deliver", 6, "max_deliver: bridge 5, server 6"),
        ("ack_wait", 2_000_000_000, "ack_wait_ns: bridge 1000000000, server 2000000000"),
        ("max_ack_pending", 10, "max_ack_pending: bridge 25000, server 10"),
        ("backoff", [1_000_000_000], "backoff_ns: bridge ["),
    ],
)
def test_the_check_fails_naming_the_field_a_live_consumer_differs_in(
    monitor: RecordingMonitor, field: str, live_value: Any, expected: str
) -> None:
    monitor.mocks.live_consumer = lambda stream, app, config: (
        {**config, field: live_value} if app == "billing" else config
    )

    with pytest.raises(BridgeMismatch) as err:
        check_pair(monitor)
    text = str(err.value)
    assert "consumer orders-billing/billing-workers" in text and "app billing" in text
    assert expected in text, text
    assert text.count(": bridge ") == 1  # only the field that differs
    assert "pulumi up --refresh" in text


def test_the_check_fails_when_a_consumer_is_missing_from_the_pairs_state(monitor: RecordingMonitor) -> None:
    monitor.mocks.live_consumer = lambda stream, app, config: None if app == "orders" else config

    with pytest.raises(BridgeMismatch) as err:
        check_pair(monitor)
    assert str(err.value) == (
        "consumer orders-billing/orders-workers of app orders is missing from the pair's state; "
        "run `pulumi up --refresh`"
    )
    [pair_stream] = monitor.of_type(PAIR_STREAM_T)
    assert set(monitor.state(pair_stream)["consumers"]) == {"billing"}


def test_a_live_config_compares_by_value_whatever_the_number_type() -> None:
    bridge = bridge_outputs(PAIR, "orders", SERVERS)
    live = consumer_config(PAIR, "orders")
    check_bridge_against_live(bridge, {**live, "max_deliver": float(live["max_deliver"])})  # floats: fine
    with pytest.raises(BridgeMismatch, match=r"max_deliver: bridge 5, server 9.*pulumi up --refresh"):
        check_bridge_against_live(bridge, {**live, "max_deliver": 9})
