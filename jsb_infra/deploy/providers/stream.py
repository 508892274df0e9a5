"""The `Stream` dynamic resource: one JetStream stream per pair, kept equal to `topology.stream_config`.

Replaces (delete first) on name, storage, and retention to or from workqueue (`stream_incarnation_key`),
and when a field the server cannot reset was set by hand (sealed, mirror, deny_delete, deny_purge,
allow_msg_ttl); updates everything else in place, sending the live config with the managed fields laid
over it (fields jsb-infra does not manage stay as they are). Replicas and placement change in place
(the server scales or moves the stream); create and such an update return only once the stream and its
consumers report their peers current (`jsb_infra.replication`). Refuses to destroy a
stream that still holds messages unless the pair sets `allow_destroy_with_messages`.
"""

from __future__ import annotations

import time
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from jsb_infra import replication
from jsb_infra.core import names
from jsb_infra.core.spec import Pair
from jsb_infra.core.topology import dlq_keeper_config, stream_config
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import (
    Changes,
    JsbProvider,
    ProviderError,
    Transitions,
    adopt_decision,
    announce,
    canonical_pair,
    config_changes,
    existed_before,
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
from jsb_infra.nats_admin import (
    CONSUMER_ALREADY_EXISTS,
    STREAM_NAME_IN_USE,
    JetStreamAdmin,
    JetStreamApiError,
)

IMMUTABLE = {
    "name": "pair.stream",
    "storage": "pair.stream_options.storage",
    "retention": "pair.stream_options.retention",
    "sealed": "sealed",
    "mirror": "mirror",
    "deny_delete": "deny_delete",
    "deny_purge": "deny_purge",
    "allow_msg_ttl": "allow_msg_ttl",
}
"""Stream fields the server refuses to update (nats-server server/stream.go,
`configUpdateCheckLocked`), among those jsb-infra manages.

The spec never sets the last five, so only a stream sealed, mirrored or locked by hand differs
there, always in the direction the server refuses (true -> false, mirror -> none): a replace."""

IN_PLACE: Transitions = {"retention": frozenset({("limits", "interest"), ("interest", "limits")})}
"""The one immutable-field change the server does allow in place."""

OPTIONAL_DEFAULTS: dict[str, Any] = {
    "description": "",
    "sealed": False,
    "no_ack": False,
    "max_msgs_per_subject": -1,
    "mirror": None,
    "sources": [],
    "deny_delete": False,
    "deny_purge": False,
    "allow_msg_ttl": False,
    "placement": None,
}
"""Keys the renderer leaves out, with the value that means "unset" (None: absent).

Compared, not sent: an update sends the rendered config and the server resets these to exactly
these values (nats-server 2.15.1 reports max_msgs_per_subject -1 and the booleans false, and omits
no_ack, mirror and sources), so a default stream shows no difference. `placement` is managed so that
one set by hand shows as drift (and the next update, which sends the spec's, clears it visibly)."""


def desired_config(pair: Pair, unset: Any = None) -> dict[str, Any]:
    """The config compared with the server's (the renderer's output plus explicit unset values:
    `unset` as recorded at create, else OPTIONAL_DEFAULTS)."""
    return with_defaults(stream_config(pair), unset_values(OPTIONAL_DEFAULTS, unset))


def live_config(info: dict[str, Any], pair: Pair) -> dict[str, Any]:
    return observed(info["config"], desired_config(pair))


def stream_incarnation_key(pair: Pair) -> str:
    """What identifies one incarnation of the pair's stream: it changes exactly when a change of the
    pair replaces the stream (name, storage, retention to or from workqueue).

    Consumers compare it to know at preview, when the stream's `created` is still unknown, whether
    the stream they live on is about to be recreated (and they with it)."""
    opts = pair.stream_options
    retention = "workqueue" if opts.retention == "workqueue" else "limits|interest"
    return f"{pair.stream}/{opts.storage}/{retention}"


def stream_outputs(
    pair_input: Any, pair: Pair, info: dict[str, Any], adopted: bool, unset: Any, dlq_keeper: bool
) -> dict[str, Any]:
    """Every output, from what the server reported (never from what was sent); `adopted`: the stream
    was on the server before jsb-infra's first create; `unset`: the values the server gave the keys
    the renderer leaves out, as recorded at create; `dlq_keeper`: the durable holding the DLQ messages
    is on the stream."""
    return {
        "adopted": adopted,
        "dlq_keeper": dlq_keeper,
        "unset": unset,
        "pair": pair_input,
        "name": info["config"]["name"],
        "config": live_config(info, pair),
        "created": info["created"],
        "messages": int(info["state"]["messages"]),
    }


def destroy_guard(pair: Pair, messages: int, action: str, because: str = "", name: str | None = None) -> None:
    """Refuse to lose messages unless `pair` allows it; `name`: the stream at stake (default: the pair's)."""
    stream = name or pair.stream
    if messages and not pair.allow_destroy_with_messages:
        raise ProviderError(
            f"refusing to {action} stream {stream!r}{because}: it still holds {messages} message(s). "
            "Drain it, or set `allow_destroy_with_messages: true` on the pair (and run `pulumi up` once "
            "so the setting is stored) to accept losing them"
        )


class StreamProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        pair, failures = pair_failures(news.get("pair"))
        inputs = dict(news)
        if pair is not None:
            inputs["pair"] = canonical_pair(pair)
        return CheckResult(inputs, failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        pair = parse_pair(news["pair"])
        old_pair = stored_pair(olds["pair"])
        plan = plan_diff(
            desired_config(pair, olds.get("unset")),
            stored_live(olds.get("config"), unset_values(OPTIONAL_DEFAULTS, olds.get("unset"))),
            immutable=IMMUTABLE,
            in_place=IN_PLACE,
            inputs={
                "pair.allow_destroy_with_messages": (
                    old_pair.allow_destroy_with_messages,
                    pair.allow_destroy_with_messages,
                ),
                # state from before the keeper existed has no key: no keeper there yet
                "dlq_keeper": (bool(olds.get("dlq_keeper", False)), pair.dlq),
            },
        )
        if plan.replaces:
            self._guard_replace(old_pair, pair, plan.replaces)
        return plan.result()

    def _guard_replace(self, old_pair: Pair, pair: Pair, replaces: list[str]) -> None:
        """Fail the preview, not the `up` halfway: a replace deletes the stream and its messages."""
        messages = self.run(_message_count(old_pair.stream))
        because = f" (because {', '.join(replaces)} changed)"
        destroy_guard(pair, messages, "replace", because, name=old_pair.stream)
        if messages and not old_pair.allow_destroy_with_messages:
            raise ProviderError(
                f"refusing to replace stream {old_pair.stream!r}{because}: it holds "
                f"{messages} message(s) and the stored pair does not allow destroying them yet. Run "
                "`pulumi up` with `allow_destroy_with_messages: true` and the old settings first "
                "(an in-place update), then make this change"
            )

    def create(self, props: dict[str, Any]) -> CreateResult:
        pair = parse_pair(props["pair"])
        info, adopted = self.run(_create_or_adopt(pair))
        if adopted:
            announce(f"adopted stream {pair.stream!r}: it was already on the server")
        unset = recorded_unset(info["config"], stream_config(pair), OPTIONAL_DEFAULTS)
        outputs = stream_outputs(props["pair"], pair, info, adopted, unset, dlq_keeper=pair.dlq)
        return CreateResult(pair.stream, outputs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        info, keeper = self.run(_read(id_))
        if info is None or "pair" not in props:
            return ReadResult("", {})
        pair = stored_pair(props["pair"])
        outputs = stream_outputs(
            props["pair"], pair, info, bool(props.get("adopted")), props.get("unset"), dlq_keeper=keeper
        )
        return ReadResult(id_, outputs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        pair = parse_pair(news["pair"])
        info = self.run(_update(pair, olds.get("unset")))
        outputs = stream_outputs(
            news["pair"], pair, info, bool(olds.get("adopted")), olds.get("unset"), dlq_keeper=pair.dlq
        )
        return UpdateResult(outputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        pair = stored_pair(props["pair"])
        self.run(_delete(id_, pair))


# -- server I/O (on the host's shared admin connection) -------------------------------------------
async def _info(name: str) -> dict[str, Any] | None:
    async with settings.admin_session() as js:
        return await js.stream_info(name)


async def _read(name: str) -> tuple[dict[str, Any] | None, bool]:
    """The stream's info, and whether its DLQ keeper is there."""
    async with settings.admin_session() as js:
        info = await js.stream_info(name)
        keeper = info is not None and await js.consumer_info(name, names.DLQ_KEEPER) is not None
        return info, keeper


async def ensure_dlq_keeper(js: JetStreamAdmin, pair: Pair) -> None:
    """The pair's DLQ keeper on its stream when the DLQ is on, and none when it is off."""
    config = dlq_keeper_config(pair)
    if config is None:
        await js.delete_consumer(pair.stream, names.DLQ_KEEPER)  # False when there was none
        return
    try:
        await js.create_consumer(pair.stream, config)  # an equal one is answered as created
    except JetStreamApiError as err:
        if err.err_code != CONSUMER_ALREADY_EXISTS:
            raise
        await js.update_consumer(pair.stream, config)


async def _message_count(name: str) -> int:
    info = await _info(name)
    return int(info["state"]["messages"]) if info else 0


async def _create_or_adopt(pair: Pair) -> tuple[dict[str, Any], bool]:
    """Create first (one request, answered with the stream's info); adopt only on a conflict.

    The server answers an existing stream with an equal config as if created, and refuses one that
    differs in anything, subject order included: only then is the live config read and compared
    field by field. Returns the info and whether the stream was adopted."""
    async with settings.admin_session() as js:
        sent = time.monotonic()
        try:
            info = await js.create_stream(stream_config(pair))
            existed = existed_before(info, time.monotonic() - sent)
            if not existed and pair.stream_options.replicas > 1:  # one replica: created is current
                timeout = settings.current().settle_timeout
                await replication.wait_for_stream(js, pair.stream, timeout, quorum_only=True)
            await ensure_dlq_keeper(js, pair)
            return info, existed
        except JetStreamApiError as err:
            if err.err_code != STREAM_NAME_IN_USE:
                raise
        existing = await js.stream_info(pair.stream)
        if existing is None:
            raise ProviderError(
                f"stream {pair.stream!r} was deleted while it was being adopted; run `pulumi up` again"
            )
        changes = adopt_decision(
            "stream",
            pair.stream,
            desired_config(pair),
            live_config(existing, pair),
            adopt=pair.adopt,
            immutable=IMMUTABLE,
            in_place=IN_PLACE,
        )
        if changes:
            existing = await _apply_update(js, existing, pair, changes)
        await ensure_dlq_keeper(js, pair)
        return existing, True


async def _update(pair: Pair, unset: Any) -> dict[str, Any]:
    async with settings.admin_session() as js:
        existing = await js.stream_info(pair.stream)
        if existing is None:
            raise ProviderError(
                f"stream {pair.stream!r} no longer exists on the server; run `pulumi refresh` "
                "and the next `pulumi up` recreates it"
            )
        changes = config_changes(desired_config(pair, unset), live_config(existing, pair))
        if changes:
            existing = await _apply_update(js, existing, pair, changes)
        await ensure_dlq_keeper(js, pair)
        return existing


async def _apply_update(
    js: JetStreamAdmin, existing: dict[str, Any], pair: Pair, changes: Changes
) -> dict[str, Any]:
    """Send the live config with the managed fields laid over it (the server treats an update as a
    replacement; fields jsb-infra does not manage stay as they are). A change of replicas or placement
    is waited for until the stream and its consumers report the new peers current. Returns the info."""
    config = read_modify_write(existing["config"], stream_config(pair), changes)
    await replication.update_stream(js, existing["config"], config, settings.current().settle_timeout)
    info = await js.stream_info(pair.stream)
    if info is None:
        raise ProviderError(
            f"stream {pair.stream!r} vanished right after it was written; run `pulumi up` again"
        )
    return info


async def _delete(name: str, pair: Pair) -> None:
    async with settings.admin_session() as js:
        if not pair.allow_destroy_with_messages:  # else the guard cannot refuse: no need to look
            info = await js.stream_info(name)
            if info is None:
                return
            destroy_guard(pair, int(info["state"]["messages"]), "delete")
        await js.delete_stream(name)


class Stream(Resource, module="jsb", name="Stream"):
    """A JetStream stream for one pair. Outputs: name, config (live), created, messages, adopted."""

    name: pulumi.Output[str]
    config: pulumi.Output[dict[str, Any]]
    created: pulumi.Output[str]
    messages: pulumi.Output[int]
    adopted: pulumi.Output[bool]

    def __init__(
        self,
        resource_name: str,
        pair: pulumi.Input[dict[str, Any]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "pair": pair,
            "name": None,
            "config": None,
            "created": None,
            "messages": None,
            "adopted": None,
            "unset": None,
        }
        super().__init__(StreamProvider(), resource_name, props, opts)
