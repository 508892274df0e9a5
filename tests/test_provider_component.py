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
        bridges, verdict = args
        types = sorted(r.typ.rsplit(":", 1)[-1] for r in mocks.registered)
        assert types == sorted(["AppPair", "Stream", "Consumer", "Consumer"])
        stream = next(r for r in mocks.registered if r.typ.endswith("jsb:Stream"))
        assert stream.custom
        assert bridges["orders"]["consumer"]["ack_wait_ns"] == 1_000_000_000
        assert bridges["orders"]["consumer"]["max_deliver"] == 5
        assert bridges["billing"]["consume_subject"] == "orders.sync.billing"
        consumer = next(r for r in mocks.registered if r.typ.endswith("jsb:Consumer"))
        assert consumer.inputs["stream_created"] == "t0"
        assert verdict == "consumers match the bridges"

    return pulumi.Output.all(component.bridges, component.bridge_check).apply(check)


def test_bridge_check_fails_loudly_when_the_server_differs() -> None:
    from jsb_infra.component import BridgeMismatch, check_bridge_against_live
    from jsb_infra.outputs import bridge_outputs

    bridge = bridge_outputs(PAIR, "orders", SERVERS)
    live = consumer_config(PAIR, "orders")
    check_bridge_against_live(bridge, {**live, "max_deliver": float(live["max_deliver"])})  # floats: fine
    with pytest.raises(BridgeMismatch, match=r"max_deliver: bridge 5, server 9.*pulumi up --refresh"):
        check_bridge_against_live(bridge, {**live, "max_deliver": 9})
