"""`AppPair`: what one pair needs on the server, as one Pulumi component (type `jsb:index:AppPair`).

Children: the stream (protected unless told otherwise; names are fixed, so replacements delete
first) and each app's durable consumer (tied to the stream incarnation through `stream_created`, and
protected with the stream: removing a pair must not delete the durables its apps read from, which on
an interest stream also drops their messages). The apps' identities and the account layout span
pairs, so the program creates them (one per app, one per deployment).

Outputs: `bridges`, derived from the spec (known at preview, so a review sees every change of what an
app is told), and checked against the consumers' live config once known: an `up` whose server holds
something else than the bridge says fails loudly instead of handing apps a wrong bridge.
"""

from __future__ import annotations

from typing import Any

import pulumi

from jsb_infra.nats_admin import normalize
from jsb_infra.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.providers.consumer import Consumer
from jsb_infra.providers.stream import Stream
from jsb_infra.spec import Pair

COMPONENT_TYPE = "jsb:index:AppPair"


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


class AppPair(pulumi.ComponentResource):
    stream: Stream
    consumers: dict[str, Consumer]
    bridges: pulumi.Output[dict[str, Any]]
    bridge_check: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        pair: Pair,
        servers: list[str],
        opts: pulumi.ResourceOptions | None = None,
        protect: bool | None = None,
    ) -> None:
        """`protect` overrides `pair.protect` for the stream and the consumers (None: follow the spec)."""
        super().__init__(COMPONENT_TYPE, name, None, opts)
        spec = pair.model_dump(mode="json")
        child = pulumi.ResourceOptions(parent=self)
        protected = pair.protect if protect is None else protect

        self.stream = Stream(
            f"{name}-stream",
            spec,
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(protect=protected, delete_before_replace=True)
            ),
        )
        self.consumers = {}
        for app in pair.apps:
            self.consumers[app] = Consumer(
                f"{name}-{app}-consumer",
                spec,
                app,
                stream_created=self.stream.created,
                opts=pulumi.ResourceOptions.merge(
                    child,
                    pulumi.ResourceOptions(
                        protect=protected, depends_on=[self.stream], delete_before_replace=True
                    ),
                ),
            )

        derived = {app: bridge_outputs(pair, app, servers) for app in pair.apps}
        # Known at preview: a plain value, not waiting for any resource.
        self.bridges = pulumi.Output.from_input(
            {app: bridge.model_dump(mode="json") for app, bridge in derived.items()}
        )
        # Once the consumers are known (during `up`), a server that disagrees with a bridge fails the run.
        self.bridge_check = pulumi.Output.all(
            *(self._checked(consumer, derived[app]) for app, consumer in self.consumers.items())
        ).apply(lambda _: "consumers match the bridges")
        self.register_outputs({"bridges": self.bridges, "bridge_check": self.bridge_check})

    @staticmethod
    def _checked(consumer: Consumer, bridge: BridgeOutputs) -> pulumi.Output[None]:
        def check(live: dict[str, Any]) -> None:
            check_bridge_against_live(bridge, live)

        return consumer.config.apply(check)
