"""The `Consumer` dynamic resource: an app's durable pull consumer, kept equal to `topology.consumer_config`.

Replaces (delete first) when its identity changes (durable name, stream, the stream incarnation:
`stream_incarnation_key` of the pair, known at preview, and `stream_created` once known) or a field
the server cannot update (deliver/ack/replay policy, pull <-> push, max_waiting, mem_storage);
everything else (max_deliver, ack_wait, backoff, max_ack_pending, num_replicas, filter subject(s),
headers_only, inactive_threshold) updates in place, fields jsb-infra does not manage kept as the server
has them; create and a replica change return once the consumer's peers are current. On an interest
stream, deleting a consumer drops the messages only it was interested in: delete and replace refuse
that unless the pair allows destroying messages.
"""

from __future__ import annotations

import time
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from jsb_infra import replication
from jsb_infra.core import names
from jsb_infra.core.spec import Pair
from jsb_infra.core.topology import consumer_config
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import (
    JsbProvider,
    ProviderError,
    adopt_decision,
    announce,
    app_failures,
    canonical_pair,
    config_changes,
    existed_before,
    is_unknown,
    observed,
    pair_failures,
    parse_pair,
    plan_diff,
    read_modify_write,
    recorded_unset,
    stored_live,
    stored_pair,
    unset_values,
    with_defaults,
)
from jsb_infra.deploy.providers.stream import stream_incarnation_key
from jsb_infra.nats_admin import CONSUMER_ALREADY_EXISTS, JetStreamAdmin, JetStreamApiError

IMMUTABLE = {
    "durable_name": "app",
    "name": "app",
    "deliver_policy": "deliver_policy",
    "ack_policy": "ack_policy",
    "replay_policy": "replay_policy",
    "deliver_subject": "deliver_subject",
    "max_waiting": "max_waiting",
    "mem_storage": "mem_storage",
}
"""Consumer fields the server refuses to update (nats-server server/consumer.go,
`checkNewConsumerConfig`), among those jsb-infra manages.

The spec pins deliver all / ack explicit / replay instant and a default pull consumer, so only a
consumer adopted or changed outside jsb-infra can differ in these; the diff replaces it rather than
fail, and `adopt` refuses it. (A deliver_subject difference is always pull <-> push: desired is pull.)"""

OPTIONAL_DEFAULTS: dict[str, Any] = {
    "backoff": [],
    "deliver_subject": "",
    "headers_only": False,
    "inactive_threshold": 0,
    "mem_storage": False,
    "filter_subjects": [],
    "max_waiting": 512,
    "num_replicas": 0,
}
"""Keys the renderer leaves out, with the value that means "unset".

Compared, not sent: nats-server 2.15.1 gives a durable pull consumer max_waiting 512, reports
num_replicas 0 (follow the stream) when it was not given, and omits the others when unset, and an
update with the rendered config resets the mutable ones to these values."""


def desired_config(pair: Pair, app: str, unset: Any = None) -> dict[str, Any]:
    """The rendered config plus the unset values (`unset` as recorded at create, else OPTIONAL_DEFAULTS)."""
    return with_defaults(consumer_config(pair, app), unset_values(OPTIONAL_DEFAULTS, unset))


def live_config(info: dict[str, Any], pair: Pair, app: str) -> dict[str, Any]:
    return observed(info["config"], desired_config(pair, app))


def stream_recreated(old_pair: Pair, pair: Pair, old_created: Any, new_created: Any) -> bool:
    """Whether the stream this consumer lives on is (or was) recreated, which takes the consumer with it.

    Known at preview from the pair (a change that replaces the stream); at `up` also from the stream's
    `created`, when known on both sides (a stream recreated out of band). An unknown `created` alone is
    no change: the stream updating in place leaves its outputs unknown at preview, too.
    """
    if stream_incarnation_key(old_pair) != stream_incarnation_key(pair):
        return True
    if old_created is None or new_created is None or is_unknown(old_created) or is_unknown(new_created):
        return False
    return bool(old_created != new_created)


def interest_guard(
    pair: Pair, stream: str, durable: str, at_stake: int, action: str, because: str = ""
) -> None:
    if at_stake and not pair.allow_destroy_with_messages:
        raise ProviderError(
            f"refusing to {action} consumer {durable!r} on interest stream {stream!r}{because}: "
            f"{at_stake} message(s) would be dropped (on an interest stream a message only this consumer "
            "still wants goes with it). Let the app drain them, or set `allow_destroy_with_messages: true` "
            "on the pair (and run `pulumi up` once so the setting is stored) to accept losing them"
        )


def consumer_id(stream: str, durable: str) -> str:
    return f"{stream}/{durable}"


def consumer_outputs(
    props: dict[str, Any], pair: Pair, app: str, info: dict[str, Any], adopted: bool, unset: Any
) -> dict[str, Any]:
    """Every output, from what the server reported; `adopted`: it was on the server before the create;
    `unset`: the values the server gave the keys the renderer leaves out, as recorded at create."""
    return {
        "adopted": adopted,
        "unset": unset,
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
        old_pair = stored_pair(olds["pair"])
        app = news["app"]
        plan = plan_diff(
            desired_config(pair, app, olds.get("unset")),
            stored_live(olds.get("config"), unset_values(OPTIONAL_DEFAULTS, olds.get("unset"))),
            immutable=IMMUTABLE,
            identity={"pair.stream": (old_pair.stream, pair.stream), "app": (olds.get("app"), app)},
            inputs={  # delete reads the flag from state: it must be stored even when nothing else changes
                "pair.allow_destroy_with_messages": (
                    old_pair.allow_destroy_with_messages,
                    pair.allow_destroy_with_messages,
                )
            },
        )
        if "pair.stream" not in plan.replaces and stream_recreated(
            old_pair, pair, olds.get("stream_created"), news.get("stream_created")
        ):
            plan.replaces.append("stream_created")
        if plan.replaces:
            self._guard_replace(old_pair, pair, olds.get("app") or app, plan.replaces)
        return plan.result()

    def _guard_replace(self, old_pair: Pair, pair: Pair, old_app: str, replaces: list[str]) -> None:
        """Fail the preview, not the `up` halfway: the replace deletes the consumer first, and that
        delete sees only the stored pair."""
        durable = names.durable_name(old_app)
        at_stake = self.run(messages_at_stake(old_pair.stream, durable))
        because = f" (because {', '.join(replaces)} changed)"
        interest_guard(pair, old_pair.stream, durable, at_stake, "replace", because)
        if at_stake and not old_pair.allow_destroy_with_messages:
            raise ProviderError(
                f"refusing to replace consumer {durable!r} on interest stream {old_pair.stream!r}{because}: "
                f"{at_stake} message(s) would be dropped and the stored pair does not allow destroying "
                "them yet. Run `pulumi up` with `allow_destroy_with_messages: true` and the old settings "
                "first (an in-place update), then make this change"
            )

    def create(self, props: dict[str, Any]) -> CreateResult:
        pair, app = parse_pair(props["pair"]), props["app"]
        info, adopted = self.run(_create_or_adopt(pair, app))
        if adopted:
            announce(f"adopted consumer {pair.stream}/{info['name']}: it was already on the server")
        unset = recorded_unset(info["config"], consumer_config(pair, app), OPTIONAL_DEFAULTS)
        outputs = consumer_outputs(props, pair, app, info, adopted, unset)
        return CreateResult(consumer_id(pair.stream, info["name"]), outputs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if "pair" not in props:
            return ReadResult("", {})
        pair, app = stored_pair(props["pair"]), props["app"]
        info = self.run(_info(pair.stream, names.durable_name(app)))
        if info is None:
            return ReadResult("", {})
        outputs = consumer_outputs(props, pair, app, info, bool(props.get("adopted")), props.get("unset"))
        return ReadResult(id_, outputs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        pair, app = parse_pair(news["pair"]), news["app"]
        info = self.run(_update(pair, app, olds.get("unset")))
        outputs = consumer_outputs(news, pair, app, info, bool(olds.get("adopted")), olds.get("unset"))
        return UpdateResult(outputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        pair = stored_pair(props["pair"])
        self.run(_delete(pair, names.durable_name(props["app"])))


async def _info(stream: str, durable: str) -> dict[str, Any] | None:
    async with settings.admin_session() as js:
        return await js.consumer_info(stream, durable)


async def _create_or_adopt(pair: Pair, app: str) -> tuple[dict[str, Any], bool]:
    """Create first (one request, answered with the consumer's info); adopt only on a conflict.

    The server answers an existing consumer with an equal config with its info and refuses one that
    differs: only then is the live config read and compared. Returns the info and whether the
    consumer was adopted (it was there before the request)."""
    durable = names.durable_name(app)
    async with settings.admin_session() as js:
        sent = time.monotonic()
        try:
            info = await js.create_consumer(pair.stream, consumer_config(pair, app))
            existed = existed_before(info, time.monotonic() - sent)
            if not existed and pair.stream_options.replicas > 1:  # one replica: created is current
                timeout = settings.current().settle_timeout
                await replication.wait_for_consumer(js, pair.stream, durable, timeout, quorum_only=True)
            return info, existed
        except JetStreamApiError as err:
            if err.err_code != CONSUMER_ALREADY_EXISTS:
                raise
        existing = await js.consumer_info(pair.stream, durable)
        if existing is None:
            raise ProviderError(
                f"consumer {pair.stream}/{durable} was deleted while it was being adopted; "
                "run `pulumi up` again"
            )
        changes = adopt_decision(
            "consumer",
            f"{pair.stream}/{durable}",
            desired_config(pair, app),
            live_config(existing, pair, app),
            adopt=pair.adopt,
            immutable=IMMUTABLE,
        )
        if changes:
            config = read_modify_write(existing["config"], consumer_config(pair, app), changes)
            existing = await js.update_consumer(pair.stream, config)
        return existing, True


async def _update(pair: Pair, app: str, unset: Any) -> dict[str, Any]:
    durable = names.durable_name(app)
    async with settings.admin_session() as js:
        existing = await js.consumer_info(pair.stream, durable)
        if existing is None:
            raise ProviderError(
                f"consumer {pair.stream}/{durable} no longer exists on the server; run `pulumi refresh` "
                "and the next `pulumi up` recreates it"
            )
        changes = config_changes(desired_config(pair, app, unset), live_config(existing, pair, app))
        if not changes:
            return existing
        config = read_modify_write(existing["config"], consumer_config(pair, app), changes)
        info = await js.update_consumer(pair.stream, config)
        if "num_replicas" in changes:
            await replication.wait_for_consumer(js, pair.stream, durable, settings.current().settle_timeout)
            info = await js.consumer_info(pair.stream, durable) or info
        return info


async def messages_at_stake(stream: str, durable: str) -> int:
    async with settings.admin_session() as js:
        return await _at_stake(js, stream, durable)


async def _at_stake(js: JetStreamAdmin, stream: str, durable: str) -> int:
    """Messages deleting the consumer would drop: its pending and unacked ones, on an interest stream
    only (workqueue and limits streams keep their messages when a consumer goes)."""
    stream_info = await js.stream_info(stream)
    if stream_info is None or stream_info["config"].get("retention") != "interest":
        return 0
    info = await js.consumer_info(stream, durable)
    return 0 if info is None else int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))


async def _delete(pair: Pair, durable: str) -> None:
    async with settings.admin_session() as js:
        if not pair.allow_destroy_with_messages:  # else the guard cannot refuse: no need to look
            interest_guard(pair, pair.stream, durable, await _at_stake(js, pair.stream, durable), "delete")
        await js.delete_consumer(pair.stream, durable)


class Consumer(Resource, module="jsb", name="Consumer"):
    """`app`'s durable on the pair's stream. Outputs: stream, durable, config (live), created, adopted."""

    stream: pulumi.Output[str]
    durable: pulumi.Output[str]
    config: pulumi.Output[dict[str, Any]]
    created: pulumi.Output[str]
    adopted: pulumi.Output[bool]

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
            "adopted": None,
            "unset": None,
        }
        super().__init__(ConsumerProvider(), resource_name, props, opts)
