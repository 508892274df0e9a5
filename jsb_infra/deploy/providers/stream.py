"""The `Stream` dynamic resource: one JetStream stream, kept equal to its rendered config.

Inputs: `connection` (which servers and admin; a change reconnects, never replaces), `name`, `config`
(`topology.stream_config` of the pair, verbatim), `dlq_keeper` (`topology.dlq_keeper_config`, or {}
without a DLQ), `allow_destroy_with_messages` and `adopt`. Outputs echo them, except `config`, which is
the live config cut to the managed keys, plus `created`, `messages`, `adopted`, `unset` and
`dlq_keeper_present`.

Replaces (delete first) on name, storage, and retention to or from workqueue (`stream_incarnation_key`),
and when a field the server cannot reset was set by hand (sealed, mirror, deny_delete, deny_purge,
allow_msg_ttl); updates everything else in place, sending the live config with the managed fields laid
over it (fields jsb-infra does not manage stay as they are). Replicas and placement change in place
(the server scales or moves the stream); create and such an update return only once the stream and its
consumers report their peers current (`jsb_infra.replication`). Refuses to destroy a stream that still
holds messages unless `allow_destroy_with_messages` is stored.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    UpdateResult,
)

from jsb_infra import replication
from jsb_infra.core import names
from jsb_infra.core.durations import format_duration
from jsb_infra.core.spec import Pair
from jsb_infra.core.topology import (
    dlq_keeper_config,
    stream_config,
)
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import (
    Changes,
    JsbProvider,
    ProviderError,
    Transitions,
    adopt_decision,
    announce,
    being_replaced,
    bool_failures,
    carried_adoption_note,
    config_changes,
    existed_before,
    is_create,
    is_unknown,
    observed,
    old_state_error,
    plan_diff,
    preview_adoption,
    read_modify_write,
    recorded_unset,
    server_time,
    stored_live,
    unset_values,
    with_defaults,
)
from jsb_infra.nats_admin import (
    CONSUMER_ALREADY_EXISTS,
    STREAM_NAME_IN_USE,
    JetStreamAdmin,
    JetStreamApiError,
    normalize,
)

IMMUTABLE = {
    "name": "name",
    "storage": "config.storage",
    "retention": "config.retention",
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
    "discard_new_per_subject": False,
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


def desired_config(config: dict[str, Any], unset: Any = None) -> dict[str, Any]:
    """The config compared with the server's: the rendered config plus explicit unset values (`unset`
    as recorded at create, else OPTIONAL_DEFAULTS)."""
    return with_defaults(config, unset_values(OPTIONAL_DEFAULTS, unset))


def live_config(info: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return observed(info["config"], desired_config(config))


def stream_inputs(pair: Pair, connection: Any = None) -> dict[str, Any]:
    """The `Stream` inputs for `pair` (everything rendered by the pure core; known at preview);
    `connection`: a `Connection.as_input()` value (None: the stack config)."""
    return {
        "connection": connection if connection is not None else {"stack_config": True},
        "name": pair.stream,
        "config": dict(stream_config(pair)),
        "dlq_keeper": dict(dlq_keeper_config(pair) or {}),
        "allow_destroy_with_messages": pair.allow_destroy_with_messages,
        "adopt": pair.adopt,
    }


INPUT_KEYS = ("connection", "name", "config", "dlq_keeper", "allow_destroy_with_messages", "adopt")


@dataclass(frozen=True)
class StreamSpec:
    """The checked inputs of one stream, as the server I/O uses them."""

    connection: Any
    name: str
    config: dict[str, Any]
    dlq_keeper: dict[str, Any]
    allow_destroy_with_messages: bool
    adopt: bool

    @classmethod
    def of(cls, props: dict[str, Any]) -> StreamSpec:
        """From checked inputs, or from stored state (which holds the inputs echoed)."""
        config = normalize(props.get("config") or {})
        return cls(
            connection=props.get("connection"),
            name=str(props.get("name") or config.get("name") or ""),
            config=config,
            dlq_keeper=normalize(props.get("dlq_keeper") or {}),
            allow_destroy_with_messages=bool(props.get("allow_destroy_with_messages", False)),
            adopt=bool(props.get("adopt", False)),
        )

    @property
    def settle_timeout(self) -> float:
        return settings.for_connection(self.connection).settle_timeout


def stream_outputs(
    props: dict[str, Any], spec: StreamSpec, info: dict[str, Any], adopted: bool, unset: Any, keeper: bool
) -> dict[str, Any]:
    """Every output: the inputs echoed, and from what the server reported (never from what was sent)
    the live config cut to the managed keys, `created` and `messages`; `adopted`: the stream was on
    the server before jsb-infra's first create; `unset`: the values the server gave the keys the
    renderer leaves out, as recorded at create; `keeper`: the durable holding the DLQ messages is on
    the stream."""
    return {
        **{key: props.get(key) for key in INPUT_KEYS},
        "name": info["config"]["name"],
        "config": live_config(info, spec.config),
        "created": info["created"],
        "messages": int(info["state"]["messages"]),
        "adopted": adopted,
        "unset": unset,
        "dlq_keeper_present": keeper,
    }


def destroy_guard(allowed: bool, name: str, messages: int, action: str, because: str = "") -> None:
    """Refuse to lose messages unless `allowed` (the resource's allow_destroy_with_messages)."""
    if messages and not allowed:
        raise ProviderError(
            f"refusing to {action} stream {name!r}{because}: it still holds {messages} message(s). "
            "Drain it, or set `allow_destroy_with_messages: true` on the pair (and run `pulumi up` once "
            "so the setting is stored) to accept losing them"
        )


def limit_losses(info: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What writing `config` over the live stream (`info`, with `state.subjects` counted) would delete.

    Measured on nats-server 2.15.1: a lowered `max_msgs_per_subject` deletes each subject's oldest
    messages down to it at once, even with discard new; with discard old a lowered `max_bytes` or
    `max_msgs` deletes the oldest messages too. With discard new, a stream already over its new
    `max_bytes` or `max_msgs` keeps its messages and refuses publishes until it is below. A `max_age`
    below the oldest message's age expires it at once, whatever the discard policy (the age is taken
    on the server's clock: its answer's `ts` against the stream's `first_ts`)."""
    state = info.get("state") or {}
    losses = []
    max_age = int(config.get("max_age", 0))
    if max_age > 0 and int(state.get("messages", 0)) > 0:
        try:
            age = server_time(str(info["ts"])) - server_time(str(state["first_ts"]))
        except (KeyError, ValueError):
            age = None
        if age is not None and age.total_seconds() * 1e9 > max_age:
            losses.append(
                f"the oldest message is {format_duration(int(age.total_seconds()) * 10**9)} old, "
                f"max_age {format_duration(max_age)}"
            )
    per_subject = int(config.get("max_msgs_per_subject", -1))
    if per_subject > 0:
        over = {s: n for s, n in (state.get("subjects") or {}).items() if int(n) > per_subject}
        losses += [
            f"{s} holds {n} messages, max_msgs_per_subject {per_subject}" for s, n in sorted(over.items())
        ]
    if config.get("discard") == "old":
        max_msgs, max_bytes = int(config.get("max_msgs", -1)), int(config.get("max_bytes", -1))
        if 0 < max_msgs < int(state.get("messages", 0)):
            losses.append(
                f"the stream holds {state['messages']} messages, max_msgs {max_msgs} with discard old"
            )
        if 0 < max_bytes < int(state.get("bytes", 0)):
            losses.append(f"the stream holds {state['bytes']} bytes, max_bytes {max_bytes} with discard old")
    return losses


LIMIT_FIELDS = frozenset({"max_msgs_per_subject", "max_msgs", "max_bytes", "discard", "max_age"})
"""The fields `limit_losses` reads: an update that changes none of them deletes nothing by its limits,
so the subject counts are read, and the guard run, only when one of them changes."""


def limits_guard(spec: StreamSpec, info: dict[str, Any]) -> None:
    """Refuse an update that would delete stored messages, unless `allow_destroy_with_messages`."""
    losses = limit_losses(info, spec.config)
    if losses and not spec.allow_destroy_with_messages:
        raise ProviderError(
            f"refusing to update stream {spec.name!r}: the new limits would delete stored messages at once "
            f"({'; '.join(losses)}). Drain it first, raise the pair's stream_options limits, or set "
            "`allow_destroy_with_messages: true` to accept losing the oldest ones"
        )


def input_failures(news: dict[str, Any]) -> list[CheckFailure]:
    """Type checks of the inputs; each failure names its property."""
    failures: list[CheckFailure] = []
    problem = settings.connection_problem(news.get("connection"))
    if problem and not is_unknown(news.get("connection")):
        failures.append(CheckFailure("connection", problem))
    name, config = news.get("name"), news.get("config")
    if not is_unknown(name) and not (isinstance(name, str) and name):
        failures.append(CheckFailure("name", "name: must be a non-empty stream name"))
    if not is_unknown(config):
        if not isinstance(config, dict):
            failures.append(CheckFailure("config", "config: must be the rendered stream config (an object)"))
        elif (
            isinstance(name, str)
            and name
            and not is_unknown(config.get("name"))
            and config.get("name") != name
        ):
            failures.append(CheckFailure("config", f"config.name: must equal name {name!r}"))
    keeper = news.get("dlq_keeper")
    if not is_unknown(keeper) and not isinstance(keeper, dict):
        failures.append(CheckFailure("dlq_keeper", "dlq_keeper: must be an object ({} without a DLQ)"))
    failures += bool_failures(news, ("allow_destroy_with_messages", "adopt"))
    return failures


class StreamProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = dict(news)
        for key in ("config", "dlq_keeper"):
            if isinstance(inputs.get(key), dict) and not is_unknown(inputs[key]):
                inputs[key] = normalize(inputs[key])
        carried_adoption_note(olds, inputs)
        failures = input_failures(news)
        if is_create(olds) and not failures and not is_unknown(inputs):
            failures += self._adoption(inputs)
        return CheckResult(inputs, failures)

    def _adoption(self, inputs: dict[str, Any]) -> list[CheckFailure]:
        spec = StreamSpec.of(inputs)
        return preview_adoption(
            self,
            inputs,
            kind="stream",
            name=spec.name,
            connection=spec.connection,
            present=(None, spec.name),
            lookup=_info(spec.connection, spec.name),
            desired=desired_config(spec.config),
            live_of=lambda info: live_config(info, spec.config),
            immutable=IMMUTABLE,
            in_place=IN_PLACE,
        )

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if "pair" in olds:
            raise old_state_error("Stream")
        new, old = StreamSpec.of(news), StreamSpec.of(olds)
        config, keeper = news.get("config"), news.get("dlq_keeper")
        inputs: dict[str, tuple[Any, Any]] = {
            key: (olds.get(key), news.get(key))
            for key in ("connection", "dlq_keeper", "allow_destroy_with_messages", "adopt")
        }
        # a keeper deleted behind Pulumi's back (seen by a refresh) is put back by an update
        wanted_keeper = keeper if is_unknown(keeper) else bool(new.dlq_keeper)
        inputs["dlq_keeper_present"] = (bool(olds.get("dlq_keeper_present", False)), wanted_keeper)
        if is_unknown(config):  # the real `up` compares it, once known
            inputs["config"] = (olds.get("config"), config)
        known = not is_unknown(config)
        plan = plan_diff(
            desired_config(new.config, olds.get("unset")) if known else {},
            stored_live(olds.get("config"), unset_values(OPTIONAL_DEFAULTS, olds.get("unset")))
            if known
            else {},
            immutable=IMMUTABLE,
            in_place=IN_PLACE,
            identity={"name": (olds.get("name"), news.get("name"))},
            inputs=inputs,
        )
        if plan.replaces:
            self._guard_replace(old, new, plan.replaces)
            being_replaced(old.connection, f"stream {old.name}", f"stream {new.name}")
        elif known and LIMIT_FIELDS & plan.config.keys():
            info = self.run(_info_with_subjects(old.connection, old.name))
            if info is not None:
                limits_guard(new, info)  # fail the preview, not the `up`
        return plan.result()

    def _guard_replace(self, old: StreamSpec, new: StreamSpec, replaces: list[str]) -> None:
        """Fail the preview, not the `up` halfway: a replace deletes the stream and its messages."""
        messages = self.run(_message_count(old))
        because = f" (because {', '.join(replaces)} changed)"
        destroy_guard(new.allow_destroy_with_messages, old.name, messages, "replace", because)
        if messages and not old.allow_destroy_with_messages:
            raise ProviderError(
                f"refusing to replace stream {old.name!r}{because}: it holds "
                f"{messages} message(s) and the stored state does not allow destroying them yet. Run "
                "`pulumi up` with `allow_destroy_with_messages: true` and the old settings first "
                "(an in-place update), then make this change"
            )

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = StreamSpec.of(props)
        info, adopted = self.run(_create_or_adopt(spec))
        if adopted:
            announce(f"adopted stream {spec.name!r}: it was already on the server")
        unset = recorded_unset(info["config"], spec.config, OPTIONAL_DEFAULTS)
        outputs = stream_outputs(props, spec, info, adopted, unset, keeper=bool(spec.dlq_keeper))
        return CreateResult(spec.name, outputs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if "pair" in props:
            raise old_state_error("Stream")
        if "config" not in props:
            return ReadResult("", {})  # an import by id alone: not supported
        spec = StreamSpec.of(props)
        info, keeper = self.run(_read(spec.connection, id_))
        if info is None:
            return ReadResult("", {})
        outputs = stream_outputs(props, spec, info, bool(props.get("adopted")), props.get("unset"), keeper)
        return ReadResult(id_, outputs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec = StreamSpec.of(news)
        info = self.run(_update(spec, olds.get("unset")))
        outputs = stream_outputs(
            news, spec, info, bool(olds.get("adopted")), olds.get("unset"), keeper=bool(spec.dlq_keeper)
        )
        return UpdateResult(outputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if "pair" in props:
            raise old_state_error("Stream")
        self.run(_delete(id_, StreamSpec.of(props)))


# -- server I/O (on the host's shared admin connection for the resource's `connection`) ---------------
async def _info(conn: Any, name: str) -> dict[str, Any] | None:
    async with settings.admin_session(conn) as js:
        return await js.stream_info(name)


async def _info_with_subjects(conn: Any, name: str) -> dict[str, Any] | None:
    async with settings.admin_session(conn) as js:
        return await js.stream_info_subjects(name, ">")


async def _read(conn: Any, name: str) -> tuple[dict[str, Any] | None, bool]:
    """The stream's info, and whether its DLQ keeper is there: asked at once (a refresh reads every
    stream of a fleet; a missing stream answers the keeper's INFO as not found too)."""
    async with settings.admin_session(conn) as js:
        info, keeper = await asyncio.gather(js.stream_info(name), js.consumer_info(name, names.DLQ_KEEPER))
        return info, info is not None and keeper is not None


async def ensure_dlq_keeper(js: JetStreamAdmin, stream: str, keeper: dict[str, Any]) -> None:
    """The DLQ keeper `keeper` (its rendered config) on the stream, or none when it is empty."""
    if not keeper:
        await js.delete_consumer(stream, names.DLQ_KEEPER)  # False when there was none
        return
    try:
        await js.create_consumer(stream, keeper)  # an equal one is answered as created
    except JetStreamApiError as err:
        if err.err_code != CONSUMER_ALREADY_EXISTS:
            raise
        await js.update_consumer(stream, keeper)


async def _message_count(spec: StreamSpec) -> int:
    async with settings.admin_session(spec.connection) as js:
        info = await js.stream_info(spec.name)
    return int(info["state"]["messages"]) if info else 0


async def _create_or_adopt(spec: StreamSpec) -> tuple[dict[str, Any], bool]:
    """Create first (one request, answered with the stream's info); adopt only on a conflict.

    The server answers an existing stream with an equal config as if created, and refuses one that
    differs in anything, subject order included: only then is the live config read and compared
    field by field. Returns the info and whether the stream was adopted."""
    async with settings.admin_session(spec.connection) as js:
        sent = time.monotonic()
        try:
            info = await js.create_stream(spec.config)
            existed = existed_before(info, time.monotonic() - sent)
            if not existed and int(spec.config.get("num_replicas", 1)) > 1:  # one replica: current
                await replication.wait_for_stream(js, spec.name, spec.settle_timeout, quorum_only=True)
            await ensure_dlq_keeper(js, spec.name, spec.dlq_keeper)
            return info, existed
        except JetStreamApiError as err:
            if err.err_code != STREAM_NAME_IN_USE:
                raise
        existing = await js.stream_info(spec.name)
        if existing is None:
            raise ProviderError(
                f"stream {spec.name!r} was deleted while it was being adopted; run `pulumi up` again"
            )
        changes = adopt_decision(
            "stream",
            spec.name,
            desired_config(spec.config),
            live_config(existing, spec.config),
            adopt=spec.adopt,
            immutable=IMMUTABLE,
            in_place=IN_PLACE,
        )
        if changes:
            existing = await _apply_update(js, existing, spec, changes)
        await ensure_dlq_keeper(js, spec.name, spec.dlq_keeper)
        return existing, True


async def _update(spec: StreamSpec, unset: Any) -> dict[str, Any]:
    async with settings.admin_session(spec.connection) as js:
        existing = await js.stream_info(spec.name)
        if existing is None:
            raise ProviderError(
                f"stream {spec.name!r} no longer exists on the server; run `pulumi refresh` "
                "and the next `pulumi up` recreates it"
            )
        changes = config_changes(desired_config(spec.config, unset), live_config(existing, spec.config))
        if changes:
            existing = await _apply_update(js, existing, spec, changes)
        await ensure_dlq_keeper(js, spec.name, spec.dlq_keeper)
        return existing


async def _apply_update(
    js: JetStreamAdmin, existing: dict[str, Any], spec: StreamSpec, changes: Changes
) -> dict[str, Any]:
    """Send the live config with the managed fields laid over it (the server treats an update as a
    replacement; fields jsb-infra does not manage stay as they are), unless the new limits would delete
    stored messages (`limits_guard`, when a `LIMIT_FIELDS` field changes). A change of replicas or
    placement is waited for until the stream and its consumers report the new peers current. Returns
    the info."""
    if LIMIT_FIELDS & changes.keys():
        counted = await js.stream_info_subjects(spec.name, ">")
        limits_guard(spec, counted or existing)
    config = read_modify_write(existing["config"], spec.config, changes)
    await replication.update_stream(js, existing["config"], config, spec.settle_timeout)
    info = await js.stream_info(spec.name)
    if info is None:
        raise ProviderError(
            f"stream {spec.name!r} vanished right after it was written; run `pulumi up` again"
        )
    return info


async def _delete(name: str, spec: StreamSpec) -> None:
    async with settings.admin_session(spec.connection) as js:
        if not spec.allow_destroy_with_messages:  # else the guard cannot refuse: no need to look
            info = await js.stream_info(name)
            if info is None:
                return
            destroy_guard(False, name, int(info["state"]["messages"]), "delete")
        await js.delete_stream(name)


class Stream(Resource, module="jsb", name="Stream"):
    """A JetStream stream, from its rendered config. Outputs: the inputs (config: the live one, cut to
    the managed keys), created, messages, adopted, unset, dlq_keeper_present."""

    connection: pulumi.Output[dict[str, Any]]
    name: pulumi.Output[str]
    config: pulumi.Output[dict[str, Any]]
    dlq_keeper: pulumi.Output[dict[str, Any]]
    allow_destroy_with_messages: pulumi.Output[bool]
    adopt: pulumi.Output[bool]
    created: pulumi.Output[str]
    messages: pulumi.Output[int]
    adopted: pulumi.Output[bool]
    unset: pulumi.Output[dict[str, Any]]
    dlq_keeper_present: pulumi.Output[bool]

    def __init__(
        self,
        resource_name: str,
        *,
        connection: pulumi.Input[dict[str, Any]],
        name: pulumi.Input[str],
        config: pulumi.Input[dict[str, Any]],
        dlq_keeper: pulumi.Input[dict[str, Any]],
        allow_destroy_with_messages: pulumi.Input[bool],
        adopt: pulumi.Input[bool],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "connection": connection,
            "name": name,
            "config": config,
            "dlq_keeper": dlq_keeper,
            "allow_destroy_with_messages": allow_destroy_with_messages,
            "adopt": adopt,
            "created": None,
            "messages": None,
            "adopted": None,
            "unset": None,
            "dlq_keeper_present": None,
        }
        super().__init__(StreamProvider(), resource_name, props, opts)
