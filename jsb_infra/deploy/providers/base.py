"""Shared, pure logic of the jsb-infra dynamic providers: normalize, compare, decide update vs replace.

Each resource module names the fields the server refuses to update (nats-server server/stream.go
`configUpdateCheckLocked`, server/consumer.go `checkNewConsumerConfig`); everything here turns a
desired config and the live config last read from the server into a Pulumi `DiffResult`, an adopt
decision or a clear error. Only `JsbProvider.run` does I/O (it runs each call's coroutine on the host's
one admin loop: provider methods are called synchronously from the host's worker threads, pulumi#13153).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import nats.errors
from pulumi.dynamic import CheckFailure, ConfigureRequest, DiffResult, ResourceProvider
from pulumi.output import Unknown
from pulumi.runtime import rpc

from jsb_infra import resolver
from jsb_infra.deploy.providers import connection, settings
from jsb_infra.nats_admin import API, AdminConnectError, JetStreamApiError, differences, normalize, zero_like
from jsb_infra.replication import NotSettled
from jsb_infra.retry import ManagementUnavailable

T = TypeVar("T")
Changes = dict[str, tuple[Any, Any]]


HOST_SWITCH_INTERVAL = 0.001
"""Seconds a provider-host thread may hold the GIL while another waits (`sys.setswitchinterval`)."""


class ProviderError(RuntimeError):
    """A refusal the user must act on (data-loss guard, adopt conflict, object gone)."""


# -- values ------------------------------------------------------------------------------------------
def is_unknown(value: Any) -> bool:
    """True when `value` is, or contains, a preview-time unknown (the host decodes them as `Unknown`)."""
    if isinstance(value, Unknown) or (isinstance(value, str) and value == rpc.UNKNOWN):
        return True
    if isinstance(value, dict):
        return any(is_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_unknown(v) for v in value)
    return False


def with_defaults(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The desired config plus the "unset" values of the optional keys jsb-infra manages.

    Without them, removing a description or a backoff would never show as a difference, and a field
    set by hand (a push consumer's deliver_subject, a stream's deny_delete) would be adopted silently.
    An unset value of None ("absent", like a stream's mirror) is kept, so it is compared too.
    """
    return {k: normalize(v) for k, v in {**defaults, **config}.items()}


def observed(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The live config cut down to the keys jsb-infra manages (the server adds many defaults).

    The server omits empty values, so a managed key it leaves out holds its zero value; it is filled
    in, so the `config` output shows every managed key (None ones aside: Pulumi drops them).
    """
    return normalize({k: live[k] if k in live else zero_like(want) for k, want in desired.items()})


def unset_values(known: Mapping[str, Any], recorded: Any) -> dict[str, Any]:
    """The "unset" values to compare with: those the server gave this object when it was created
    (the `unset` output), else the known ones (what nats-server 2.15.1 gives).

    So a server whose defaults differ (a later version's max_waiting) never reads as drift, let alone
    as a replace, while a field changed by hand after the create still does."""
    if not isinstance(recorded, dict):
        return dict(known)
    return {key: normalize(recorded[key]) if key in recorded else value for key, value in known.items()}


def recorded_unset(
    live: Mapping[str, Any], rendered: Mapping[str, Any], known: Mapping[str, Any]
) -> dict[str, Any]:
    """What the server filled in for the managed keys the renderer left out, read from its answer."""
    return {
        key: normalize(live.get(key, zero_like(value)))
        for key, value in known.items()
        if key not in rendered and value is not None
    }


def stored_live(stored: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The live config from state, with the unset values for keys it lacks.

    State written before a key was managed, or a None that Pulumi dropped, must not read as a
    change (a missing max_waiting read as 0 would replace every consumer).
    """
    return {**defaults, **(stored or {})}


UNORDERED = frozenset({"subjects", "filter_subjects"})
"""List fields the server treats as sets: another order is no difference (nor a reason to write)."""


def same_members(want: Any, have: Any) -> bool:
    if not isinstance(want, list | tuple) or not isinstance(have, list | tuple):
        return False
    return sorted(map(repr, normalize(list(want)))) == sorted(map(repr, normalize(list(have))))


def config_changes(desired: Mapping[str, Any], live: Mapping[str, Any]) -> Changes:
    """{field: (desired, live)} for every managed field whose live value differs.

    A field missing from `live` counts as its zero value; a desired None means "absent"; subject
    lists compare as sets.
    """
    return {
        key: (want, have)
        for key, (want, have) in differences(desired, live).items()
        if not (key in UNORDERED and same_members(want, have))
    }


SERVER_METADATA_PREFIX = "_nats."
"""Metadata keys the server writes itself (server version, API level); never sent back."""


def read_modify_write(
    live: Mapping[str, Any], rendered: Mapping[str, Any], changes: Changes
) -> dict[str, Any]:
    """The config an in-place update sends: the live one with jsb-infra's fields laid over it.

    The server takes an update as a whole new config, so sending only the rendered fields would reset
    every field jsb-infra does not manage (a CLI-made stream's allow_direct, metadata) to its default.
    Changed managed fields the renderer leaves out get their unset value (None: removed); a subject
    list holding the same subjects keeps the server's order.
    """
    config = dict(live)
    overlay = {key: want for key, (want, _) in changes.items() if key not in rendered}
    for key, value in {**overlay, **rendered}.items():
        if key in UNORDERED and same_members(value, config.get(key)):
            continue  # the same set in the server's order: not rewritten
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    metadata = {
        k: v for k, v in (config.get("metadata") or {}).items() if not k.startswith(SERVER_METADATA_PREFIX)
    }
    if metadata:
        config["metadata"] = metadata
    else:
        config.pop("metadata", None)
    return config


def existed_before(info: Mapping[str, Any], round_trip: float) -> bool:
    """Whether the object a CREATE answered with was there before the request (an equal config: the
    server answers it as if created).

    Its `did_create` cannot tell: nats-server 2.15.1 answers `true` for an existing stream too, and a
    consumer's answer has no such flag. Both carry two server timestamps, `created` and `ts` (when
    the server answered): an object this request made is younger than the whole round trip."""
    try:
        age = (server_time(info["ts"]) - server_time(info["created"])).total_seconds()
    except (KeyError, ValueError):
        return False
    return age > round_trip


def server_time(text: str) -> datetime:
    """An RFC 3339 server timestamp (nanoseconds cut to microseconds, which Python keeps)."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise ValueError(f"not a server timestamp: {text!r}")
    head, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{micros}{'+00:00' if zone == 'Z' else zone}")


def announce(message: str) -> None:
    """A line in the `pulumi up` output. Dynamic providers have no log API, but the engine shows what
    a provider host writes to stderr (as a diagnostic of the run)."""
    print(f"jsb-infra: {message}", file=sys.stderr, flush=True)


def describe_changes(changes: Changes) -> str:
    return "; ".join(f"{k}: desired {want!r}, server has {have!r}" for k, (want, have) in changes.items())


# -- update or replace -------------------------------------------------------------------------------
Transitions = Mapping[str, frozenset[tuple[Any, Any]]]


def immutable_paths(
    changes: Changes, immutable: Mapping[str, str], in_place: Transitions | None = None
) -> list[str]:
    """The replace keys for `changes`: immutable fields, except transitions the server allows in place.

    `immutable` maps a config field to the input path reported to Pulumi; `in_place` lists the
    (live, desired) value pairs of an immutable field that may still change in place.
    """
    out: list[str] = []
    for field_name, (want, have) in changes.items():
        if field_name not in immutable:
            continue
        if in_place and any((have, want) == allowed for allowed in in_place.get(field_name, ())):
            continue  # compared, not hashed: a live value may be a dict (a mirror) or a list
        if immutable[field_name] not in out:
            out.append(immutable[field_name])
    return out


@dataclass
class Plan:
    """What a diff found: changed config fields, other changed inputs, and what forces a replace."""

    config: Changes = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.config or self.inputs or self.replaces)

    def result(self) -> DiffResult:
        """Names are fixed on the server, so a replacement must delete first (create would collide)."""
        return DiffResult(
            changes=self.changed,
            replaces=self.replaces,
            delete_before_replace=True if self.replaces else None,
        )


def plan_diff(
    desired: Mapping[str, Any],
    live: Mapping[str, Any],
    *,
    immutable: Mapping[str, str],
    in_place: Transitions | None = None,
    identity: Mapping[str, tuple[Any, Any]] | None = None,
    inputs: Mapping[str, tuple[Any, Any]] | None = None,
) -> Plan:
    """Compare a desired config with the last-read live one, plus inputs that are not config.

    `identity` {path: (old, new)}: a known change replaces; an unknown new value (preview) is shown
    as a change only, and the real `up`, where the value is known, decides. `inputs` {path: (old, new)}:
    a change updates in place.
    """
    plan = Plan()
    plan.config = config_changes(desired, live)
    plan.replaces = immutable_paths(plan.config, immutable, in_place)
    for path, (old, new) in (identity or {}).items():
        if is_unknown(new):
            plan.inputs.append(path)
        elif normalize(old) != normalize(new) and path not in plan.replaces:
            plan.replaces.append(path)
    for path, (old, new) in (inputs or {}).items():
        if is_unknown(new) or normalize(old) != normalize(new):
            plan.inputs.append(path)
    return plan


def adopt_decision(
    kind: str,
    name: str,
    desired: Mapping[str, Any],
    live: Mapping[str, Any],
    *,
    adopt: bool,
    immutable: Mapping[str, str],
    in_place: Transitions | None = None,
) -> Changes:
    """Decide whether `create` may take over an existing object; returns the fields to update.

    Equal: adopt as is ({}). Different: refuse with every differing field, unless `adopt` is set,
    then update in place; a difference the server cannot update is refused either way.
    """
    changes = config_changes(desired, live)
    if not changes:
        return {}
    if not adopt:
        raise ProviderError(
            f"{kind} {name!r} already exists on the server with a different config "
            f"({describe_changes(changes)}); "
            "set `adopt: true` on the pair to update it in place, or change the spec to match"
        )
    fixed = {k: v for k, v in changes.items() if immutable_paths({k: v}, immutable, in_place)}
    if fixed:
        raise ProviderError(
            f"cannot adopt {kind} {name!r}: the server cannot change {describe_changes(fixed)} in place; "
            "delete or migrate it by hand, or change the spec to match"
        )
    return changes


ADOPTS = "adopts"
"""The input a create's check adds when the object is already on the server: the preview shows what
the create will take over (`pulumi import` cannot, for dynamic resources). Not compared by diff."""


def carried_adoption_note(olds: Mapping[str, Any], inputs: dict[str, Any]) -> None:
    """The `adopts` note a create's check wrote stays as it was (a later check does not look again):
    it never reads as a difference, in a preview or in a saved plan."""
    inputs.pop(ADOPTS, None)
    if ADOPTS in olds:
        inputs[ADOPTS] = olds[ADOPTS]


def is_create(olds: Mapping[str, Any]) -> bool:
    """Whether a check is for a new resource (the engine sends no old inputs but the provider)."""
    return not (set(olds) - {"__provider"})


def adoption_note(
    kind: str,
    name: str,
    info: Mapping[str, Any],
    desired: Mapping[str, Any],
    live: Mapping[str, Any],
    *,
    adopt: bool,
    immutable: Mapping[str, str],
    in_place: Transitions | None = None,
) -> str:
    """What the preview says of an object the create will find on the server; raises ProviderError
    (the create's own refusal, said at preview) when the create would refuse it."""
    changes = adopt_decision(kind, name, desired, live, adopt=adopt, immutable=immutable, in_place=in_place)
    held = f"{kind} {name!r} is on the server (created {info.get('created', '?')}"
    messages = (info.get("state") or {}).get("messages")
    held += f", {messages} message(s))" if messages is not None else ")"
    if not changes:
        return f"{held}: equal to the spec; the create adopts it as is"
    return f"{held}: the create adopts it and updates in place {', '.join(sorted(changes))}"


def connection_key(connection: Any) -> str:
    """A connection input as a cache key: the same settings give the same key, whatever the order."""
    return json.dumps(connection, sort_keys=True, default=str)


_REPLACED: set[str] = set()
"""Objects a diff of this host process planned to replace. The engine checks a replacement again
with no old inputs, as if it were new; that check must not take the object it deletes first for one
to adopt (one provider host serves a whole run, and the diff comes before that check)."""


def being_replaced(connection: Any, old: str, new: str) -> None:
    """A diff planned to replace the object `old` (e.g. "stream orders") with `new` on `connection`.
    Only a replacement that keeps the name (and the connection) deletes the very object its check
    would find; under another name, an object found there is one to adopt, as for any create."""
    if old == new:
        _REPLACED.add(f"{connection_key(connection)} {new}")


def replacing(connection: Any, what: str) -> bool:
    return f"{connection_key(connection)} {what}" in _REPLACED


_UNREACHABLE: set[str] = set()
"""Connections a check found unreachable in this host process: a preview without the servers (a
review job) asks each only once, not once per resource."""


def look_up_for_preview(provider: JsbProvider, connection: Any, coro: Coroutine[Any, Any, T]) -> T | None:
    """The answer of a read-only lookup a check makes, or None when the server cannot be asked: the
    preview goes on without it, and the create decides as it always does."""
    key = connection_key(connection)
    if key in _UNREACHABLE:
        coro.close()
        return None
    try:
        return provider.run(coro)
    except ProviderError:
        _UNREACHABLE.add(key)
        return None


_PRESENT: dict[tuple[str, str], frozenset[str]] = {}
"""Per connection and scope (streams: "", a stream's durables: its name), the names on the server
when a check first asked: a create's check looks an object up only when its name is there, so a
new fleet costs one NAMES request per connection instead of one INFO per object. The engine checks
an object once per run (a replacement aside, which `replacing` covers), before creating it. A stale
entry can only hide an adoption note, never cause a refusal: every note or refusal comes from a live
INFO, and the create decides again on the server's answer."""


def present_on_server(
    provider: JsbProvider, connection: Any, stream: str | None = None
) -> frozenset[str] | None:
    """The stream names (or with `stream`, its durables' names) on the server, asked once per host
    process; None when the server cannot be asked."""
    key = (connection_key(connection), stream or "")
    if stream:
        streams = present_on_server(provider, connection)
        if streams is not None and stream not in streams:
            return frozenset()  # a stream that was not there has no durables from before this run
    if key not in _PRESENT:

        async def names() -> list[str]:
            async with settings.admin_session(connection) as js:
                return await (js.consumer_names(stream) if stream else js.stream_names())

        found = look_up_for_preview(provider, connection, names())
        if found is None:
            return None
        _PRESENT[key] = frozenset(found)
    return _PRESENT[key]


def preview_adoption(
    provider: JsbProvider,
    inputs: dict[str, Any],
    *,
    kind: str,
    name: str,
    connection: Any,
    present: tuple[str | None, str],
    lookup: Coroutine[Any, Any, dict[str, Any] | None],
    desired: Mapping[str, Any],
    live_of: Callable[[dict[str, Any]], Mapping[str, Any]],
    immutable: Mapping[str, str],
    in_place: Transitions | None = None,
) -> list[CheckFailure]:
    """The check of a create: when the object is on the server already, note in `inputs` what the
    create will do with it (`adopts`), or return the create's own refusal as a check failure of
    `config`. `present`: (None, stream) or (stream, durable), looked for among the server's names
    first; `lookup`: its info (None: not there). Nothing is written. A replacement's check is
    skipped: the object it would find is the one the replacement deletes first."""
    try:
        settings.for_connection(connection).admin_connection()
    except settings.ProviderSettingsError as err:
        lookup.close()
        return [CheckFailure("connection", str(err))]
    scope, member = present
    if replacing(connection, f"{kind} {name}") or member not in (
        present_on_server(provider, connection, scope) or ()
    ):
        lookup.close()
        return []
    info = look_up_for_preview(provider, connection, lookup)
    if info is None:
        return []
    try:
        inputs[ADOPTS] = adoption_note(
            kind,
            name,
            info,
            desired,
            live_of(info),
            adopt=bool(inputs.get("adopt")),
            immutable=immutable,
            in_place=in_place,
        )
    except ProviderError as err:
        return [CheckFailure("config", str(err))]
    return []


# -- inputs --------------------------------------------------------------------------------------------


def bool_failures(news: Mapping[str, Any], props: tuple[str, ...]) -> list[CheckFailure]:
    """A failure for each of `props` that is known and not a boolean."""
    return [
        CheckFailure(prop, f"{prop}: must be true or false")
        for prop in props
        if not is_unknown(news.get(prop)) and not isinstance(news.get(prop), bool)
    ]


def old_state_error(kind: str) -> ProviderError:
    """State written for the one-input-per-pair shape (a `pair` key): this provider cannot read it."""
    return ProviderError(
        f"this {kind} state was written by an older jsb-infra (it holds a `pair`); "
        "run `jsb-infra migrate-state` on the stack first"
    )


# -- server refusals ------------------------------------------------------------------------------------
SERVER_HINTS: dict[int, str] = {
    10065: "another stream on the server already captures some of these subjects (a stream's subjects "
    "may not overlap another's); find it with `nats stream ls --subject <subject>`, then delete or "
    "rename it, or change the pair's apps",
    10058: "a stream of that name exists with a different config; set `adopt: true` on the pair to take "
    "it over, or change the spec to match",
    10148: "a consumer of that name exists with a different config; set `adopt: true` on the pair to take "
    "it over, or change the spec to match",
    10052: "the server refused the stream config; change the spec field it names",
    10012: "the server has no room for it (JetStream memory or storage limits, or the account's "
    "limits); raise them or lower the pair's stream_options",
    10074: "replicas above 1 need a JetStream cluster; set stream_options.replicas: 1 on a single server",
    10039: "JetStream is not enabled for the admin's account; enable it (`jetstream: enabled` on the "
    "account) or use an admin user of an account that has it",
    10076: "JetStream is not enabled on the server; start it with `-js` or a `jetstream {}` block",
    10059: "the stream does not exist on the server; run `pulumi refresh` and `pulumi up` again",
}
"""One-line hints for the server refusals a user can meet (err_code, nats-server server/errors.json)."""


def explain(err: JetStreamApiError) -> str:
    """A server refusal as one line: what was asked, what the server said, and what to do."""
    action = err.subject.removeprefix(f"{API}.")
    verb, _, name = action.partition(".")[2].partition(".")
    kind = action.partition(".")[0].lower()
    what = f"{kind} {verb.lower()} of {name.replace('.', '/')!r}" if name else action
    hint = SERVER_HINTS.get(err.err_code, "")
    return f"the server refused the {what}: {err.description} (err_code {err.err_code})" + (
        f"; {hint}" if hint else ""
    )


# -- the provider base ---------------------------------------------------------------------------------
class JsbProvider(ResourceProvider):
    """Holds no state of its own: it is pickled into every resource's state."""

    serialize_as_secret_always = False

    def configure(self, req: ConfigureRequest) -> None:
        # The host answers the engine on worker threads while the admin connection lives on its own
        # loop thread; a shorter GIL switch interval (CPython's default is 5 ms) lets that thread
        # handle the server's answers sooner when workers are busy (a refresh's reads: ~14 ms -> ~10 ms
        # each at 100 pairs). This process is the provider host and nothing else.
        sys.setswitchinterval(HOST_SWITCH_INTERVAL)
        settings.configure(req.config)

    @staticmethod
    def run(coro: Coroutine[Any, Any, T]) -> T:
        """Run one call's I/O on the host's shared admin loop and connection. A refusal, a cluster that
        stayed unavailable for the whole retry budget, a change that did not settle, a failed admin
        connect or a server refusal (with a hint for the codes jsb-infra knows) is raised as one
        `ProviderError` line: the host sends `traceback.format_exc()` to the engine, so the traceback
        limit is set to 0 for that raise (it applies to this host process only, and any other
        exception gets its full traceback back)."""
        _full_tracebacks()
        try:
            return connection.shared.run(coro)
        except JetStreamApiError as err:
            sys.tracebacklimit = 0
            raise ProviderError(explain(err)) from None
        except nats.errors.TimeoutError:
            sys.tracebacklimit = 0
            raise ProviderError(
                "no answer from the JetStream API in time: is JetStream enabled on the server and for the "
                "admin's account (jsb:admin), and is the server (or its cluster's meta leader) up? "
                "A re-run is safe"
            ) from None
        except ONE_LINE_ERRORS as err:
            sys.tracebacklimit = 0
            raise ProviderError(str(err)) from None


ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (
    ProviderError,
    ManagementUnavailable,
    NotSettled,
    AdminConnectError,
    settings.ProviderSettingsError,
    resolver.ResolverError,
)
"""Failures whose message says everything: what failed and what to do. Anything else is a bug and
keeps its traceback."""


def _full_tracebacks() -> None:
    if hasattr(sys, "tracebacklimit"):
        del sys.tracebacklimit
