"""Stack state from before PairStream -> the PairStream layout. Pure: an exported deployment in, one out.

Before, each pair was an `AppPair` component (`jsb:index:AppPair`) with a `Stream` and one `Consumer`
per app as children, and each app had its own `AppCredential`: six resources per pair. The Pulumi
engine and SDK spend milliseconds per registered resource whatever it does, so a fleet paid for the
resource count on every run. Now a pair is one `PairStream` (the stream and its consumers) and all
apps' keys are one `AppCredentials`. Without this migration the new program would see the old
resources as gone (and delete the streams, consumers and, worse, every app's key) and the new ones
as new; with it, the new resources take over what the old ones recorded: same server objects, same
keys, no API write.

`migrate(document, providers)` takes what `pulumi stack export --show-secrets` writes (secrets as
`{SECRET_SIG: SECRET_VALUE, "plaintext": "<JSON text>"}`), returns the migrated document and a report.
It refuses, naming the resource and the rule, whatever it cannot map one to one; it never guesses. A
migrated deployment migrates to itself, unchanged.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jsb_infra.core.credentials import public_key_of

SECRET_SIG = "4dabf18193072939515e22adb298388d"
"""The key marking a secret value in Pulumi's state (sdk/go/common/resource/sig, `Secret`)."""
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"

STACK_TYPE = "pulumi:pulumi:Stack"
APP_PAIR_TYPE = "jsb:index:AppPair"
STREAM_TYPE = "pulumi-python:dynamic/jsb:Stream"
CONSUMER_TYPE = "pulumi-python:dynamic/jsb:Consumer"
CREDENTIAL_TYPE = "pulumi-python:dynamic/jsb:AppCredential"
PAIR_STREAM_TYPE = "pulumi-python:dynamic/jsb:PairStream"
CREDENTIALS_TYPE = "pulumi-python:dynamic/jsb:AppCredentials"
OLD_TYPES = (APP_PAIR_TYPE, STREAM_TYPE, CONSUMER_TYPE, CREDENTIAL_TYPE)

CREDENTIALS_NAME = "app-credentials"
LAYOUT_OUTPUT = "layout"
LAYOUT = "pair-stream"
PROVIDER_KEY = "__provider"
COMMAND = "jsb-infra migrate-state"

STREAM_OUTPUTS_DROPPED = (PROVIDER_KEY, "pair")
CONSUMER_OUTPUTS_DROPPED = (PROVIDER_KEY, "pair", "stream_created")
REFERENCE_LISTS = ("dependencies",)
REFERENCE_FIELDS = ("parent", "deletedWith")


class MigrationRefused(ValueError):
    """The deployment holds something the migration cannot map; nothing was changed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class SerializedProviders:
    """The `__provider` values of the new resources (what pulumi.dynamic stores for each)."""

    pair_stream: Any
    credentials: Any


@dataclass
class MigrationReport:
    """What the migration did, one line per mapped resource or rewrite."""

    pairs: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    layout_added: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.pairs or self.credentials or self.rewritten or self.layout_added)

    def lines(self) -> list[str]:
        if not self.changed:
            return ["nothing to migrate: the state already has the pair-stream layout"]
        out = [*self.pairs, *self.credentials, *self.rewritten]
        if self.layout_added:
            out.append(f"stack outputs: {LAYOUT_OUTPUT} = {LAYOUT!r}")
        return out


# -- secrets as `pulumi stack export --show-secrets` writes them ----------------------------------------
def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def secret(value: Any) -> dict[str, Any]:
    """A plaintext secret envelope, as the export writes one (the import encrypts it)."""
    return {SECRET_SIG: SECRET_VALUE, "plaintext": json.dumps(value, sort_keys=True, separators=(",", ":"))}


def reveal(value: Any, where: str) -> Any:
    """The value of a secret envelope (a plain value as is); refuses an encrypted one."""
    if not is_secret(value):
        return value
    if "plaintext" not in value:
        raise MigrationRefused(
            [f"{where}: the secret is encrypted; export the stack with `pulumi stack export --show-secrets`"]
        )
    return json.loads(value["plaintext"])


def serialized_providers() -> SerializedProviders:
    """The new resources' `__provider`, as pulumi.dynamic serializes them (imports Pulumi: deploy side)."""
    from pulumi.dynamic.dynamic import serialize_provider

    from jsb_infra.deploy.providers.credential import AppCredentialsProvider
    from jsb_infra.deploy.providers.pair_stream import PairStreamProvider

    def stored(provider: Any) -> Any:
        text = serialize_provider(provider)
        # pulumi.dynamic stores it as a secret unless the provider opts out (as JsbProvider does)
        return secret(text) if getattr(provider, "serialize_as_secret_always", True) else text

    return SerializedProviders(stored(PairStreamProvider()), stored(AppCredentialsProvider()))


# -- URNs ---------------------------------------------------------------------------------------------
def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def urn_prefix(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::` of a URN."""
    stack, project = urn.split("::", 2)[:2]
    return f"{stack}::{project}::"


def child_urn(parent_urn: str | None, prefix: str, type_: str, name: str) -> str:
    """The URN the engine gives a resource of `type_` named `name` under `parent_urn` (the Stack's
    children, and resources without a parent, carry no parent type)."""
    if parent_urn is None or parent_urn.split("::")[2] == STACK_TYPE:
        return f"{prefix}{type_}::{name}"
    return f"{prefix}{parent_urn.split('::')[2]}${type_}::{name}"


# -- the migration ------------------------------------------------------------------------------------
@dataclass
class _Pair:
    component: dict[str, Any]
    streams: list[dict[str, Any]] = field(default_factory=list)
    consumers: list[dict[str, Any]] = field(default_factory=list)


def _describe(resource: dict[str, Any]) -> str:
    return f"{resource['type'].rsplit(':', 1)[-1]} {urn_name(resource['urn'])!r}"


def _check_settled(deployment: dict[str, Any], old: list[dict[str, Any]], problems: list[str]) -> None:
    if deployment.get("pending_operations"):
        problems.append(
            "the stack has pending operations (an interrupted update): run `pulumi cancel` or "
            "`pulumi refresh --clear-pending-creates` with the previous jsb-infra first"
        )
    for resource in old:
        for flag in ("delete", "pendingReplacement"):
            if resource.get(flag):
                problems.append(
                    f"{_describe(resource)}: marked {flag} (a replace that did not finish); run `pulumi up` "
                    "with the previous jsb-infra version until it succeeds, then migrate"
                )


def _group_pairs(old: list[dict[str, Any]], problems: list[str]) -> list[_Pair]:
    pairs = {r["urn"]: _Pair(r) for r in old if r["type"] == APP_PAIR_TYPE}
    for resource in old:
        if resource["type"] not in (STREAM_TYPE, CONSUMER_TYPE):
            continue
        pair = pairs.get(resource.get("parent") or "")
        if pair is None:
            problems.append(
                f"{_describe(resource)}: has no AppPair component as its parent, so it belongs to no pair"
            )
        elif resource["type"] == STREAM_TYPE:
            pair.streams.append(resource)
        else:
            pair.consumers.append(resource)
    return list(pairs.values())


def _pair_stream(pair: _Pair, parent: str | None, prefix: str, problems: list[str]) -> dict[str, Any] | None:
    found: list[str] = []
    entry = _pair_stream_entry(pair, parent, prefix, found)
    problems.extend(found)
    return entry


def _pair_stream_entry(
    pair: _Pair, parent: str | None, prefix: str, problems: list[str]
) -> dict[str, Any] | None:
    """The PairStream of one AppPair (its `__provider` set by the caller), or None with the problems."""
    name = urn_name(pair.component["urn"])
    if not pair.streams:
        for consumer in pair.consumers:
            problems.append(
                f"{_describe(consumer)}: a Consumer without its Stream (AppPair {name!r} has none)"
            )
        return None
    if len(pair.streams) > 1:
        problems.append(f"AppPair {name!r}: has {len(pair.streams)} Streams; a pair has one")
        return None
    [stream] = pair.streams
    spec = stream.get("inputs", {}).get("pair")
    apps = list(spec.get("apps") or []) if isinstance(spec, dict) else []
    stream_name = stream.get("outputs", {}).get("name") or stream.get("id")
    consumers: dict[str, dict[str, Any]] = {}
    for consumer in pair.consumers:
        app = consumer.get("inputs", {}).get("app")
        outputs = consumer.get("outputs", {})
        if app not in apps:
            problems.append(
                f"{_describe(consumer)}: app {app!r} is not an app of the pair ({', '.join(apps)})"
            )
        elif app in consumers:
            problems.append(f"AppPair {name!r}: two Consumers for app {app!r}")
        elif outputs.get("stream") != stream_name:
            problems.append(
                f"{_describe(consumer)}: is on stream {outputs.get('stream')!r}, its pair's Stream is "
                f"{stream_name!r}"
            )
        else:
            consumers[app] = {k: v for k, v in outputs.items() if k not in CONSUMER_OUTPUTS_DROPPED}
    missing = [app for app in apps if app not in consumers]
    if missing and not problems:
        problems.append(
            f"AppPair {name!r}: no Consumer for app(s) {', '.join(missing)}; run `pulumi up` with the "
            "previous jsb-infra version so the pair is complete, then migrate"
        )
    if problems:
        return None
    if stream.get("provider") and any(c.get("provider") != stream.get("provider") for c in pair.consumers):
        problems.append(f"AppPair {name!r}: its Stream and Consumers use different providers")
        return None
    outputs = {k: v for k, v in stream.get("outputs", {}).items() if k not in STREAM_OUTPUTS_DROPPED}
    entry: dict[str, Any] = {
        "urn": child_urn(parent, prefix, PAIR_STREAM_TYPE, name),
        "custom": True,
        "id": stream.get("id") or stream_name,
        "type": PAIR_STREAM_TYPE,
        "inputs": {PROVIDER_KEY: None, "pair": spec},
        "outputs": {PROVIDER_KEY: None, "pair": spec, "stream": outputs, "consumers": consumers},
        "parent": parent,
        "protect": bool(stream.get("protect")),
        "provider": stream.get("provider"),
        "propertyDependencies": {PROVIDER_KEY: [], "pair": []},
        "created": stream.get("created"),
        "modified": stream.get("modified"),
    }
    return {k: v for k, v in entry.items() if v not in (None, False)}


def _app_credentials(
    credentials: list[dict[str, Any]], parent: str | None, prefix: str, problems: list[str]
) -> dict[str, Any] | None:
    """The AppCredentials of all AppCredentials (its `__provider` set by the caller), or None."""
    public_keys: dict[str, str] = {}
    seeds: dict[str, str] = {}
    for resource in credentials:
        where = _describe(resource)
        app = resource.get("inputs", {}).get("app")
        outputs = resource.get("outputs", {})
        try:
            seed = reveal(outputs.get("seed"), f"{where}: outputs.seed")
        except MigrationRefused as err:
            problems.extend(err.problems)
            continue
        key = outputs.get("public_key")
        if not isinstance(app, str) or not app:
            problems.append(f"{where}: has no app")
        elif app in public_keys:
            problems.append(f"app {app!r}: two credentials ({where} and another); an app has one key")
        elif not isinstance(seed, str) or not isinstance(key, str) or _public_key(seed) != key:
            problems.append(f"{where}: its seed is not the seed of its public key {key!r}")
        else:
            public_keys[app], seeds[app] = key, seed
    providers = {r.get("provider") for r in credentials}
    if len(providers) > 1:
        problems.append("the AppCredential resources use different providers")
    if problems or not credentials:
        return None
    apps = sorted(public_keys)
    entry: dict[str, Any] = {
        "urn": child_urn(parent, prefix, CREDENTIALS_TYPE, CREDENTIALS_NAME),
        "custom": True,
        "id": CREDENTIALS_NAME,
        "type": CREDENTIALS_TYPE,
        "inputs": {PROVIDER_KEY: None, "apps": apps},
        "outputs": {
            PROVIDER_KEY: None,
            "apps": apps,
            "public_keys": {app: public_keys[app] for app in apps},
            "seeds": secret({app: seeds[app] for app in apps}),
        },
        "parent": parent,
        "protect": any(r.get("protect") for r in credentials),
        "provider": providers.pop(),
        "propertyDependencies": {PROVIDER_KEY: [], "apps": []},
        "additionalSecretOutputs": ["seeds"],
        "created": min(str(r.get("created") or "") for r in credentials) or None,
        "modified": max(str(r.get("modified") or "") for r in credentials) or None,
    }
    return {k: v for k, v in entry.items() if v not in (None, False)}


def _public_key(seed: str) -> str | None:
    try:
        return public_key_of(seed)
    except Exception:  # nkeys raises several error types for a malformed seed
        return None


def _dedup(urns: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(urns))


def _rewrite_references(
    resource: dict[str, Any], renamed: dict[str, str], removed: set[str], problems: list[str]
) -> bool:
    """Point `resource`'s references at the new URNs; True when something changed."""
    changed = False

    def mapped(urns: list[str]) -> list[str]:
        return _dedup(
            renamed.get(u, u) for u in urns if u != resource["urn"] and renamed.get(u, u) not in removed
        )

    for key in REFERENCE_LISTS:
        if isinstance(resource.get(key), list):
            new = mapped(resource[key])
            if new != resource[key]:
                resource[key], changed = new, True
    deps = resource.get("propertyDependencies")
    if isinstance(deps, dict):
        for prop, urns in deps.items():
            if isinstance(urns, list):
                new = mapped(urns)
                if new != urns:
                    deps[prop], changed = new, True
    for key in REFERENCE_FIELDS:
        target = resource.get(key)
        if isinstance(target, str) and target in removed:
            if target not in renamed:
                problems.append(
                    f"{_describe(resource)}: its {key} {urn_name(target)!r} is removed by the migration"
                )
            else:
                resource[key], changed = renamed[target], True
    return changed


def migrate(
    document: dict[str, Any], providers: SerializedProviders | Callable[[], SerializedProviders]
) -> tuple[dict[str, Any], MigrationReport]:
    """The migrated copy of `document` (`pulumi stack export --show-secrets` output) and what changed.

    `providers`: the new resources' `__provider` values, or a function giving them (called only once
    the deployment is known to migrate). Raises MigrationRefused listing every problem; `document` is never
    modified.
    """
    result = copy.deepcopy(document)
    deployment = result.get("deployment", result)
    resources: list[dict[str, Any]] = list(deployment.get("resources") or [])
    report = MigrationReport()
    problems: list[str] = []

    old = [r for r in resources if r.get("type") in OLD_TYPES]
    new_types = sorted(
        {r["type"] for r in resources if r.get("type") in (PAIR_STREAM_TYPE, CREDENTIALS_TYPE)}
    )
    stack = next((r for r in resources if r.get("type") == STACK_TYPE), None)
    layout = (stack or {}).get("outputs", {}).get(LAYOUT_OUTPUT)
    if layout is not None and layout != LAYOUT:
        problems.append(f"stack outputs: {LAYOUT_OUTPUT} is {layout!r}; this version knows only {LAYOUT!r}")
    if old and new_types:
        problems.append(
            f"the state holds both old resources ({_describe(old[0])}, ...) and new ones ({new_types[0]}); "
            "restore the backup taken before the earlier migration and run it again"
        )
    _check_settled(deployment, old, problems)
    if problems:
        raise MigrationRefused(problems)

    if old:
        parent = stack["urn"] if stack else None
        prefix = urn_prefix(old[0]["urn"])
        pair_groups = _group_pairs(old, problems)
        replacement: dict[str, dict[str, Any]] = {}  # first old URN of a group -> its new resource
        renamed: dict[str, str] = {}
        for group in pair_groups:
            entry = _pair_stream(group, parent, prefix, problems)
            if entry is None:
                continue
            sources = [group.component, *group.streams, *group.consumers]
            replacement[group.streams[0]["urn"]] = entry
            renamed.update({r["urn"]: entry["urn"] for r in sources})
            consumers = ", ".join(sorted(entry["outputs"]["consumers"]))
            report.pairs.append(
                f"pair {urn_name(entry['urn'])!r}: AppPair + Stream {entry['id']!r} + Consumers "
                f"({consumers}) -> PairStream{' (protected)' if entry.get('protect') else ''}"
            )
        credentials = [r for r in old if r["type"] == CREDENTIAL_TYPE]
        creds_entry = _app_credentials(credentials, parent, prefix, problems)
        if creds_entry is not None:
            replacement[credentials[0]["urn"]] = creds_entry
            renamed.update({r["urn"]: creds_entry["urn"] for r in credentials})
            report.credentials.append(
                f"{len(credentials)} AppCredential ({', '.join(creds_entry['inputs']['apps'])}) -> "
                f"AppCredentials {CREDENTIALS_NAME!r} (seeds secret)"
            )
        if problems:
            raise MigrationRefused(problems)

        removed = {r["urn"] for r in old}
        migrated: list[dict[str, Any]] = []
        for resource in resources:
            if resource["urn"] in replacement:
                migrated.append(replacement[resource["urn"]])
            elif resource["urn"] not in removed:
                if _rewrite_references(resource, renamed, removed, problems):
                    report.rewritten.append(f"{_describe(resource)}: references point at the new resources")
                migrated.append(resource)
        if problems:
            raise MigrationRefused(problems)
        resolved = providers() if callable(providers) else providers
        for entry in replacement.values():
            provider = resolved.pair_stream if entry["type"] == PAIR_STREAM_TYPE else resolved.credentials
            entry["inputs"][PROVIDER_KEY] = entry["outputs"][PROVIDER_KEY] = provider
        deployment["resources"] = migrated

    if stack is not None and layout is None:
        stack.setdefault("outputs", {})[LAYOUT_OUTPUT] = LAYOUT
        report.layout_added = True
    return result, report
