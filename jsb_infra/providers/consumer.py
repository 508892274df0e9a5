"""The `Consumer` dynamic resource: an app's durable pull consumer, kept equal to `topology.consumer_config`.

Replaces (delete first) when its identity changes (durable name, stream, the stream incarnation
`stream_created`) or a policy the server cannot update (deliver, ack, replay); everything else
(max_deliver, ack_wait, backoff, max_ack_pending, filter subject) updates in place.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from jsb_infra import names
from jsb_infra.providers import settings
from jsb_infra.providers.base import (
    JsbProvider,
    ProviderError,
    adopt_decision,
    app_failures,
    canonical_pair,
    config_changes,
    is_unknown,
    pair_failures,
    parse_pair,
    plan_diff,
    restrict,
    with_defaults,
)
from jsb_infra.spec import Pair
from jsb_infra.topology import consumer_config

IMMUTABLE = {
    "durable_name": "app",
    "name": "app",
    "deliver_policy": "deliver_policy",
    "ack_policy": "ack_policy",
    "replay_policy": "replay_policy",
}
"""Consumer fields the server refuses to update (REFERENCE §3), among those jsb-infra renders.

The spec pins deliver all / ack explicit / replay instant, so today only a consumer adopted or
changed outside jsb-infra can differ in a policy; the diff still replaces it rather than fail."""

OPTIONAL_DEFAULTS: dict[str, Any] = {"backoff": []}
"""Keys the renderer may leave out, with the value that means "unset"."""


def desired_config(pair: Pair, app: str) -> dict[str, Any]:
    return with_defaults(consumer_config(pair, app), OPTIONAL_DEFAULTS)


def live_config(info: dict[str, Any], pair: Pair, app: str) -> dict[str, Any]:
    return restrict(info["config"], desired_config(pair, app).keys())


def consumer_id(stream: str, durable: str) -> str:
    return f"{stream}/{durable}"


def consumer_outputs(props: dict[str, Any], pair: Pair, app: str, info: dict[str, Any]) -> dict[str, Any]:
    """Every output, from what the server reported."""
    return {
        "pair": props["pair"],
        "app": app,
        "stream_created": props.get("stream_created"),
        "stream": info["stream_name"],
        "durable": info["name"],
        "config": live_config(info, pair, app),
        "created": info["created"],
    }


class ConsumerProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        pair, failures = pair_failures(news.get("pair"))
        failures += app_failures(pair, news.get("app"))
        created = news.get("stream_created")
        if created is not None and not is_unknown(created) and not isinstance(created, str):
            failures.append(pulumi.dynamic.CheckFailure("stream_created", "stream_created: must be text"))
        inputs = dict(news)
        if pair is not None:
            inputs["pair"] = canonical_pair(pair)
        return CheckResult(inputs, failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        pair = parse_pair(news["pair"])
        old_pair = parse_pair(olds["pair"])
        app = news["app"]
        return plan_diff(
            desired_config(pair, app),
            olds.get("config") or {},
            immutable=IMMUTABLE,
            identity={
                "pair.stream": (old_pair.stream, pair.stream),
                "app": (olds.get("app"), app),
                "stream_created": (olds.get("stream_created"), news.get("stream_created")),
            },
        ).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        pair, app = parse_pair(props["pair"]), props["app"]
        info = self.run(_create_or_adopt(pair, app))
        return CreateResult(consumer_id(pair.stream, info["name"]), consumer_outputs(props, pair, app, info))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if "pair" not in props:
            return ReadResult("", {})
        pair, app = parse_pair(props["pair"]), props["app"]
        info = self.run(_info(pair.stream, names.durable_name(app)))
        if info is None:
            return ReadResult("", {})
        return ReadResult(id_, consumer_outputs(props, pair, app, info))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        pair, app = parse_pair(news["pair"]), news["app"]
        info = self.run(_update(pair, app))
        return UpdateResult(consumer_outputs(news, pair, app, info))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        pair = parse_pair(props["pair"])
        self.run(_delete(pair.stream, names.durable_name(props["app"])))


async def _info(stream: str, durable: str) -> dict[str, Any] | None:
    async with settings.admin_session() as js:
        return await js.consumer_info(stream, durable)


async def _create_or_adopt(pair: Pair, app: str) -> dict[str, Any]:
    durable = names.durable_name(app)
    async with settings.admin_session() as js:
        existing = await js.consumer_info(pair.stream, durable)
        if existing is None:
            await js.create_consumer(pair.stream, consumer_config(pair, app))
        elif adopt_decision(
            "consumer",
            f"{pair.stream}/{durable}",
            desired_config(pair, app),
            live_config(existing, pair, app),
            adopt=pair.adopt,
            immutable=IMMUTABLE,
        ):
            await js.update_consumer(pair.stream, consumer_config(pair, app))
        info = await js.consumer_info(pair.stream, durable)
    if info is None:
        raise ProviderError(f"consumer {pair.stream}/{durable} vanished right after it was written")
    return info


async def _update(pair: Pair, app: str) -> dict[str, Any]:
    durable = names.durable_name(app)
    async with settings.admin_session() as js:
        existing = await js.consumer_info(pair.stream, durable)
        if existing is None:
            raise ProviderError(
                f"consumer {pair.stream}/{durable} no longer exists on the server; run `pulumi refresh` "
                "and the next `pulumi up` recreates it"
            )
        if config_changes(desired_config(pair, app), live_config(existing, pair, app)):
            await js.update_consumer(pair.stream, consumer_config(pair, app))
        info = await js.consumer_info(pair.stream, durable)
    if info is None:
        raise ProviderError(f"consumer {pair.stream}/{durable} vanished right after it was written")
    return info


async def _delete(stream: str, durable: str) -> None:
    async with settings.admin_session() as js:
        await js.delete_consumer(stream, durable)


class Consumer(Resource, module="jsb", name="Consumer"):
    """`app`'s durable on the pair's stream. Outputs: stream, durable, config (live), created."""

    stream: pulumi.Output[str]
    durable: pulumi.Output[str]
    config: pulumi.Output[dict[str, Any]]
    created: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        pair: pulumi.Input[dict[str, Any]],
        app: pulumi.Input[str],
        stream_created: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "pair": pair,
            "app": app,
            "stream_created": stream_created,
            "stream": None,
            "durable": None,
            "config": None,
            "created": None,
        }
        super().__init__(ConsumerProvider(), resource_name, props, opts)
