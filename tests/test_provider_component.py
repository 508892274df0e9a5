"""AppPair wiring under Pulumi mocks: children, options, outputs (provider semantics are tested live)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pulumi
import pytest

from jsb_infra.spec import parse_pairs
from jsb_infra.topology import consumer_config

PAIR = parse_pairs([{"stream": "orders-billing", "apps": ["orders", "billing"]}]).pairs[0]
SERVERS = ["nats://127.0.0.1:4222"]


class Mocks(pulumi.runtime.Mocks):
    """Answers like the providers do: consumers report the server's config, credentials a key pair."""

    def __init__(self) -> None:
        self.registered: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.registered.append(args)
        outs = dict(args.inputs)
        if args.typ.endswith("jsb:Consumer"):
            live = consumer_config(PAIR, args.inputs["app"])
            outs.update(config={**live, "max_deliver": float(live["max_deliver"])}, created="t1")
        if args.typ.endswith("jsb:Stream"):
            outs.update(created="t0", name=PAIR.stream, messages=0, config={})
        if args.typ.endswith("jsb:AppCredential"):
            outs.update(public_key=f"U{args.inputs['app'].upper()}", seed=f"SU{args.inputs['app'].upper()}")
        if args.typ.endswith("jsb:PermissionDocument"):
            outs.update(claims={"pub": {"allow": []}}, conf=f"conf-{args.inputs['app']}", files=[])
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture
def mocks() -> Iterator[Mocks]:
    """pytest-asyncio tests that ran earlier leave the main thread without a current loop; mocks need one."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    m = Mocks()
    pulumi.runtime.set_mocks(m, project="jsb", stack="test", preview=False)
    yield m
    asyncio.set_event_loop(None)
    loop.close()


@pulumi.runtime.test
def test_app_pair_children_and_outputs(mocks: Mocks) -> Any:
    from jsb_infra.component import AppPair

    component = AppPair("orders-billing", PAIR, SERVERS)

    def check(args: list[Any]) -> None:
        bridges, creds, perms, creds_secret = args
        types = sorted(r.typ.rsplit(":", 1)[-1] for r in mocks.registered)
        assert types == sorted(
            ["AppPair"] + ["Stream"] + ["Consumer", "AppCredential", "PermissionDocument"] * 2
        )
        stream = next(r for r in mocks.registered if r.typ.endswith("jsb:Stream"))
        assert stream.custom
        assert bridges["orders"]["consumer"]["ack_wait_ns"] == 1_000_000_000
        assert bridges["orders"]["consumer"]["max_deliver"] == 5
        assert bridges["billing"]["consume_subject"] == "orders.sync.billing"
        assert creds == {
            "orders": {"public_key": "UORDERS", "seed": "SUORDERS"},
            "billing": {"public_key": "UBILLING", "seed": "SUBILLING"},
        }
        assert creds_secret is True
        assert perms["orders"]["conf"] == "conf-orders"
        consumer = next(r for r in mocks.registered if r.typ.endswith("jsb:Consumer"))
        assert consumer.inputs["stream_created"] == "t0"
        doc = next(r for r in mocks.registered if r.typ.endswith("jsb:PermissionDocument"))
        assert doc.inputs["public_key"].startswith("U")

    return pulumi.Output.all(
        component.bridges,
        component.credentials_output,
        component.permissions,
        pulumi.Output.from_input(component.credentials_output.is_secret()),
    ).apply(check)
