"""Stack state of an older resource layout -> the app-pair layout. Pure: an exported deployment in, one out.

Three layouts have existed (the stack output `layout` names the last two):

- before pair-stream (no `layout` output): per pair an `AppPair` component (`jsb:index:AppPair`)
  with a `Stream` and one `Consumer` per app, each carrying the whole pair as its input; per app an
  `AppCredential` under the stack;
- `pair-stream`: per pair one `PairStream` (the stream and its consumers, inputs `{pair}`), one
  `AppCredentials` with every app's key;
- `app-pair` (what the program writes now): per pair an `AppPair` component `P` with `P-stream` and
  `P-<app>-consumer` children whose inputs are the derived JetStream configs (so `pulumi preview
  --diff` shows the config that changes, not the pair), `P-<app>-permissions` documents; one
  `AppAccounts` component `accounts` holding one `AppCredential` per app, the `server-documents`,
  the `accounts-include` and the JWT resources.

Pulumi identifies a resource by its URN (type and parent chain, name): without this migration the
new program would see the old resources as gone (and delete the streams, consumers and, worse, every
app's key) and the new ones as new. With it, the new resources take over what the old ones recorded:
same server objects, same keys, no API write. A stack from before pair-stream goes through the
pair-stream layout on the way (one conversion per step, each refusing what it cannot map).

Every new input is derived from the stored pair by the pure core (`jsb_infra.core.topology`), as the
new program derives it from the spec; every output the server reported (live config, `created`,
`unset`, message count, adopt flag, DLQ keeper presence) is kept as recorded. So the first `up`
afterwards compares the same desired config with the same recorded live config as before: nothing
to write. `PermissionDocument` resources are not made up here: they do no server I/O, and the next
`up` creates them.

`migrate(document, providers)` takes what `pulumi stack export --show-secrets` writes (secrets as
`{SECRET_SIG: SECRET_VALUE, "plaintext": "<JSON text>"}`), returns the migrated document and a report.
It refuses, naming the resource and the rule, whatever it cannot map one to one; it never guesses. A
migrated deployment migrates to itself, unchanged.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from jsb_infra.core.credentials import public_key_of
from jsb_infra.core.spec import STORED_CONTEXT, Pair, problems_of
from jsb_infra.core.topology import consumer_config, dlq_keeper_config, pair_incarnation_key, stream_config
from jsb_infra.nats_admin import normalize

SECRET_SIG = "4dabf18193072939515e22adb298388d"
"""The key marking a secret value in Pulumi's state (sdk/go/common/resource/sig, `Secret`)."""
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"

STACK_TYPE = "pulumi:pulumi:Stack"
APP_PAIR_TYPE = "jsb:index:AppPair"
APP_ACCOUNTS_TYPE = "jsb:index:AppAccounts"
STREAM_TYPE = "pulumi-python:dynamic/jsb:Stream"
CONSUMER_TYPE = "pulumi-python:dynamic/jsb:Consumer"
CREDENTIAL_TYPE = "pulumi-python:dynamic/jsb:AppCredential"
PERMISSION_DOCUMENT_TYPE = "pulumi-python:dynamic/jsb:PermissionDocument"
PAIR_STREAM_TYPE = "pulumi-python:dynamic/jsb:PairStream"
CREDENTIALS_TYPE = "pulumi-python:dynamic/jsb:AppCredentials"
SERVER_DOCUMENTS_TYPE = "pulumi-python:dynamic/jsb:ServerDocuments"
ACCOUNTS_INCLUDE_TYPE = "pulumi-python:dynamic/jsb:AccountsInclude"
JWT_TYPES = (
    "pulumi-python:dynamic/jsb:AccountSigningKey",
    "pulumi-python:dynamic/jsb:JetStreamAccountJwt",
    "pulumi-python:dynamic/jsb:AppAccountJwt",
)
ACCOUNTS_CHILD_TYPES = (SERVER_DOCUMENTS_TYPE, ACCOUNTS_INCLUDE_TYPE, *JWT_TYPES)
"""What spans pairs and sits under the stack in both older layouts, under `AppAccounts` now (the
app credentials aside, which each older layout holds in its own type)."""

LAYOUT_OUTPUT = "layout"
BEFORE_PAIR_STREAM_LAYOUT = "before-pair-stream"
"""The layout before pair-stream (its stacks carry no `layout` output; the name is only reported)."""
PAIR_STREAM_LAYOUT = "pair-stream"
APP_PAIR_LAYOUT = "app-pair"
LAYOUT = APP_PAIR_LAYOUT
"""The layout the program writes and the migration produces (stack output `layout`)."""
KNOWN_LAYOUTS = (PAIR_STREAM_LAYOUT, APP_PAIR_LAYOUT)
"""The values of the `layout` output this version knows (the first ones migrate)."""

BEFORE_PAIR_STREAM_TYPES = frozenset({APP_PAIR_TYPE, STREAM_TYPE, CONSUMER_TYPE, CREDENTIAL_TYPE})
"""The resource types of the layout before pair-stream. The app-pair layout reuses them (with other
inputs and, for AppCredential, another parent): `older_layout_of` tells them apart."""
PAIR_STREAM_TYPES = frozenset({PAIR_STREAM_TYPE, CREDENTIALS_TYPE})
"""The resource types only the pair-stream layout has."""
OLDER_LAYOUT_TYPES: dict[str, frozenset[str]] = {
    BEFORE_PAIR_STREAM_LAYOUT: BEFORE_PAIR_STREAM_TYPES,
    PAIR_STREAM_LAYOUT: PAIR_STREAM_TYPES,
}
OLD_TYPES = tuple(sorted(BEFORE_PAIR_STREAM_TYPES))
"""The types of the layout before pair-stream (the name earlier versions used)."""

CREDENTIALS_NAME = "app-credentials"
ACCOUNTS_NAME = "accounts"
PROVIDER_KEY = "__provider"
COMMAND = "jsb-infra migrate-state"
STACK_CONFIG_CONNECTION: dict[str, Any] = {"stack_config": True}
"""The `connection` input of a Stream/Consumer that uses the stack's `jsb:` config (as every older
stack did)."""
OUTPUT_DIR_CONFIG = "jsb:outputDir"

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
    """The `__provider` values of the resources the migration writes (what pulumi.dynamic stores)."""

    stream: Any
    consumer: Any
    credential: Any
    documents: Any
    accounts_include: Any
    signing_key: Any = None
    jetstream_jwt: Any = None
    app_jwt: Any = None


PROVIDER_ROLES = {
    ACCOUNTS_INCLUDE_TYPE: "accounts_include",
    JWT_TYPES[0]: "signing_key",
    JWT_TYPES[1]: "jetstream_jwt",
    JWT_TYPES[2]: "app_jwt",
}
"""The SerializedProviders field of each resource type that only moves."""


@dataclass
class MigrationReport:
    """What the migration did, one line per mapped resource or rewrite."""

    pairs: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    layout_from: str | None = None
    layout_set: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.pairs or self.credentials or self.moved or self.rewritten or self.layout_set)

    def lines(self) -> list[str]:
        if not self.changed:
            return [f"nothing to migrate: the state already has the {LAYOUT} layout"]
        out = [*self.pairs, *self.credentials, *self.moved, *self.rewritten]
        if self.layout_set:
            out.append(f"stack outputs: {LAYOUT_OUTPUT} = {LAYOUT!r}")
        return out


# -- which layout a resource belongs to ------------------------------------------------------------------
def qualified_type(urn: str) -> str:
    """The type part of a URN: the parents' types and the resource's, joined by `$`."""
    return urn.split("::")[2]


def under_app_accounts(urn: str) -> bool:
    return APP_ACCOUNTS_TYPE in qualified_type(urn).split("$")[:-1]


def older_layout_of(urn: str, type_: str, outputs: Mapping[str, Any] | None = None) -> str | None:
    """The older layout a resource shows (`BEFORE_PAIR_STREAM_LAYOUT` or `PAIR_STREAM_LAYOUT`), or None.

    Reads what both an export and the engine's `readStackResourceOutputs` give (URN, type, outputs):
    a PairStream or AppCredentials is pair-stream; a Stream or Consumer whose outputs hold the `pair`,
    or an AppCredential not under an AppAccounts, is from before pair-stream; ServerDocuments,
    AccountsInclude and JWT resources not under an AppAccounts are older too (both older layouts
    placed them so; reported as pair-stream). An AppPair component looks the same in both and tells
    nothing."""
    if type_ in PAIR_STREAM_TYPES:
        return PAIR_STREAM_LAYOUT
    if type_ in (STREAM_TYPE, CONSUMER_TYPE) and "pair" in (outputs or {}):
        return BEFORE_PAIR_STREAM_LAYOUT
    if type_ == CREDENTIAL_TYPE and not under_app_accounts(urn):
        return BEFORE_PAIR_STREAM_LAYOUT
    if type_ in ACCOUNTS_CHILD_TYPES and not under_app_accounts(urn):
        return PAIR_STREAM_LAYOUT
    return None


def older_layout_resources(resources: Mapping[str, Any]) -> dict[str, list[str]]:
    """{older layout: [resource descriptions]} of a stack's resources, given as the engine's
    `readStackResourceOutputs` gives them ({urn: {"type": ..., "outputs": {...}}}); empty: none."""
    found: dict[str, list[str]] = {}
    for urn, resource in resources.items():
        if not isinstance(resource, Mapping):
            continue
        type_ = str(resource.get("type") or qualified_type(urn).rsplit("$", 1)[-1])
        layout = older_layout_of(urn, type_, resource.get("outputs"))
        if layout is not None:
            found.setdefault(layout, []).append(f"{type_.rsplit(':', 1)[-1]} {urn_name(urn)!r}")
    return found


def _older_layout(resource: dict[str, Any]) -> str | None:
    """`older_layout_of` for an exported resource (its inputs count too)."""
    type_ = resource.get("type", "")
    if type_ in (STREAM_TYPE, CONSUMER_TYPE) and "pair" in (resource.get("inputs") or {}):
        return BEFORE_PAIR_STREAM_LAYOUT
    return older_layout_of(resource["urn"], type_, resource.get("outputs"))


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

    from jsb_infra.deploy.providers.accounts_include import AccountsIncludeProvider
    from jsb_infra.deploy.providers.consumer import ConsumerProvider
    from jsb_infra.deploy.providers.credential import AppCredentialProvider
    from jsb_infra.deploy.providers.documents import ServerDocumentsProvider
    from jsb_infra.deploy.providers.jwt_accounts import (
        AccountSigningKeyProvider,
        AppAccountJwtProvider,
        JetStreamAccountJwtProvider,
    )
    from jsb_infra.deploy.providers.stream import StreamProvider

    def stored(provider: Any) -> Any:
        text = serialize_provider(provider)
        # pulumi.dynamic stores it as a secret unless the provider opts out (as JsbProvider does)
        return secret(text) if getattr(provider, "serialize_as_secret_always", True) else text

    return SerializedProviders(
        stream=stored(StreamProvider()),
        consumer=stored(ConsumerProvider()),
        credential=stored(AppCredentialProvider()),
        documents=stored(ServerDocumentsProvider()),
        accounts_include=stored(AccountsIncludeProvider()),
        signing_key=stored(AccountSigningKeyProvider()),
        jetstream_jwt=stored(JetStreamAccountJwtProvider()),
        app_jwt=stored(AppAccountJwtProvider()),
    )


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


# -- before pair-stream -> pair-stream --------------------------------------------------------------
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
    created = stream.get("outputs", {}).get("created")
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
        elif outputs.get("stream_created", created) != created:
            problems.append(
                f"{_describe(consumer)}: records stream_created {outputs.get('stream_created')!r}, its "
                f"Stream was created {created!r} (the consumer is of an earlier stream); run `pulumi up` "
                "with the previous jsb-infra version, then migrate"
            )
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
    resource: dict[str, Any], renamed: Mapping[str, list[str]], removed: set[str], problems: list[str]
) -> bool:
    """Point `resource`'s references at the new URNs (an old resource may become several: a
    dependency on it becomes a dependency on each); True when something changed."""
    changed = False

    def mapped(urns: list[str]) -> list[str]:
        out: list[str] = []
        for urn in urns:
            out.extend(renamed.get(urn, [urn]))
        return _dedup(u for u in out if u != resource["urn"] and u not in removed)

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
            targets = renamed.get(target, [])
            if len(targets) != 1:
                problems.append(
                    f"{_describe(resource)}: its {key} {urn_name(target)!r} is removed by the migration"
                    + (f" and becomes {len(targets)} resources" if targets else "")
                )
            else:
                resource[key], changed = targets[0], True
    return changed


def _to_pair_stream(deployment: dict[str, Any], report: MigrationReport) -> None:
    """Before pair-stream -> pair-stream, in place (`__provider` of the new resources left None: the
    next step replaces them). Raises MigrationRefused with every problem."""
    resources: list[dict[str, Any]] = list(deployment.get("resources") or [])
    problems: list[str] = []
    old = [r for r in resources if r.get("type") in BEFORE_PAIR_STREAM_TYPES]
    stack = next((r for r in resources if r.get("type") == STACK_TYPE), None)
    parent = stack["urn"] if stack else None
    prefix = urn_prefix(old[0]["urn"])
    replacement: dict[str, dict[str, Any]] = {}  # first old URN of a group -> its new resource
    renamed: dict[str, list[str]] = {}
    for group in _group_pairs(old, problems):
        entry = _pair_stream(group, parent, prefix, problems)
        if entry is None:
            continue
        replacement[group.streams[0]["urn"]] = entry
        renamed.update(
            {r["urn"]: [entry["urn"]] for r in [group.component, *group.streams, *group.consumers]}
        )
    credentials = [r for r in old if r["type"] == CREDENTIAL_TYPE]
    creds_entry = _app_credentials(credentials, parent, prefix, problems)
    if creds_entry is not None:
        replacement[credentials[0]["urn"]] = creds_entry
        renamed.update({r["urn"]: [creds_entry["urn"]] for r in credentials})
    if problems:
        raise MigrationRefused(problems)
    removed = {r["urn"] for r in old}
    migrated: list[dict[str, Any]] = []
    for resource in resources:
        if resource["urn"] in replacement:
            migrated.append(replacement[resource["urn"]])
        elif resource["urn"] not in removed:
            _rewrite_references(resource, renamed, removed, problems)
            migrated.append(resource)
    if problems:
        raise MigrationRefused(problems)
    deployment["resources"] = migrated
    report.layout_from = BEFORE_PAIR_STREAM_LAYOUT


# -- pair-stream -> app-pair ----------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """`value` as JSON gives it back (tuples as lists): what the state holds after a round trip."""
    return json.loads(json.dumps(value))


def _stored_pair(value: Any, where: str, problems: list[str]) -> Pair | None:
    """The stored pair, read leniently as the providers read state (types parsed, today's rules not
    applied: the pair was valid under the rules of the version that wrote it)."""
    if not isinstance(value, dict):
        problems.append(f"{where}: has no stored pair to derive the new inputs from")
        return None
    try:
        return Pair.model_validate(normalize(value), context=STORED_CONTEXT)
    except ValidationError as err:
        problems.append(f"{where}: its stored pair does not parse ({'; '.join(problems_of(err, 'pair'))})")
        return None


@dataclass
class _Step:
    """What the pair-stream -> app-pair step builds: new entries per replaced URN, and which
    serialized provider each new or moved resource gets."""

    prefix: str
    accounts_urn: str
    replacement: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    renamed: dict[str, list[str]] = field(default_factory=dict)
    provider_role: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def replace(self, old: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        self.replacement[old["urn"]] = entries
        self.renamed[old["urn"]] = [e["urn"] for e in entries if e.get("custom")] or [
            e["urn"] for e in entries
        ]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _entry(**fields: Any) -> dict[str, Any]:
    """A state entry without its empty fields (None, False), as the engine writes one."""
    return {k: v for k, v in fields.items() if v is not None and v is not False}


def _no_dependencies(inputs: Mapping[str, Any]) -> dict[str, list[str]]:
    return {key: [] for key in inputs}


def _app_pair_entries(resource: dict[str, Any], step: _Step, problems: list[str]) -> list[dict[str, Any]]:
    """A PairStream -> its AppPair component, Stream and one Consumer per app."""
    where = _describe(resource)
    found: list[str] = []
    inputs, outputs = resource.get("inputs") or {}, resource.get("outputs") or {}
    pair = _stored_pair(inputs.get("pair", outputs.get("pair")), where, found)
    if pair is None:
        problems.extend(found)
        return []
    name = urn_name(resource["urn"])
    stream_out: dict[str, Any] = _dict(outputs.get("stream"))
    consumers_out: dict[str, Any] = _dict(outputs.get("consumers"))
    if pair.resource_name != name:
        found.append(
            f"{where}: its pair's resource name is {pair.resource_name!r}; the AppPair it becomes must "
            "carry the PairStream's name"
        )
    if resource.get("id") != pair.stream or stream_out.get("name") != pair.stream:
        found.append(
            f"{where}: records stream {stream_out.get('name')!r} (id {resource.get('id')!r}), its pair's "
            f"stream is {pair.stream!r}"
        )
    created = stream_out.get("created")
    if not isinstance(created, str) or not isinstance(stream_out.get("config"), dict):
        found.append(f"{where}: records no stream (its created time and live config are missing)")
    missing = [app for app in pair.apps if app not in consumers_out]
    extra = sorted(set(consumers_out) - set(pair.apps))
    if missing:
        found.append(
            f"{where}: no consumer recorded for app(s) {', '.join(missing)}; run `pulumi up` with the "
            "previous jsb-infra version so the pair is complete, then migrate"
        )
    if extra:
        found.append(
            f"{where}: records consumer(s) of app(s) {', '.join(extra)}, which the pair does not have"
        )
    consumers: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for app in pair.apps:
        old = consumers_out.get(app)
        if not isinstance(old, dict):
            continue
        config = _plain(consumer_config(pair, app))
        durable = config["durable_name"]
        if old.get("stream") != pair.stream or old.get("durable") != durable:
            found.append(
                f"{where}: app {app!r}'s consumer is {old.get('stream')!r}/{old.get('durable')!r}, its "
                f"pair gives {pair.stream!r}/{durable!r}"
            )
        elif not isinstance(old.get("created"), str) or not isinstance(old.get("config"), dict):
            found.append(f"{where}: app {app!r}'s consumer records no created time or live config")
        else:
            consumers[app] = (old, config)
    problems.extend(found)
    if found:
        return []

    parent = resource.get("parent")
    times = {"created": resource.get("created"), "modified": resource.get("modified")}
    component_urn = child_urn(parent, step.prefix, APP_PAIR_TYPE, name)
    component = _entry(urn=component_urn, custom=False, type=APP_PAIR_TYPE, parent=parent, **times)
    component["custom"] = False
    common = {
        "connection": dict(STACK_CONFIG_CONNECTION),
        "allow_destroy_with_messages": pair.allow_destroy_with_messages,
        "adopt": pair.adopt,
    }
    stream_in = {
        PROVIDER_KEY: None,
        "connection": common["connection"],
        "name": pair.stream,
        "config": _plain(stream_config(pair)),
        "dlq_keeper": _plain(dlq_keeper_config(pair) or {}),
        "allow_destroy_with_messages": pair.allow_destroy_with_messages,
        "adopt": pair.adopt,
    }
    stream_outputs = {
        **copy.deepcopy(stream_in),
        "config": stream_out["config"],
        "created": created,
        "messages": stream_out.get("messages"),
        "adopted": bool(stream_out.get("adopted")),
        "unset": stream_out.get("unset"),
        "dlq_keeper_present": bool(stream_out.get("dlq_keeper", False)),
    }
    stream_urn = child_urn(component_urn, step.prefix, STREAM_TYPE, f"{name}-stream")
    shared = {"protect": bool(resource.get("protect")), "provider": resource.get("provider"), **times}
    stream = _entry(
        urn=stream_urn,
        custom=True,
        id=pair.stream,
        type=STREAM_TYPE,
        inputs=stream_in,
        outputs={k: v for k, v in stream_outputs.items() if v is not None},
        parent=component_urn,
        propertyDependencies=_no_dependencies(stream_in),
        **shared,
    )
    step.provider_role.append((stream, "stream"))
    entries = [component, stream]
    for app, (old, config) in consumers.items():
        durable = config["durable_name"]
        consumer_in = {
            PROVIDER_KEY: None,
            "connection": dict(STACK_CONFIG_CONNECTION),
            "stream": pair.stream,
            "durable": durable,
            "config": config,
            "stream_incarnation": pair_incarnation_key(pair),
            "stream_created": created,
            "stream_replicas": pair.stream_options.replicas,
            "allow_destroy_with_messages": pair.allow_destroy_with_messages,
            "adopt": pair.adopt,
        }
        consumer_outputs = {
            **copy.deepcopy(consumer_in),
            "config": old["config"],
            "created": old["created"],
            "adopted": bool(old.get("adopted")),
            "unset": old.get("unset"),
        }
        consumer = _entry(
            urn=child_urn(component_urn, step.prefix, CONSUMER_TYPE, f"{name}-{app}-consumer"),
            custom=True,
            id=f"{pair.stream}/{durable}",
            type=CONSUMER_TYPE,
            inputs=consumer_in,
            outputs={k: v for k, v in consumer_outputs.items() if v is not None},
            parent=component_urn,
            dependencies=[stream_urn],
            propertyDependencies={**_no_dependencies(consumer_in), "stream_created": [stream_urn]},
            **shared,
        )
        step.provider_role.append((consumer, "consumer"))
        entries.append(consumer)
    return entries


def _credential_entries(resource: dict[str, Any], step: _Step, problems: list[str]) -> list[dict[str, Any]]:
    """The AppCredentials -> one AppCredential per app under the AppAccounts, same keys and seeds."""
    where = _describe(resource)
    outputs = resource.get("outputs") or {}
    found: list[str] = []
    try:
        seeds = reveal(outputs.get("seeds"), f"{where}: outputs.seeds")
    except MigrationRefused as err:
        problems.extend(err.problems)
        return []
    public_keys = outputs.get("public_keys")
    apps = outputs.get("apps", (resource.get("inputs") or {}).get("apps"))
    if not isinstance(apps, list) or not isinstance(seeds, dict) or not isinstance(public_keys, dict):
        problems.append(f"{where}: records no apps, public_keys and seeds")
        return []
    if sorted(apps) != sorted(public_keys) or sorted(apps) != sorted(seeds) or len(set(apps)) != len(apps):
        found.append(f"{where}: apps, public_keys and seeds do not name the same apps once each")
    entries: list[dict[str, Any]] = []
    for app in apps:
        key, seed = public_keys.get(app), seeds.get(app)
        if not isinstance(app, str) or not app:
            found.append(f"{where}: an app without a name")
        elif not isinstance(seed, str) or not isinstance(key, str) or _public_key(seed) != key:
            found.append(f"{where}: app {app!r}: its seed is not the seed of its public key {key!r}")
        else:
            entry = _entry(
                urn=child_urn(
                    step.accounts_urn, step.prefix, CREDENTIAL_TYPE, f"{ACCOUNTS_NAME}-{app}-credential"
                ),
                custom=True,
                id=key,
                type=CREDENTIAL_TYPE,
                inputs={PROVIDER_KEY: None, "app": app},
                outputs={PROVIDER_KEY: None, "app": app, "public_key": key, "seed": secret(seed)},
                parent=step.accounts_urn,
                protect=bool(resource.get("protect")),
                provider=resource.get("provider"),
                propertyDependencies={PROVIDER_KEY: [], "app": []},
                additionalSecretOutputs=["seed"],
                created=resource.get("created"),
                modified=resource.get("modified"),
            )
            step.provider_role.append((entry, "credential"))
            entries.append(entry)
    problems.extend(found)
    return [] if found else entries


def digest(text: str) -> str:
    """A document's digest, as ServerDocuments records it."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def unpack_documents(bundle: str) -> dict[str, str]:
    """The texts a pair-stream ServerDocuments packed into its `bundle` input (zlib JSON, base64)."""
    documents = json.loads(zlib.decompress(base64.b64decode(bundle)).decode("utf-8"))
    if not isinstance(documents, dict) or not all(isinstance(t, str) for t in documents.values()):
        raise ValueError("not a {path: text} object")
    return documents


def _output_dir(files: list[Any], documents: Mapping[str, Any], config: Any) -> tuple[bool, str | None]:
    """The directory the documents were written to: the one that, joined with the documents' paths,
    gives every recorded file; with no file recorded, the stack config's `jsb:outputDir` (None: none
    configured). False when no single directory explains the files."""
    if not files:
        return True, config if isinstance(config, str) and config else None
    candidates = {
        file[: -len(suffix)]
        for file in files
        if isinstance(file, str)
        for suffix in ("/" + str(PurePosixPath(relative)) for relative in documents)
        if file.endswith(suffix)
    }
    fitting = [d for d in candidates if all(f in {f"{d}/{r}" for r in documents} for f in files)]
    return (True, fitting[0]) if len(fitting) == 1 else (False, None)


def _server_documents_entry(
    resource: dict[str, Any], step: _Step, output_dir_config: Any, problems: list[str]
) -> list[dict[str, Any]]:
    """ServerDocuments -> the same under the AppAccounts, its texts as `documents` inputs."""
    where = _describe(resource)
    inputs, outputs = resource.get("inputs") or {}, resource.get("outputs") or {}
    if "documents" in inputs:
        documents = inputs["documents"]
    elif isinstance(inputs.get("bundle"), str):
        try:
            documents = unpack_documents(inputs["bundle"])
        except (ValueError, zlib.error) as err:
            problems.append(f"{where}: its bundle cannot be unpacked ({err})")
            return []
    else:
        problems.append(f"{where}: has neither documents nor a bundle of them")
        return []
    if not isinstance(documents, dict):
        problems.append(f"{where}: its documents are not a {{path: text}} object")
        return []
    try:
        texts = {path: reveal(text, f"{where}: documents.{path}") for path, text in documents.items()}
    except MigrationRefused as err:
        problems.extend(err.problems)
        return []
    digests = outputs.get("digests")
    if (
        not isinstance(digests, dict)
        or any(not isinstance(text, str) or digests.get(path) != digest(text) for path, text in texts.items())
        or set(digests) != set(texts)
    ):
        problems.append(
            f"{where}: its recorded digests are not those of its documents (the last update did not "
            "finish); run `pulumi up` with the previous jsb-infra version, then migrate"
        )
        return []
    files = list(outputs.get("files") or [])
    single, output_dir = _output_dir(files, texts, output_dir_config)
    if not single:
        problems.append(f"{where}: its files are not all in one output directory")
        return []
    # No `output_dir` input: the program's AppAccounts leaves it to the stack config's jsb:outputDir,
    # which is where these files were written (`output_dir` only checks they were all in one place).
    del output_dir
    new_inputs: dict[str, Any] = {PROVIDER_KEY: None, "documents": documents}
    old_deps = resource.get("propertyDependencies") or {}
    document_deps = _dedup(
        urn for key in ("documents", "digests", "bundle") for urn in (old_deps.get(key) or [])
    )
    entry = {
        **{k: v for k, v in resource.items() if k not in ("inputs", "outputs", "propertyDependencies")},
        "urn": child_urn(
            step.accounts_urn,
            step.prefix,
            SERVER_DOCUMENTS_TYPE,
            f"{ACCOUNTS_NAME}-{urn_name(resource['urn'])}",
        ),
        "parent": step.accounts_urn,
        "inputs": new_inputs,
        "outputs": {PROVIDER_KEY: None, "files": files, "digests": digests},
        "propertyDependencies": {**_no_dependencies(new_inputs), "documents": document_deps},
    }
    step.provider_role.append((entry, "documents"))
    return [entry]


def _moved_entry(resource: dict[str, Any], step: _Step) -> list[dict[str, Any]]:
    """A resource that only moves under the AppAccounts (AccountsInclude, the JWT resources), named
    as the AppAccounts names its children (`accounts-include`, `accounts-<old name>`), with the
    provider of today's module (the provider stored in state names its module by path)."""
    old_name = urn_name(resource["urn"])
    name = old_name if resource["type"] == ACCOUNTS_INCLUDE_TYPE else f"{ACCOUNTS_NAME}-{old_name}"
    entry = {
        **copy.deepcopy(resource),
        "urn": child_urn(step.accounts_urn, step.prefix, resource["type"], name),
        "parent": step.accounts_urn,
    }
    step.provider_role.append((entry, PROVIDER_ROLES[resource["type"]]))
    return [entry]


def _to_app_pair(
    deployment: dict[str, Any], stack: dict[str, Any], report: MigrationReport
) -> list[tuple[dict[str, Any], str]]:
    """Pair-stream -> app-pair, in place; returns the new resources whose `__provider` the caller
    sets. Raises MigrationRefused with every problem."""
    resources: list[dict[str, Any]] = list(deployment.get("resources") or [])
    problems: list[str] = []
    prefix = urn_prefix(stack["urn"])
    step = _Step(prefix, child_urn(stack["urn"], prefix, APP_ACCOUNTS_TYPE, ACCOUNTS_NAME))
    by_urn = {r["urn"]: r for r in resources}
    for resource in resources:
        type_ = resource.get("type")
        if type_ == PAIR_STREAM_TYPE:
            entries = _app_pair_entries(resource, step, problems)
            if entries:
                apps = ", ".join(e["inputs"]["durable"] for e in entries[2:])
                report.pairs.append(
                    f"PairStream {urn_name(resource['urn'])!r} -> AppPair + Stream {entries[1]['id']!r} + "
                    f"Consumers ({apps}){' (protected)' if resource.get('protect') else ''}"
                )
        elif type_ == CREDENTIALS_TYPE:
            entries = _credential_entries(resource, step, problems)
            if entries:
                report.credentials.append(
                    f"AppCredentials {urn_name(resource['urn'])!r} -> {len(entries)} AppCredential "
                    f"({', '.join(e['inputs']['app'] for e in entries)}) under AppAccounts "
                    f"{ACCOUNTS_NAME!r} (same keys, seeds secret)"
                )
        elif type_ in ACCOUNTS_CHILD_TYPES and not under_app_accounts(resource["urn"]):
            if resource.get("parent") != stack["urn"]:
                problems.append(f"{_describe(resource)}: its parent is not the stack, so it cannot move")
                continue
            if type_ == SERVER_DOCUMENTS_TYPE:
                config = by_urn.get(str(resource.get("provider") or "").rsplit("::", 1)[0], {})
                output_dir = (config.get("inputs") or {}).get(OUTPUT_DIR_CONFIG)
                entries = _server_documents_entry(resource, step, output_dir, problems)
            else:
                entries = _moved_entry(resource, step)
            if entries:
                report.moved.append(f"{_describe(resource)}: moved under AppAccounts {ACCOUNTS_NAME!r}")
        else:
            continue
        if entries:
            step.replace(resource, entries)
    removed = set(step.replacement)
    children = [r for r in resources if r.get("parent") in removed and r["urn"] not in removed]
    for child in children:
        problems.append(
            f"{_describe(child)}: is a child of {urn_name(child['parent'])!r}, which the migration "
            "replaces; it has no mapping of its own"
        )
    new_entries = [e for entries in step.replacement.values() for e in entries]
    if any(e.get("parent") == step.accounts_urn for e in new_entries) and step.accounts_urn not in by_urn:
        created = sorted(str(e["created"]) for e in new_entries if e.get("created"))
        accounts = _entry(
            urn=step.accounts_urn,
            custom=False,
            type=APP_ACCOUNTS_TYPE,
            parent=stack["urn"],
            created=created[0] if created else None,
            modified=created[0] if created else None,
        )
        accounts["custom"] = False
        step.replacement.setdefault(stack["urn"], []).insert(0, accounts)
        new_entries.insert(0, accounts)
    for entry in new_entries:
        if entry["urn"] in by_urn and entry["urn"] not in removed:
            problems.append(
                f"{_describe(entry)}: is in the state already, next to the resources it would replace; "
                "restore the backup taken before an earlier migration and run it again"
            )
    if problems:
        raise MigrationRefused(problems)
    migrated: list[dict[str, Any]] = []
    for resource in resources:
        if resource["urn"] == stack["urn"]:
            migrated.extend([resource, *step.replacement.get(stack["urn"], [])])
        elif resource["urn"] in removed:
            migrated.extend(step.replacement[resource["urn"]])
        else:
            if _rewrite_references(resource, step.renamed, removed, problems):
                report.rewritten.append(f"{_describe(resource)}: references point at the new resources")
            migrated.append(resource)
    for entry in new_entries:
        _rewrite_references(entry, step.renamed, removed, problems)
    deployment["resources"] = _ordered(migrated, problems)
    if problems:
        raise MigrationRefused(problems)
    return step.provider_role


def _references(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(what, URN) of every resource `resource` refers to (a provider reference is `<urn>::<id>`)."""
    for key in REFERENCE_FIELDS:
        if resource.get(key):
            yield key, resource[key]
    if resource.get("provider"):
        yield "provider", str(resource["provider"]).rsplit("::", 1)[0]
    for urn in resource.get("dependencies") or []:
        yield "dependencies", urn
    for prop, urns in (resource.get("propertyDependencies") or {}).items():
        for urn in urns or []:
            yield f"propertyDependencies.{prop}", urn


def _ordered(resources: list[dict[str, Any]], problems: list[str]) -> list[dict[str, Any]]:
    """The resources with each after every resource it refers to (the engine refuses a state
    otherwise), in their given order where that holds; a reference to a URN not in the state is a
    problem."""
    by_urn = {r["urn"]: r for r in resources}
    out: list[dict[str, Any]] = []
    state: dict[str, str] = {}

    def visit(resource: dict[str, Any]) -> None:
        urn = resource["urn"]
        if state.get(urn) == "done":
            return
        if state.get(urn) == "visiting":
            problems.append(f"{_describe(resource)}: is part of a reference cycle")
            return
        state[urn] = "visiting"
        for what, target in _references(resource):
            if target not in by_urn:
                problems.append(f"{_describe(resource)}: its {what} {target!r} is not in the state")
            else:
                visit(by_urn[target])
        state[urn] = "done"
        out.append(resource)

    for resource in resources:
        visit(resource)
    return out


# -- the migration --------------------------------------------------------------------------------------
def migrate(
    document: dict[str, Any], providers: SerializedProviders | Callable[[], SerializedProviders]
) -> tuple[dict[str, Any], MigrationReport]:
    """The migrated copy of `document` (`pulumi stack export --show-secrets` output) and what changed.

    `providers`: the new resources' `__provider` values, or a function giving them (called only once
    the deployment is known to migrate). Raises MigrationRefused listing every problem; `document` is
    never modified.
    """
    result = copy.deepcopy(document)
    deployment = result.get("deployment", result)
    resources: list[dict[str, Any]] = list(deployment.get("resources") or [])
    report = MigrationReport()
    problems: list[str] = []

    stack = next((r for r in resources if r.get("type") == STACK_TYPE), None)
    layout = (stack or {}).get("outputs", {}).get(LAYOUT_OUTPUT)
    older: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        found = _older_layout(resource)
        if found is not None:
            older.setdefault(found, []).append(resource)
    before = older.get(BEFORE_PAIR_STREAM_LAYOUT, [])
    pair_stream = [r for r in older.get(PAIR_STREAM_LAYOUT, []) if r["type"] in PAIR_STREAM_TYPES]
    if layout is not None and layout not in KNOWN_LAYOUTS:
        problems.append(
            f"stack outputs: {LAYOUT_OUTPUT} is {layout!r}; this version knows only "
            f"{', '.join(map(repr, KNOWN_LAYOUTS))}"
        )
    elif layout == APP_PAIR_LAYOUT and older:
        first = next(iter(older.values()))[0]
        problems.append(
            f"the stack outputs say {LAYOUT_OUTPUT} {APP_PAIR_LAYOUT!r} but the state holds resources of an "
            f"older layout ({_describe(first)}, ...); restore the backup taken before the earlier "
            "migration and run it again"
        )
    elif before and (pair_stream or layout == PAIR_STREAM_LAYOUT):
        problems.append(
            f"the state holds resources of the layout before pair-stream ({_describe(before[0])}, ...) "
            f"and of the pair-stream layout ({_describe(pair_stream[0]) if pair_stream else 'its output'});"
            " restore the backup taken before the earlier migration and run it again"
        )
    elif resources and stack is None:
        problems.append("the state has no stack resource (pulumi:pulumi:Stack) to parent the new resources")
    _check_settled(deployment, [r for found in older.values() for r in found], problems)
    if problems:
        raise MigrationRefused(problems)

    roles: list[tuple[dict[str, Any], str]] = []
    if stack is not None and layout != APP_PAIR_LAYOUT:
        if before:
            _to_pair_stream(deployment, report)
        elif older or layout == PAIR_STREAM_LAYOUT:
            report.layout_from = PAIR_STREAM_LAYOUT
        roles = _to_app_pair(deployment, stack, report)
        resolved = providers() if callable(providers) else providers
        for entry, role in roles:
            provider = getattr(resolved, role)
            entry["inputs"][PROVIDER_KEY] = entry["outputs"][PROVIDER_KEY] = copy.deepcopy(provider)
        stack.setdefault("outputs", {})[LAYOUT_OUTPUT] = LAYOUT
        report.layout_set = True
    return result, report
