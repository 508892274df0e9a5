"""The deploy/app contract (`bridges`, `credentials`): what the program exports is what the client reads.

The last tests run the program (app-pair layout) under the mock engine of test_program_mocks and
check its stack outputs against the contract: the schema of each output and which are secret.
"""

# ruff: noqa: F811  (the `monitor` fixture is imported from test_program_mocks and used as a parameter)
from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
from pydantic import ValidationError
from test_program_mocks import (  # noqa: F401  (monitor is a fixture)
    CREDENTIAL_T,
    TWO_PAIRS,
    RecordingMonitor,
    monitor,
    resolved,
    run_program,
    set_stack_config,
)

from jsb_infra.core import topology
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.outputs import SCHEMA_VERSION, AppCredentials, BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import Pair
from jsb_infra.deploy.program import main

SERVERS = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]

GEM_PAIR = Pair.model_validate(
    {
        "stream": "orders-billing-sync",
        "apps": ["orders", "billing"],
        "consumer": {
            "max_deliver": 5,
            "backoff": ["1s", "5s", "15s", "30s", "60s"],
            "max_ack_pending": 25000,
        },
    }
)
NO_BACKOFF_NO_DLQ = Pair.model_validate(
    {
        "stream": "billing-shipping-sync",
        "apps": ["billing", "shipping"],
        "dlq": False,
        "consumer": {"max_deliver": 3, "ack_wait": "45s", "backoff": []},
        "consumer_overrides": {"shipping": {"max_ack_pending": 1000, "max_deliver": 7}},
    }
)


def _example_bridge() -> dict[str, Any]:
    return bridge_outputs(GEM_PAIR, "orders", SERVERS).model_dump(mode="json")


def test_bridge_outputs_round_trip_through_json() -> None:
    bridge = bridge_outputs(GEM_PAIR, "orders", SERVERS)
    text = bridge.model_dump_json()
    assert BridgeOutputs.model_validate_json(text) == bridge
    assert BridgeOutputs.model_validate(json.loads(text)) == bridge


def test_bridge_outputs_example_is_the_documented_one() -> None:
    """docs/outputs.md shows this exact object; a change here must change the docs (and maybe the version)."""
    assert _example_bridge() == {
        "schema_version": 1,
        "auto_provision": False,
        "servers": SERVERS,
        "stream": "orders-billing-sync",
        "app": "orders",
        "destination": "billing",
        "publish_subject": "orders.sync.billing",
        "consume_subject": "billing.sync.orders",
        "dlq_subject": "orders.sync.dlq",
        "durable": "orders-workers",
        "inbox_prefix": "_INBOX_orders",
        "consumer": {
            "max_deliver": 5,
            "ack_wait_ns": 1_000_000_000,
            "backoff_ns": [1_000_000_000, 5_000_000_000, 15_000_000_000, 30_000_000_000, 60_000_000_000],
            "max_ack_pending": 25000,
        },
    }


def test_app_credentials_round_trip_through_json() -> None:
    seed, public = new_user_keypair()
    creds = AppCredentials(public_key=public, seed=seed)
    again = AppCredentials.model_validate_json(creds.model_dump_json())
    assert again == creds
    assert again.seed.startswith("SU") and again.public_key.startswith("U")


def test_bridge_outputs_refuse_auto_provision_true() -> None:
    data = _example_bridge() | {"auto_provision": True}
    with pytest.raises(ValidationError) as err:
        BridgeOutputs.model_validate(data)
    assert err.value.errors()[0]["loc"] == ("auto_provision",)


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1, "1x"])
def test_bridge_outputs_refuse_unknown_schema_version(version: object) -> None:
    data = _example_bridge() | {"schema_version": version}
    with pytest.raises(ValidationError) as err:
        BridgeOutputs.model_validate(data)
    assert err.value.errors()[0]["loc"] == ("schema_version",)


@pytest.mark.parametrize(
    "missing", ["servers", "stream", "app", "publish_subject", "consume_subject", "durable", "inbox_prefix"]
)
def test_bridge_outputs_refuse_missing_fields(missing: str) -> None:
    data = _example_bridge()
    del data[missing]
    with pytest.raises(ValidationError) as err:
        BridgeOutputs.model_validate(data)
    assert err.value.errors()[0]["loc"] == (missing,)


def test_bridge_outputs_refuse_missing_consumer_setting_and_unknown_fields() -> None:
    data = _example_bridge()
    del data["consumer"]["ack_wait_ns"]
    with pytest.raises(ValidationError) as err:
        BridgeOutputs.model_validate(data)
    assert err.value.errors()[0]["loc"] == ("consumer", "ack_wait_ns")

    with pytest.raises(ValidationError) as err:
        BridgeOutputs.model_validate(_example_bridge() | {"stream_name": "typo"})
    assert err.value.errors()[0]["loc"] == ("stream_name",)


def test_app_credentials_refuse_missing_seed() -> None:
    with pytest.raises(ValidationError) as err:
        AppCredentials.model_validate({"public_key": "UABC"})
    assert err.value.errors()[0]["loc"] == ("seed",)


@pytest.mark.parametrize("pair", [GEM_PAIR, NO_BACKOFF_NO_DLQ], ids=["gem", "no-backoff-no-dlq"])
def test_bridge_outputs_equal_the_topology(pair: Pair) -> None:
    """What the app is told is exactly what the consumer is provisioned with (the gem only hoped so)."""
    stream = topology.stream_config(pair)
    for app in pair.apps:
        bridge = bridge_outputs(pair, app, SERVERS)
        consumer = topology.consumer_config(pair, app)
        other = pair.destination(app)
        assert bridge.stream == stream["name"] == pair.stream
        assert bridge.app == app and bridge.destination == other
        assert bridge.durable == consumer["durable_name"]
        assert bridge.consume_subject == consumer["filter_subject"]
        assert bridge.publish_subject == topology.consumer_config(pair, other)["filter_subject"]
        assert bridge.publish_subject in stream["subjects"]
        assert bridge.consume_subject in stream["subjects"]
        assert bridge.consumer.max_deliver == consumer["max_deliver"]
        assert bridge.consumer.ack_wait_ns == consumer["ack_wait"]
        assert bridge.consumer.backoff_ns == consumer.get("backoff", [])
        assert bridge.consumer.max_ack_pending == consumer["max_ack_pending"]
        assert bridge.servers == SERVERS


def test_bridge_outputs_follow_per_app_overrides_and_explicit_ack_wait() -> None:
    shipping = bridge_outputs(NO_BACKOFF_NO_DLQ, "shipping", SERVERS).consumer
    billing = bridge_outputs(NO_BACKOFF_NO_DLQ, "billing", SERVERS).consumer
    assert (shipping.max_ack_pending, shipping.max_deliver) == (1000, 7)
    assert (billing.max_ack_pending, billing.max_deliver) == (25000, 3)
    assert shipping.ack_wait_ns == billing.ack_wait_ns == 45_000_000_000
    assert shipping.backoff_ns == billing.backoff_ns == []


def test_dlq_subject_is_none_when_the_dlq_is_off() -> None:
    for app in NO_BACKOFF_NO_DLQ.apps:
        bridge = bridge_outputs(NO_BACKOFF_NO_DLQ, app, SERVERS)
        assert bridge.dlq_subject is None
        assert bridge.model_dump(mode="json")["dlq_subject"] is None
    assert bridge_outputs(GEM_PAIR, "billing", SERVERS).dlq_subject == "billing.sync.dlq"
    assert "billing.sync.dlq" in topology.stream_config(GEM_PAIR)["subjects"]


# -- the program's stack outputs against the contract ---------------------------------------------------
def program_outputs(monitor: RecordingMonitor) -> dict[str, tuple[Any, bool]]:
    """Run `main` on TWO_PAIRS with SERVERS; {output: (value, secret)} as the stack exports them."""
    set_stack_config(TWO_PAIRS, SERVERS)
    exported: dict[str, tuple[Any, bool]] = {}

    async def check() -> None:
        main()
        stack = pulumi.runtime.get_root_resource()
        assert stack is not None
        for key, value in stack.outputs.items():  # type: ignore[attr-defined]
            exported[key] = await resolved(value)

    run_program(check)
    return exported


def test_the_programs_outputs_are_the_documented_set_and_only_credentials_is_secret(
    monitor: RecordingMonitor,
) -> None:
    exported = program_outputs(monitor)
    assert {key: secret for key, (_, secret) in exported.items()} == {
        "layout": False,
        "bridges": False,
        "credentials": True,
        "permissions": False,
        "accounts_conf": False,
        "documents": False,
    }
    assert exported["layout"][0] == "app-pair"
    assert isinstance(exported["accounts_conf"][0], str) and isinstance(exported["documents"][0], list)


def test_every_exported_bridge_and_credential_validates_against_the_contract(
    monitor: RecordingMonitor,
) -> None:
    exported = program_outputs(monitor)
    bridges, credentials = exported["bridges"][0], exported["credentials"][0]
    for raw in TWO_PAIRS:
        pair = Pair.model_validate(raw)
        assert set(bridges[pair.stream]) == set(pair.apps)
        for app in pair.apps:
            bridge = BridgeOutputs.model_validate(bridges[pair.stream][app])
            assert bridge == bridge_outputs(pair, app, SERVERS)
            assert bridge.schema_version == SCHEMA_VERSION and bridge.auto_provision is False
    keys = {r.inputs["app"]: monitor.state(r)["public_key"] for r in monitor.of_type(CREDENTIAL_T)}
    assert set(credentials) == set(keys) == {"orders", "billing", "shipping"}
    for app, entry in credentials.items():
        creds = AppCredentials.model_validate(entry)
        assert creds.public_key == keys[app] and creds.seed.startswith("SU")
        assert creds.account == f"APP_{app}" and creds.creds is None  # config mode: no .creds
