"""The bridges of a pair, checked against its consumers' live config.

`bridges` derive from the spec alone (known at preview). Once the `PairStream` reports its consumers
(during `up`), a server that holds something else than a bridge says fails the run loudly instead of
handing an app a wrong bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import Pair
from jsb_infra.deploy.providers.pair_stream import PairStream
from jsb_infra.nats_admin import normalize


class BridgeMismatch(RuntimeError):
    """The server's consumer does not run with the settings the bridge tells the app."""


def check_bridge_against_live(bridge: BridgeOutputs, live: dict[str, Any]) -> None:
    """Raise when the live consumer config differs from the bridge's consumer settings."""
    live = normalize(live)
    have = {
        "max_deliver": live.get("max_deliver"),
        "ack_wait_ns": live.get("ack_wait"),
        "backoff_ns": list(live.get("backoff") or []),
        "max_ack_pending": live.get("max_ack_pending"),
    }
    want = bridge.consumer.model_dump()
    differing = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
    if differing:
        raise BridgeMismatch(
            f"consumer {bridge.stream}/{bridge.durable} on the server differs from the bridge given to app "
            f"{bridge.app}: "
            + "; ".join(f"{k}: bridge {w!r}, server {h!r}" for k, (w, h) in differing.items())
            + ". Run `pulumi up --refresh` to repair the consumer"
        )


def checked_bridges(pair_stream: PairStream, pair: Pair, servers: list[str]) -> PairBridges:
    """The pair's bridges, derived from the spec (a plain value, known at preview, so a review sees
    every change of what an app is told), and a check that fails the `up` once the consumers' live
    config is known and differs from them."""
    derived = {app: bridge_outputs(pair, app, servers) for app in pair.apps}

    def check(consumers: dict[str, Any]) -> str:
        for app, bridge in derived.items():
            live = (consumers or {}).get(app)
            if live is None:
                raise BridgeMismatch(
                    f"consumer {bridge.stream}/{bridge.durable} of app {app} is missing from the pair's "
                    "state; run `pulumi up --refresh`"
                )
            check_bridge_against_live(bridge, live.get("config") or {})
        return "consumers match the bridges"

    return PairBridges(
        bridges={app: bridge.model_dump(mode="json") for app, bridge in derived.items()},
        check=pair_stream.consumers.apply(check),
    )


@dataclass(frozen=True)
class PairBridges:
    bridges: dict[str, Any]
    check: pulumi.Output[str]
