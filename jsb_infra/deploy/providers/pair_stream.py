"""The `PairStream` dynamic resource: one pair's stream and its apps' durable consumers, as one resource.

One resource per pair, not one per server object: the Pulumi engine and SDK spend several
milliseconds on every registered resource even when nothing changes, which made a no-op `up` of a
fleet cost seconds per hundred objects. The server-side rules stay those of `StreamProvider` and
`ConsumerProvider`, which this provider drives part by part on the pair's state:

- `stream`: the stream's outputs (its live config, `created`, `unset`, the DLQ keeper flag, ...);
  a change the server cannot make in place (name, storage, retention to or from workqueue, a field
  set by hand it cannot reset) replaces the whole resource, delete first (the stream's consumers go
  with it), guarded against losing messages at preview;
- `consumers`: per app its durable's outputs. A consumer change the server refuses in place
  (mem_storage, a policy changed by hand) recreates that consumer inside the update, guarded at
  preview like a replace (on an interest stream its messages would go with it) and announced; an app
  the pair no longer has loses its durable, with the same guard; a durable missing on the server
  (seen by a refresh) is created again.

Create makes the stream, its DLQ keeper and the consumers (each create-first, adopting an equal
object); a create that fails halfway leaves objects that the next `up` adopts. Delete removes the
stream (its consumers with it) and refuses while it holds messages unless the pair allows it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from jsb_infra.core import names
from jsb_infra.core.spec import Pair
from jsb_infra.deploy.providers import consumer, settings, stream
from jsb_infra.deploy.providers.base import (
    JsbProvider,
    announce,
    canonical_pair,
    pair_failures,
    parse_pair,
    stored_pair,
)

STREAM_PROVIDER = stream.StreamProvider()
CONSUMER_PROVIDER = consumer.ConsumerProvider()


# -- the pair's state, part by part ---------------------------------------------------------------------
REPLACE_PATHS = {
    "name": "pair.stream",
    "config.storage": "pair.stream_options.storage",
    "config.retention": "pair.stream_options.retention",
}
"""The stream's replace keys as paths of this resource's one input, the pair."""

STREAM_ENTRY_KEYS = ("adopted", "unset", "name", "config", "created", "messages")
CONSUMER_ENTRY_KEYS = ("adopted", "unset", "stream", "durable", "config", "created")


def stream_news(pair_input: Any) -> dict[str, Any]:
    """The new pair as `StreamProvider` inputs."""
    return stream.stream_inputs(parse_pair(pair_input))


def stream_part(props: dict[str, Any]) -> dict[str, Any]:
    """The stream's state as `StreamProvider` reads it: the inputs the stored pair renders, with the
    stored outputs of the stream over them (its live config among them)."""
    entry = dict(props.get("stream") or {})
    present = bool(entry.pop("dlq_keeper", False))
    return {**stream.stream_inputs(stored_pair(props["pair"])), **entry, "dlq_keeper_present": present}


def consumer_news(pair_input: Any, app: str) -> dict[str, Any]:
    return consumer.consumer_inputs(parse_pair(pair_input), app)


def consumer_parts(props: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per app, its durable's state as `ConsumerProvider` reads it (the inputs the stored pair renders,
    with the stored outputs over them).

    The stream's incarnation needs no `stream_created` here: a new stream replaces the whole resource,
    and a stream recreated out of band has lost its consumers, which a refresh records."""
    old_pair = stored_pair(props["pair"])
    return {
        app: {**consumer.consumer_inputs(old_pair, app), **entry}
        for app, entry in (props.get("consumers") or {}).items()
    }


def consumer_entry(outputs: dict[str, Any] | None, app: str) -> dict[str, Any]:
    """What the pair's state keeps of a consumer's outputs (the inputs are rendered from the pair)."""
    outputs = outputs or {}
    return {"app": app, **{k: outputs[k] for k in CONSUMER_ENTRY_KEYS if k in outputs}}


def stream_entry(outputs: dict[str, Any] | None) -> dict[str, Any]:
    outputs = outputs or {}
    entry = {k: outputs[k] for k in STREAM_ENTRY_KEYS if k in outputs}
    return {**entry, "dlq_keeper": bool(outputs.get("dlq_keeper_present", outputs.get("dlq_keeper")))}


def pair_outputs(
    pair_input: Any, stream_out: dict[str, Any] | None, consumers: dict[str, Any]
) -> dict[str, Any]:
    return {"pair": pair_input, "stream": stream_entry(stream_out), "consumers": consumers}


def consumer_id(pair: Pair, app: str) -> str:
    return consumer.consumer_id(pair.stream, names.durable_name(app))


class PairStreamProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        pair, failures = pair_failures(news.get("pair"))
        inputs = {"pair": canonical_pair(pair) if pair is not None else news.get("pair")}
        return CheckResult(inputs, failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        stream_diff = STREAM_PROVIDER.diff(id_, stream_part(olds), stream_news(news["pair"]))
        if stream_diff.replaces:
            replaces = [REPLACE_PATHS.get(path, path) for path in stream_diff.replaces]
            return DiffResult(changes=True, replaces=replaces, delete_before_replace=True)
        pair, old_pair = parse_pair(news["pair"]), stored_pair(olds["pair"])
        changed = bool(stream_diff.changes)
        old_consumers = consumer_parts(olds)
        for app in pair.apps:
            old = old_consumers.get(app)
            if old is None:
                changed = True  # new app, or its durable is gone from the server: created
                continue
            plan = CONSUMER_PROVIDER.diff(consumer_id(pair, app), old, consumer_news(news["pair"], app))
            if plan.replaces:  # guarded by ConsumerProvider.diff: refused here if messages are at stake
                announce(
                    f"consumer {pair.stream}/{names.durable_name(app)} will be recreated "
                    f"({', '.join(plan.replaces)} cannot change in place)"
                )
            changed = changed or bool(plan.changes)
        for app in old_consumers.keys() - set(pair.apps):
            durable = names.durable_name(app)
            at_stake = self.run(consumer.messages_at_stake(old_pair.stream, durable))
            consumer.interest_guard(
                pair.allow_destroy_with_messages,
                old_pair.stream,
                durable,
                at_stake,
                "delete",
                " (app removed)",
            )
            changed = True
        return DiffResult(changes=changed, replaces=[], delete_before_replace=None)

    def create(self, props: dict[str, Any]) -> CreateResult:
        pair = parse_pair(props["pair"])
        created = STREAM_PROVIDER.create(stream_news(props["pair"]))
        consumers = {
            app: consumer_entry(CONSUMER_PROVIDER.create(consumer_news(props["pair"], app)).outs, app)
            for app in pair.apps
        }
        return CreateResult(created.id, pair_outputs(props["pair"], created.outs, consumers))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The stream, its DLQ keeper and the stored consumers, read at once (a refresh of a fleet
        reads every pair); outputs as `StreamProvider.read` and `ConsumerProvider.read` make them."""
        if "pair" not in props:
            return ReadResult("", {})
        parts = consumer_parts(props)
        info, keeper, live = self.run(_read(id_, list(parts)))
        if info is None:
            return ReadResult("", {})  # the stream is gone: the next `up` creates the pair again
        old_stream = stream_part(props)
        stream_out = stream.stream_outputs(
            old_stream,
            stream.StreamSpec.of(old_stream),
            info,
            bool(old_stream.get("adopted")),
            old_stream.get("unset"),
            keeper,
        )
        consumers = {
            app: consumer_entry(
                consumer.consumer_outputs(
                    parts[app],
                    consumer.ConsumerSpec.of(parts[app]),
                    found,
                    bool(parts[app].get("adopted")),
                    parts[app].get("unset"),
                ),
                app,
            )
            for app, found in live.items()
            if found is not None
        }
        return ReadResult(id_, pair_outputs(props["pair"], stream_out, consumers))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        pair = parse_pair(news["pair"])
        new_stream = stream_news(news["pair"])
        if STREAM_PROVIDER.diff(id_, stream_part(olds), new_stream).changes:
            stream_out = STREAM_PROVIDER.update(id_, stream_part(olds), new_stream).outs
        else:
            stream_out = stream_part(olds)
        old_consumers = consumer_parts(olds)
        for app in old_consumers.keys() - set(pair.apps):  # guarded at preview (diff)
            CONSUMER_PROVIDER.delete(consumer_id(stored_pair(olds["pair"]), app), old_consumers.pop(app))
        consumers = {app: self._converge(pair, app, old_consumers.get(app), news) for app in pair.apps}
        return UpdateResult(pair_outputs(news["pair"], stream_out, consumers))

    @staticmethod
    def _converge(pair: Pair, app: str, old: dict[str, Any] | None, news: dict[str, Any]) -> dict[str, Any]:
        """One app's durable brought to the spec: created, kept, updated in place, or recreated."""
        new = consumer_news(news["pair"], app)
        if old is None:
            return consumer_entry(CONSUMER_PROVIDER.create(new).outs, app)
        id_ = consumer_id(pair, app)
        plan = CONSUMER_PROVIDER.diff(id_, old, new)
        if plan.replaces:
            announce(f"recreating consumer {id_} ({', '.join(plan.replaces)} cannot change in place)")
            CONSUMER_PROVIDER.delete(id_, old)
            return consumer_entry(CONSUMER_PROVIDER.create(new).outs, app)
        if plan.changes:
            return consumer_entry(CONSUMER_PROVIDER.update(id_, old, new).outs, app)
        return consumer_entry(old, app)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """The stream goes, and its consumers with it (guarded by the stream's message count)."""
        STREAM_PROVIDER.delete(id_, stream_part(props))


async def _read(name: str, apps: list[str]) -> tuple[Any, bool, dict[str, Any]]:
    """The stream's info, whether its DLQ keeper is there, and each app's durable's info (None: gone),
    asked concurrently on the shared admin connection."""
    async with settings.admin_session() as js:
        info, keeper, *durables = await asyncio.gather(
            js.stream_info(name),
            js.consumer_info(name, names.DLQ_KEEPER),
            *(js.consumer_info(name, names.durable_name(app)) for app in apps),
        )
    return info, info is not None and keeper is not None, dict(zip(apps, durables, strict=True))


class PairStream(Resource, module="jsb", name="PairStream"):
    """One pair's stream and its apps' durables. Outputs: stream (name, config, created, messages,
    adopted, ...) and consumers {app: {stream, durable, config, created, adopted, ...}}, as the server
    reported them."""

    stream: pulumi.Output[dict[str, Any]]
    consumers: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        resource_name: str,
        pair: pulumi.Input[dict[str, Any]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"pair": pair, "stream": None, "consumers": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True))
        super().__init__(PairStreamProvider(), resource_name, props, opts)
