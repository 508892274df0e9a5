"""The `Consumer` dynamic resource: an app's durable pull consumer, kept equal to its rendered config.

Inputs: `connection`, `stream` and `durable` (its identity), `config` (`topology.consumer_config` of
the pair and app, verbatim), `stream_incarnation` (`topology.pair_incarnation_key`, known at preview),
`stream_created` (the Stream's `created` output), `stream_replicas` (create waits for the peers when
above 1), `allow_destroy_with_messages` and `adopt`. Outputs echo them, except `config`, which is the
live config cut to the managed keys, plus `created`, `adopted` and `unset`.

Replaces (delete first) when its identity changes (stream, durable, the stream incarnation, and
`stream_created` once known on both sides) or a field the server cannot update (deliver/ack/replay
policy, pull <-> push, max_waiting, mem_storage); everything else (max_deliver, ack_wait, backoff,
max_ack_pending, num_replicas, filter subject(s), headers_only, inactive_threshold) updates in place,
fields jsb-infra does not manage kept as the server has them; a changed `connection` is an update too.
Create and a replica change return once the consumer's peers are current. On an interest stream,
deleting a consumer drops the messages only it was interested in: delete and replace refuse that
unless `allow_destroy_with_messages` is stored.
"""

from __future__ import annotations

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
from jsb_infra.core.spec import Pair
from jsb_infra.core.topology import consumer_config, pair_incarnation_key
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import (
    JsbProvider,
    ProviderError,
    adopt_decision,
    announce,
    being_replaced,
    bool_failures,
    carried_adoption_note,
    config_changes,
    describe_changes,
    existed_before,
    is_create,
    is_unknown,
    observed,
    old_state_error,
    plan_diff,
    preview_adoption,
    read_modify_write,
    recorded_unset,
    stored_live,
    unset_values,
    with_defaults,
)
from jsb_infra.nats_admin import CONSUMER_ALREADY_EXISTS, JetStreamAdmin, JetStreamApiError, normalize

IMMUTABLE = {
    "durable_name": "durable",
    "name": "durable",
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


def desired_config(config: dict[str, Any], unset: Any = None) -> dict[str, Any]:
    """The rendered config plus the unset values (`unset` as recorded at create, else OPTIONAL_DEFAULTS)."""
    return with_defaults(config, unset_values(OPTIONAL_DEFAULTS, unset))


def live_config(info: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return observed(info["config"], desired_config(config))


def consumer_inputs(
    pair: Pair, app: str, stream_created: Any = None, connection: Any = None
) -> dict[str, Any]:
    """The `Consumer` inputs of `app`'s durable in `pair` (`stream_created`: the Stream's `created`
    output; `connection`: a `Connection.as_input()` value, None: the stack config)."""
    return {
        "connection": connection if connection is not None else {"stack_config": True},
        "stream": pair.stream,
        "durable": names.durable_name(app),
        "config": dict(consumer_config(pair, app)),
        "stream_incarnation": pair_incarnation_key(pair),
        "stream_created": stream_created,
        "stream_replicas": pair.stream_options.replicas,
        "allow_destroy_with_messages": pair.allow_destroy_with_messages,
        "adopt": pair.adopt,
    }


INPUT_KEYS = (
    "connection",
    "stream",
    "durable",
    "config",
    "stream_incarnation",
    "stream_created",
    "stream_replicas",
    "allow_destroy_with_messages",
    "adopt",
)


@dataclass(frozen=True)
class ConsumerSpec:
    """The checked inputs of one durable, as the server I/O uses them."""

    connection: Any
    stream: str
    durable: str
    config: dict[str, Any]
    stream_replicas: int
    allow_destroy_with_messages: bool
    adopt: bool

    @classmethod
    def of(cls, props: dict[str, Any]) -> ConsumerSpec:
        """From checked inputs, or from stored state (which holds the inputs echoed)."""
        config = normalize(props.get("config") or {})
        replicas = props.get("stream_replicas")
        return cls(
            connection=props.get("connection"),
            stream=str(props.get("stream") or ""),
            durable=str(props.get("durable") or config.get("durable_name") or ""),
            config=config,
            stream_replicas=int(replicas) if isinstance(replicas, int | float) else 1,
            allow_destroy_with_messages=bool(props.get("allow_destroy_with_messages", False)),
            adopt=bool(props.get("adopt", False)),
        )

    @property
    def id(self) -> str:
        return consumer_id(self.stream, self.durable)

    @property
    def settle_timeout(self) -> float:
        return settings.for_connection(self.connection).settle_timeout


def stream_recreated(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    """Whether the stream this consumer lives on is (or was) recreated, which takes the consumer with it.

    Known at preview from `stream_incarnation` (a change that replaces the stream); at `up` also from
    the stream's `created`, when known on both sides (a stream recreated out of band). An unknown
    `created` alone is no change: the stream updating in place leaves its outputs unknown at preview.
    """
    old_key, new_key = olds.get("stream_incarnation"), news.get("stream_incarnation")
    if old_key is not None and not is_unknown(new_key) and old_key != new_key:
        return True
    old_created, new_created = olds.get("stream_created"), news.get("stream_created")
    if old_created is None or new_created is None or is_unknown(old_created) or is_unknown(new_created):
        return False
    return bool(old_created != new_created)


def interest_guard(
    allowed: bool, stream: str, durable: str, at_stake: int, action: str, because: str = ""
) -> None:
    """Refuse to drop messages unless `allowed` (the resource's allow_destroy_with_messages)."""
    if at_stake and not allowed:
        raise ProviderError(
            f"refusing to {action} consumer {durable!r} on interest stream {stream!r}{because}: "
            f"{at_stake} message(s) would be dropped (on an interest stream a message only this consumer "
            "still wants goes with it). Let the app drain them, or set `allow_destroy_with_messages: true` "
            "on the pair (and run `pulumi up` once so the setting is stored) to accept losing them"
        )


def consumer_id(stream: str, durable: str) -> str:
    return f"{stream}/{durable}"


def consumer_outputs(
    props: dict[str, Any], spec: ConsumerSpec, info: dict[str, Any], adopted: bool, unset: Any
) -> dict[str, Any]:
    """Every output: the inputs echoed, and from what the server reported the live config (managed
    keys) and `created`; `adopted`: it was on the server before the create; `unset`: the values the
    server gave the keys the renderer leaves out, as recorded at create."""
    return {
        **{key: props.get(key) for key in INPUT_KEYS},
        "stream": info["stream_name"],
        "durable": info["name"],
        "config": live_config(info, spec.config),
        "created": info["created"],
        "adopted": adopted,
        "unset": unset,
    }


def input_failures(news: dict[str, Any]) -> list[CheckFailure]:
    """Type checks of the inputs; each failure names its property."""
    failures: list[CheckFailure] = []
    conn = news.get("connection")
    problem = None if is_unknown(conn) else settings.connection_problem(conn)
    if problem:
        failures.append(CheckFailure("connection", problem))
    for prop in ("stream", "durable", "stream_incarnation"):
        value = news.get(prop)
        if not is_unknown(value) and not (isinstance(value, str) and value):
            failures.append(CheckFailure(prop, f"{prop}: must be a non-empty string"))
    config, durable = news.get("config"), news.get("durable")
    if not is_unknown(config):
        if not isinstance(config, dict):
            failures.append(
                CheckFailure("config", "config: must be the rendered consumer config (an object)")
            )
        elif (
            isinstance(durable, str)
            and not is_unknown(config.get("durable_name"))
            and config.get("durable_name") != durable
        ):
            failures.append(CheckFailure("config", f"config.durable_name: must equal durable {durable!r}"))
    created = news.get("stream_created")
    if created is not None and not is_unknown(created) and not isinstance(created, str):
        failures.append(CheckFailure("stream_created", "stream_created: must be text"))
    replicas = news.get("stream_replicas")
    if not is_unknown(replicas) and not (
        isinstance(replicas, int | float)
        and not isinstance(replicas, bool)
        and float(replicas).is_integer()
        and replicas >= 1
    ):
        failures.append(CheckFailure("stream_replicas", "stream_replicas: must be a whole number >= 1"))
    return failures + bool_failures(news, ("allow_destroy_with_messages", "adopt"))


class ConsumerProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = dict(news)
        for key in ("config", "stream_replicas"):
            if not is_unknown(inputs.get(key)):
                inputs[key] = normalize(inputs.get(key))
        carried_adoption_note(olds, inputs)
        failures = input_failures(news)
        known = {k: v for k, v in inputs.items() if k != "stream_created"}  # unknown on a new stream
        if is_create(olds) and not failures and not is_unknown(known):
            failures += self._adoption(inputs)
        return CheckResult(inputs, failures)

    def _adoption(self, inputs: dict[str, Any]) -> list[CheckFailure]:
        spec = ConsumerSpec.of(inputs)
        return preview_adoption(
            self,
            inputs,
            kind="consumer",
            name=spec.id,
            connection=spec.connection,
            present=(spec.stream, spec.durable),
            lookup=_info(spec),
            desired=desired_config(spec.config),
            live_of=lambda info: live_config(info, spec.config),
            immutable=IMMUTABLE,
        )

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if "pair" in olds:
            raise old_state_error("Consumer")
        new, old = ConsumerSpec.of(news), ConsumerSpec.of(olds)
        config = news.get("config")
        known = not is_unknown(config)
        inputs: dict[str, tuple[Any, Any]] = {  # delete reads the flag from state: it must be stored
            key: (olds.get(key), news.get(key))
            for key in ("connection", "stream_replicas", "allow_destroy_with_messages", "adopt")
        }
        if not known:  # the real `up` compares it, once known
            inputs["config"] = (olds.get("config"), config)
        plan = plan_diff(
            desired_config(new.config, olds.get("unset")) if known else {},
            stored_live(olds.get("config"), unset_values(OPTIONAL_DEFAULTS, olds.get("unset")))
            if known
            else {},
            immutable=IMMUTABLE,
            identity={
                "stream": (olds.get("stream"), news.get("stream")),
                "durable": (olds.get("durable"), news.get("durable")),
            },
            inputs=inputs,
        )
        if "stream" not in plan.replaces:
            if stream_recreated(olds, news):
                plan.replaces.append("stream_created")
            elif is_unknown(news.get("stream_incarnation")):
                plan.inputs.append("stream_incarnation")
        if plan.replaces:
            self._guard_replace(old, new, plan.replaces)
            being_replaced(old.connection, f"consumer {old.id}", f"consumer {new.id}")
        return plan.result()

    def _guard_replace(self, old: ConsumerSpec, new: ConsumerSpec, replaces: list[str]) -> None:
        """Fail the preview, not the `up` halfway: the replace deletes the consumer first, and that
        delete sees only the stored state."""
        at_stake = self.run(messages_at_stake(old.stream, old.durable, old.connection))
        because = f" (because {', '.join(replaces)} changed)"
        interest_guard(new.allow_destroy_with_messages, old.stream, old.durable, at_stake, "replace", because)
        if at_stake and not old.allow_destroy_with_messages:
            raise ProviderError(
                f"refusing to replace consumer {old.durable!r} on interest stream {old.stream!r}{because}: "
                f"{at_stake} message(s) would be dropped and the stored state does not allow destroying "
                "them yet. Run `pulumi up` with `allow_destroy_with_messages: true` and the old settings "
                "first (an in-place update), then make this change"
            )

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = ConsumerSpec.of(props)
        info, adopted = self.run(_create_or_adopt(spec))
        if adopted:
            announce(f"adopted consumer {spec.stream}/{info['name']}: it was already on the server")
        unset = recorded_unset(info["config"], spec.config, OPTIONAL_DEFAULTS)
        outputs = consumer_outputs(props, spec, info, adopted, unset)
        return CreateResult(consumer_id(spec.stream, info["name"]), outputs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if "pair" in props:
            raise old_state_error("Consumer")
        if "config" not in props:
            return ReadResult("", {})  # an import by id alone: not supported
        spec = ConsumerSpec.of(props)
        info = self.run(_info(spec))
        if info is None:
            return ReadResult("", {})
        outputs = consumer_outputs(props, spec, info, bool(props.get("adopted")), props.get("unset"))
        return ReadResult(id_, outputs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec = ConsumerSpec.of(news)
        info = self.run(_update(spec, olds.get("unset")))
        outputs = consumer_outputs(news, spec, info, bool(olds.get("adopted")), olds.get("unset"))
        return UpdateResult(outputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if "pair" in props:
            raise old_state_error("Consumer")
        self.run(_delete(ConsumerSpec.of(props)))


async def _info(spec: ConsumerSpec) -> dict[str, Any] | None:
    async with settings.admin_session(spec.connection) as js:
        return await js.consumer_info(spec.stream, spec.durable)


def holds_rendered(spec: ConsumerSpec, info: dict[str, Any]) -> dict[str, Any]:
    """`info` after a write, once checked to hold every rendered field as sent.

    An app's bridge (its max_deliver, ack_wait, backoff, max_ack_pending) is derived from the same
    rendered config; a server that kept something else after the write would leave the app with wrong
    redelivery settings, so the write fails loudly instead of recording what the server holds."""
    rendered = {key: value for key, value in desired_config(spec.config).items() if key in spec.config}
    differing = config_changes(rendered, live_config(info, spec.config))
    if differing:
        raise ProviderError(
            f"consumer {spec.id}: after the write the server holds {describe_changes(differing)}; "
            "the apps' bridges say what was sent. Check the server's version and limits, then run "
            "`pulumi up --refresh`"
        )
    return info


async def _create_or_adopt(spec: ConsumerSpec) -> tuple[dict[str, Any], bool]:
    """Create first (one request, answered with the consumer's info); adopt only on a conflict.

    The server answers an existing consumer with an equal config with its info and refuses one that
    differs: only then is the live config read and compared. Returns the info and whether the
    consumer was adopted (it was there before the request)."""
    async with settings.admin_session(spec.connection) as js:
        sent = time.monotonic()
        try:
            info = await js.create_consumer(spec.stream, spec.config)
            existed = existed_before(info, time.monotonic() - sent)
            if not existed and spec.stream_replicas > 1:  # one replica: created is current
                await replication.wait_for_consumer(
                    js, spec.stream, spec.durable, spec.settle_timeout, quorum_only=True
                )
            try:
                return holds_rendered(spec, info), existed
            except ProviderError as err:
                if existed:
                    raise
                # not recorded in state, so never deleted by Pulumi: take back what this create made
                await js.delete_consumer(spec.stream, spec.durable)
                raise ProviderError(f"{err} (the consumer this create made was deleted again)") from None
        except JetStreamApiError as err:
            if err.err_code != CONSUMER_ALREADY_EXISTS:
                raise
        existing = await js.consumer_info(spec.stream, spec.durable)
        if existing is None:
            raise ProviderError(
                f"consumer {spec.id} was deleted while it was being adopted; run `pulumi up` again"
            )
        changes = adopt_decision(
            "consumer",
            spec.id,
            desired_config(spec.config),
            live_config(existing, spec.config),
            adopt=spec.adopt,
            immutable=IMMUTABLE,
        )
        if changes:
            config = read_modify_write(existing["config"], spec.config, changes)
            existing = await js.update_consumer(spec.stream, config)
        return holds_rendered(spec, existing), True


async def _update(spec: ConsumerSpec, unset: Any) -> dict[str, Any]:
    async with settings.admin_session(spec.connection) as js:
        existing = await js.consumer_info(spec.stream, spec.durable)
        if existing is None:
            raise ProviderError(
                f"consumer {spec.id} no longer exists on the server; run `pulumi refresh` "
                "and the next `pulumi up` recreates it"
            )
        changes = config_changes(desired_config(spec.config, unset), live_config(existing, spec.config))
        if not changes:
            return existing
        config = read_modify_write(existing["config"], spec.config, changes)
        info = await js.update_consumer(spec.stream, config)
        if "num_replicas" in changes:
            await replication.wait_for_consumer(js, spec.stream, spec.durable, spec.settle_timeout)
            info = await js.consumer_info(spec.stream, spec.durable) or info
        return holds_rendered(spec, info)


async def messages_at_stake(stream: str, durable: str, conn: Any = None) -> int:
    async with settings.admin_session(conn) as js:
        return await _at_stake(js, stream, durable)


async def _at_stake(js: JetStreamAdmin, stream: str, durable: str) -> int:
    """Messages deleting the consumer would drop: its pending and unacked ones, on an interest stream
    only (workqueue and limits streams keep their messages when a consumer goes)."""
    stream_info = await js.stream_info(stream)
    if stream_info is None or stream_info["config"].get("retention") != "interest":
        return 0
    info = await js.consumer_info(stream, durable)
    return 0 if info is None else int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))


async def _delete(spec: ConsumerSpec) -> None:
    async with settings.admin_session(spec.connection) as js:
        if not spec.allow_destroy_with_messages:  # else the guard cannot refuse: no need to look
            at_stake = await _at_stake(js, spec.stream, spec.durable)
            interest_guard(False, spec.stream, spec.durable, at_stake, "delete")
        await js.delete_consumer(spec.stream, spec.durable)


class Consumer(Resource, module="jsb", name="Consumer"):
    """A durable pull consumer, from its rendered config. Outputs: the inputs (config: the live one, cut
    to the managed keys), created, adopted, unset."""

    connection: pulumi.Output[dict[str, Any]]
    stream: pulumi.Output[str]
    durable: pulumi.Output[str]
    config: pulumi.Output[dict[str, Any]]
    stream_incarnation: pulumi.Output[str]
    stream_created: pulumi.Output[str]
    stream_replicas: pulumi.Output[int]
    allow_destroy_with_messages: pulumi.Output[bool]
    adopt: pulumi.Output[bool]
    created: pulumi.Output[str]
    adopted: pulumi.Output[bool]
    unset: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        resource_name: str,
        *,
        connection: pulumi.Input[dict[str, Any]],
        stream: pulumi.Input[str],
        durable: pulumi.Input[str],
        config: pulumi.Input[dict[str, Any]],
        stream_incarnation: pulumi.Input[str],
        stream_created: pulumi.Input[str],
        stream_replicas: pulumi.Input[int],
        allow_destroy_with_messages: pulumi.Input[bool],
        adopt: pulumi.Input[bool],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "connection": connection,
            "stream": stream,
            "durable": durable,
            "config": config,
            "stream_incarnation": stream_incarnation,
            "stream_created": stream_created,
            "stream_replicas": stream_replicas,
            "allow_destroy_with_messages": allow_destroy_with_messages,
            "adopt": adopt,
            "created": None,
            "adopted": None,
            "unset": None,
        }
        super().__init__(ConsumerProvider(), resource_name, props, opts)
