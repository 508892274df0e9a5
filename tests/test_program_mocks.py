"""The Pulumi program under `pulumi.runtime.set_mocks`.

What mocks can show: the resource graph the program registers (types, names, parents, counts,
options, dependencies), the stack outputs and their schema, which outputs are secret, and that a bad
stack config, bad `AppPair` args or a stack of an older resource layout stops the program before
anything registers. What they cannot show (check/diff/update, the provider in a fresh process) is
covered by the provider-host and end-to-end tests.

The layout (`app-pair`): per pair an `AppPair` component with `<P>-stream`, `<P>-<app>-consumer` and
`<P>-<app>-permissions` children; one `AppAccounts` component `accounts` with `accounts-<app>-credential`
per app, `accounts-server-documents`, and (by `jsb:auth`) `accounts-include` or the JWT resources.

The monitor below records each registration request and, like the engine, marks the outputs named in
`additional_secret_outputs` as secret; the mocks answer like each provider's create would, derived
from the inputs with the same pure modules (nkeys, JWT claims), and answer the program's reads of its
own stack with the previous outputs and resources a test sets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import runpy
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import pulumi
import pytest
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.sync_await import _sync_await

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names, topology
from jsb_infra.core.accounts import account_layout
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.documents import render_documents
from jsb_infra.core.outputs import AppCredentials as AppCredentialsOutput
from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import ConfigError, Pair
from jsb_infra.core.topology import stream_incarnation_key
from jsb_infra.deploy.app_accounts import TYPE as APP_ACCOUNTS_T
from jsb_infra.deploy.component import TYPE as APP_PAIR_T
from jsb_infra.deploy.component import AppPair
from jsb_infra.deploy.connection import Connection
from jsb_infra.deploy.program import LAYOUT, StateLayoutError, build, main
from jsb_infra.deploy.providers.accounts_include import AccountsInclude
from jsb_infra.deploy.providers.consumer import Consumer
from jsb_infra.deploy.providers.credential import AppCredential
from jsb_infra.deploy.providers.documents import ServerDocuments
from jsb_infra.deploy.providers.jwt_accounts import AccountSigningKey, AppAccountJwt, JetStreamAccountJwt
from jsb_infra.deploy.providers.permission_document import PermissionDocument
from jsb_infra.deploy.providers.stream import Stream

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["nats://127.0.0.1:4222"]
ORGANIZATION, PROJECT, STACK = "organization", "jsb", "dev"


def dynamic_type(cls: type) -> str:
    """The type token a `pulumi.dynamic.Resource` subclass registers with (dynamic.py)."""
    return f"pulumi-python:{cls._resource_type_name}"  # type: ignore[attr-defined]


STREAM_T, CONSUMER_T = dynamic_type(Stream), dynamic_type(Consumer)
PERMISSIONS_T, CREDENTIAL_T = dynamic_type(PermissionDocument), dynamic_type(AppCredential)
DOCUMENTS_T, INCLUDE_T = dynamic_type(ServerDocuments), dynamic_type(AccountsInclude)
SIGNING_T, JS_T, APP_T = (dynamic_type(c) for c in (AccountSigningKey, JetStreamAccountJwt, AppAccountJwt))
READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"
READ_STACK_RESOURCES = "pulumi:pulumi:readStackResourceOutputs"
STACK_CONNECTION = {"stack_config": True}
PAIR_STREAM_T = "pulumi-python:dynamic/jsb:PairStream"
CREDENTIALS_T = "pulumi-python:dynamic/jsb:AppCredentials"
"""The types only the pair-stream layout had (their classes are not registered by this program)."""

ORDERS_BILLING: dict[str, Any] = {
    "stream": "orders-billing-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 5, "backoff": ["1s", "5s", "15s", "30s", "60s"], "max_ack_pending": 25000},
    "stream_options": {"duplicate_window": "2m", "max_age": "7d", "description": "orders and billing"},
}
BILLING_SHIPPING: dict[str, Any] = {
    "stream": "billing-shipping-sync",
    "apps": ["billing", "shipping"],
    "dlq": False,
    "protect": False,
    "consumer": {"max_deliver": 3, "backoff": ["2s", "10s"]},
    "consumer_overrides": {"shipping": {"max_ack_pending": 1000}},
}
TWO_PAIRS = [ORDERS_BILLING, BILLING_SHIPPING]
TWO_PAIRS_GRAPH = Counter(
    {
        APP_PAIR_T: 2,
        STREAM_T: 2,
        CONSUMER_T: 4,
        PERMISSIONS_T: 4,
        APP_ACCOUNTS_T: 1,
        CREDENTIAL_T: 3,
        DOCUMENTS_T: 1,
    }
)
"""Config mode without an accounts file: per pair an AppPair with a Stream, a Consumer and a
PermissionDocument per app; one AppAccounts with an AppCredential per app (billing is in both pairs:
one identity) and the ServerDocuments."""


# -- the mock engine -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    protect: bool
    delete_before_replace: bool
    dependencies: tuple[str, ...]
    secret_outputs: tuple[str, ...]
    inputs: dict[str, Any]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ProviderLikeMocks(pulumi.runtime.Mocks):
    """Answers each dynamic resource with the outputs its provider's create would return (a fresh
    server: nothing adopted, no messages), and the engine's reads of the program's own stack with
    `previous_outputs` and `previous_resources` (a new stack has none); every invoke is recorded, in
    order, with the number of registrations made before it."""

    def __init__(self) -> None:
        self.previous_outputs: dict[str, Any] = {}
        self.previous_resources: dict[str, dict[str, Any]] = {}  # {urn: {"type", "outputs"}} in state
        self.invokes: list[tuple[str, dict[str, Any], int]] = []
        self.registered = 0

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.invokes.append((args.token, dict(args.args), self.registered))
        if args.token == READ_STACK_OUTPUTS:
            return {"name": args.args["name"], "outputs": self.previous_outputs, "secretOutputNames": []}, []
        if args.token == READ_STACK_RESOURCES:
            return {"name": args.args["stackName"], "outputs": self.previous_resources}, []
        return {}, []

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.registered += 1
        inputs = {k: v for k, v in args.inputs.items() if k != "__provider"}
        if not args.custom:
            return "", {}  # a component: its outputs are what it registers itself
        return self._outputs(args.typ, args.name, inputs)

    @staticmethod
    def _outputs(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if typ == STREAM_T:
            outputs = {
                **inputs,
                "created": "2026-01-01T00:00:00Z",
                "messages": 0,
                "adopted": False,
                "unset": {},
                "dlq_keeper_present": bool(inputs.get("dlq_keeper")),
            }
            return inputs["name"], outputs
        if typ == CONSUMER_T:
            outputs = {**inputs, "created": "2026-01-01T00:00:01Z", "adopted": False, "unset": {}}
            return f"{inputs['stream']}/{inputs['durable']}", outputs
        if typ == PERMISSIONS_T:
            return f"{inputs['stream']}/{inputs['app']}", inputs
        if typ == CREDENTIAL_T:
            seed, public_key = new_user_keypair()
            return public_key, {"app": inputs["app"], "public_key": public_key, "seed": seed}
        if typ == DOCUMENTS_T:
            documents = inputs.get("documents") or {}
            # None: the provider writes to the stack config's jsb:outputDir, if any
            output_dir = inputs.get("output_dir") or pulumi.Config("jsb").get("outputDir")
            files = sorted(f"{output_dir}/{path}" for path in documents) if output_dir else []
            return "server-documents", {
                "digests": {path: digest(text) for path, text in documents.items()},
                "files": files,
            }
        if typ == INCLUDE_T:
            return inputs["path"], {**inputs, "written": digest(inputs["text"]), "reloaded": "sent SIGHUP"}
        if typ == SIGNING_T:
            seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
            return jc.public_key(seed), {**inputs, "public_key": jc.public_key(seed), "seed": seed}
        if typ == JS_T:
            return inputs["public_key"], {**inputs, "jwt": f"jwt-of-{inputs['public_key']}"}
        if typ == APP_T:
            seeds = {
                "account_seed": jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                "signing_seed": jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                "user_seed": jc.new_seed(nkeys.PREFIX_BYTE_USER),
            }
            account_key = jc.public_key(seeds["account_seed"])
            user_key = jc.public_key(seeds["user_seed"])
            return account_key, {
                **inputs,
                **seeds,
                "account_key": account_key,
                "signing_key": jc.public_key(seeds["signing_seed"]),
                "user_key": user_key,
                "jwt": f"jwt-of-{account_key}",
                "creds": f"-----BEGIN NATS USER JWT-----\njwt-of-{user_key}\n------END NATS USER JWT------\n",
            }
        return f"{name}-id", inputs


class RecordingMonitor(MockMonitor):
    """The mock monitor, plus a record of every registration request (the graph the engine would see)."""

    mocks: ProviderLikeMocks

    def __init__(self, mocks: ProviderLikeMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        """Called from the SDK's worker threads: keeps no per-call state on `self` but the record."""
        response = super().RegisterResource(request)
        if request.additionalSecretOutputs:
            response = self._with_secret_outputs(response, list(request.additionalSecretOutputs))
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent,
                    custom=request.custom,
                    protect=request.protect,
                    delete_before_replace=request.deleteBeforeReplace,
                    dependencies=tuple(request.dependencies),
                    secret_outputs=tuple(request.additionalSecretOutputs),
                    inputs=rpc.deserialize_properties(request.object),
                )
            )
        return response

    @staticmethod
    def _with_secret_outputs(response: Any, keys: list[str]) -> Any:
        """The engine keeps outputs named in `additional_secret_outputs` secret; so does this monitor."""
        state = rpc.deserialize_properties(response.object)
        for key in keys:
            if key in state:
                state[key] = {rpc._special_sig_key: rpc._special_secret_sig, "value": state[key]}
        return resource_pb2.RegisterResourceResponse(
            urn=response.urn, id=response.id, object=_sync_await(rpc.serialize_properties(state, {}))
        )

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def named(self, name: str) -> Registration:
        [found] = [r for r in self.registrations if r.name == name]
        return found

    def state(self, registration: Registration) -> dict[str, Any]:
        """The outputs the mocks answered the registration with (secrets unwrapped)."""
        return dict(self.resources[registration.urn].state)

    def previous_outputs_reads(self) -> list[tuple[dict[str, Any], int]]:
        """Each `readStackOutputs` the program made: its arguments, and how many resources had
        registered before it."""
        return [(args, before) for token, args, before in self.mocks.invokes if token == READ_STACK_OUTPUTS]

    def resource_reads(self) -> list[tuple[dict[str, Any], int]]:
        return [(args, before) for token, args, before in self.mocks.invokes if token == READ_STACK_RESOURCES]


@pytest.fixture
def monitor() -> Iterator[RecordingMonitor]:
    """A fresh mock engine on a fresh event loop and root stack; the thread's loop and root are put back.

    The mock runtime needs the thread's current event loop (asyncio tests elsewhere may have closed or
    unset it), and a root stack left over from another test would belong to another loop.
    """
    try:
        previous_loop: asyncio.AbstractEventLoop | None = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        previous_loop = None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    root_token = pulumi.runtime.settings.ROOT.set(None)
    recording = RecordingMonitor(ProviderLikeMocks())
    pulumi.runtime.set_mocks(
        recording.mocks,
        project=PROJECT,
        stack=STACK,
        preview=False,
        monitor=recording,
        organization=ORGANIZATION,
    )
    try:
        yield recording
    finally:
        pulumi.runtime.set_all_config({})
        pulumi.runtime.settings.ROOT.reset(root_token)
        asyncio.set_event_loop(previous_loop)
        loop.close()


def set_stack_config(pairs: Any = None, servers: Any = None, raw: dict[str, str] | None = None) -> None:
    """Set `jsb:*` the way the engine hands stack config to a program: structured values as JSON text.

    `raw` holds values exactly as stored (plain text), for keys set without a structure.
    """
    config = {f"jsb:{key}": value for key, value in (raw or {}).items()}
    if pairs is not None:
        config["jsb:pairs"] = json.dumps(pairs)
    if servers is not None:
        config["jsb:servers"] = json.dumps(servers)
    pulumi.runtime.set_all_config(config)


def run_program(check: Callable[[], Awaitable[None]]) -> None:
    """Run `check` inside the mock runtime and wait for every registration and output to settle."""
    pulumi.runtime.test(lambda: check())()


def run_build() -> dict[str, Any]:
    exports: dict[str, Any] = {}

    async def check() -> None:
        exports.update(build())

    run_program(check)
    return exports


def run_main() -> None:
    """What `stacks/__main__.py` does, in the mock runtime."""

    async def check() -> None:
        main()

    run_program(check)


async def resolved(value: Any) -> tuple[Any, bool]:
    """A stack output's value and whether it is secret (a plain value is exported as it is)."""
    output = pulumi.Output.from_input(value)
    return await output.future(), await output.is_secret()


def exported_bridges(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """`bridges` as every layout exports it."""
    parsed = [Pair.model_validate(raw) for raw in pairs]
    return {
        p.stream: {a: bridge_outputs(p, a, SERVERS).model_dump(mode="json") for a in p.apps} for p in parsed
    }


def urn(qualified_type: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::{PROJECT}::{qualified_type}::{name}"


STACK_URN = urn("pulumi:pulumi:Stack", f"{PROJECT}-{STACK}")
PAIR_OUTPUT = {"stream": "orders-billing-sync", "apps": ["orders", "billing"]}
BEFORE_PAIR_STREAM_RESOURCES: dict[str, dict[str, Any]] = {
    STACK_URN: {"type": "pulumi:pulumi:Stack", "outputs": {}},
    urn(APP_PAIR_T, "orders-billing-sync"): {"type": APP_PAIR_T, "outputs": {}},
    urn(f"{APP_PAIR_T}${STREAM_T}", "orders-billing-sync-stream"): {
        "type": STREAM_T,
        "outputs": {"pair": PAIR_OUTPUT, "name": "orders-billing-sync"},
    },
    urn(f"{APP_PAIR_T}${CONSUMER_T}", "orders-billing-sync-orders-consumer"): {
        "type": CONSUMER_T,
        "outputs": {"pair": PAIR_OUTPUT, "app": "orders"},
    },
    urn(CREDENTIAL_T, "orders-credential"): {"type": CREDENTIAL_T, "outputs": {"app": "orders"}},
}
"""A stack from before pair-stream: AppPair components whose Stream and Consumers carry the whole
pair, an AppCredential per app under the stack; it exported `bridges` and no `layout`."""
PAIR_STREAM_RESOURCES: dict[str, dict[str, Any]] = {
    STACK_URN: {"type": "pulumi:pulumi:Stack", "outputs": {}},
    urn(PAIR_STREAM_T, "orders-billing-sync"): {"type": PAIR_STREAM_T, "outputs": {"pair": PAIR_OUTPUT}},
    urn(CREDENTIALS_T, "app-credentials"): {
        "type": CREDENTIALS_T,
        "outputs": {"apps": ["billing", "orders"]},
    },
    urn(DOCUMENTS_T, "server-documents"): {"type": DOCUMENTS_T, "outputs": {"files": []}},
}
"""A pair-stream stack: one PairStream per pair, one AppCredentials, the ServerDocuments under the stack."""
APP_PAIR_RESOURCES: dict[str, dict[str, Any]] = {
    STACK_URN: {"type": "pulumi:pulumi:Stack", "outputs": {}},
    urn(APP_PAIR_T, "orders-billing-sync"): {"type": APP_PAIR_T, "outputs": {}},
    urn(f"{APP_PAIR_T}${STREAM_T}", "orders-billing-sync-stream"): {
        "type": STREAM_T,
        "outputs": {"name": "orders-billing-sync", "config": {}},
    },
    urn(APP_ACCOUNTS_T, "accounts"): {"type": APP_ACCOUNTS_T, "outputs": {}},
    urn(f"{APP_ACCOUNTS_T}${CREDENTIAL_T}", "accounts-orders-credential"): {
        "type": CREDENTIAL_T,
        "outputs": {"app": "orders"},
    },
    urn(f"{APP_ACCOUNTS_T}${DOCUMENTS_T}", "accounts-server-documents"): {
        "type": DOCUMENTS_T,
        "outputs": {"files": []},
    },
}
"""Resources of this layout (a stack whose first `up` failed before it wrote its outputs)."""


# -- the resource graph ----------------------------------------------------------------------------------
def test_two_pairs_register_an_app_pair_each_and_one_app_accounts(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH
    components = {r.name: r for r in monitor.registrations if not r.custom}
    assert sorted(components) == ["accounts", "billing-shipping-sync", "orders-billing-sync"]
    assert {r.type for r in components.values()} == {APP_PAIR_T, APP_ACCOUNTS_T}
    assert all(r.parent == STACK_URN for r in components.values())
    for raw in TWO_PAIRS:
        pair = Pair.model_validate(raw)
        parent = components[pair.stream].urn
        assert parent.endswith(f"{APP_PAIR_T}::{pair.stream}")
        children = sorted(r.name for r in monitor.registrations if r.parent == parent)
        assert children == sorted(
            [
                f"{pair.stream}-stream",
                *(f"{pair.stream}-{app}-consumer" for app in pair.apps),
                *(f"{pair.stream}-{app}-permissions" for app in pair.apps),
            ]
        )
        stream = monitor.named(f"{pair.stream}-stream")
        assert stream.type == STREAM_T and f"{APP_PAIR_T}${STREAM_T}::" in stream.urn
        assert stream.inputs["name"] == pair.stream
        assert stream.inputs["config"] == json.loads(json.dumps(topology.stream_config(pair)))
        assert stream.inputs["connection"] == STACK_CONNECTION
        assert "pair" not in stream.inputs  # the derived config, not the whole pair
        assert "__provider" in stream.inputs  # a dynamic resource: its provider travels with it
        for app in pair.apps:
            consumer = monitor.named(f"{pair.stream}-{app}-consumer")
            assert consumer.type == CONSUMER_T
            assert consumer.inputs["stream"] == pair.stream
            assert consumer.inputs["durable"] == names.durable_name(app)
            assert consumer.inputs["config"] == json.loads(json.dumps(topology.consumer_config(pair, app)))
            assert consumer.inputs["stream_incarnation"] == stream_incarnation_key(
                topology.stream_config(pair)
            )
            assert consumer.inputs["stream_created"] == monitor.state(stream)["created"]
            assert stream.urn in consumer.dependencies  # created after its stream
            permissions = monitor.named(f"{pair.stream}-{app}-permissions")
            assert permissions.type == PERMISSIONS_T
            assert (permissions.inputs["app"], permissions.inputs["stream"]) == (app, pair.stream)
    accounts = components["accounts"].urn
    assert accounts.endswith(f"{APP_ACCOUNTS_T}::accounts")
    # One identity per app across its pairs (billing is in both), each its own resource.
    credentials = {r.inputs["app"]: r for r in monitor.of_type(CREDENTIAL_T)}
    assert sorted(credentials) == ["billing", "orders", "shipping"]
    assert {r.name for r in credentials.values()} == {f"accounts-{app}-credential" for app in credentials}
    [documents] = monitor.of_type(DOCUMENTS_T)
    assert documents.name == "accounts-server-documents"
    assert {r.parent for r in [*credentials.values(), documents]} == {accounts}


def test_the_stacks_previous_state_is_read_once_before_any_resource_registers(
    monitor: RecordingMonitor,
) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    stack = f"{ORGANIZATION}/{PROJECT}/{STACK}"
    assert monitor.previous_outputs_reads() == [({"name": stack}, 0)]
    assert monitor.resource_reads() == [({"stackName": stack}, 0)]  # no `layout` output: a new stack
    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH


def test_server_documents_hold_the_whole_render_and_the_generated_keys(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    [documents] = monitor.of_type(DOCUMENTS_T)
    docs = documents.inputs["documents"]
    assert set(documents.inputs) - {"__provider"} <= {"documents", "output_dir"}, "texts as they are"
    assert documents.inputs.get("output_dir") is None  # the provider falls back to jsb:outputDir
    rendered = render_documents([Pair.model_validate(raw) for raw in TWO_PAIRS], {}, servers=SERVERS)
    assert {str(p) for p in rendered} - {"accounts.conf"} == docs.keys() - {"accounts.conf"}
    assert "accounts.conf" in docs and "apps/billing.json" in docs
    assert "orders-billing-sync/bridges/orders.json" in docs
    assert "billing-shipping-sync/bridges/shipping.json" in docs
    public_keys = {r.inputs["app"]: monitor.state(r)["public_key"] for r in monitor.of_type(CREDENTIAL_T)}
    assert all(f"APP_{app}" in docs["accounts.conf"] for app in public_keys)
    users = re.findall(r'nkey: "(U[A-Z2-7]{55})"', docs["accounts.conf"])
    assert sorted(users) == sorted(public_keys.values()), "every app's user, by its generated key"
    assert len(set(users)) == 3
    assert monitor.state(documents)["digests"]["accounts.conf"] == digest(docs["accounts.conf"])


def test_pair_protection_reaches_its_stream_and_consumers_only(monitor: RecordingMonitor) -> None:
    """Removing a protected pair must not delete its stream and durables: the apps would stop, and on
    an interest stream the messages only they were interested in would go. Permission documents,
    keys and documents hold nothing on the server: never protected by the pair."""
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    protected = {r.name for r in monitor.registrations if r.protect}
    assert protected == {
        "orders-billing-sync-stream",
        "orders-billing-sync-orders-consumer",
        "orders-billing-sync-billing-consumer",
    }


@pytest.mark.parametrize("protect", [True, False])
def test_a_pairs_protect_setting_reaches_its_stream_and_consumers(
    monitor: RecordingMonitor, protect: bool
) -> None:
    set_stack_config([{**ORDERS_BILLING, "protect": protect}], SERVERS)
    run_build()

    server_objects = monitor.of_type(STREAM_T) + monitor.of_type(CONSUMER_T)
    assert len(server_objects) == 3 and all(r.protect is protect for r in server_objects)
    others = [r for r in monitor.registrations if r not in server_objects]
    assert others and not any(r.protect for r in others)


def test_no_resource_asks_for_delete_before_replace_at_registration(monitor: RecordingMonitor) -> None:
    """The Stream and Consumer constructors set no `delete_before_replace`: their providers' diff
    returns it with each replace they plan (the name is kept, so the old object must go first); no
    other resource ever needs it."""
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    assert [r.name for r in monitor.registrations if r.delete_before_replace] == []


def test_only_the_credential_seeds_are_declared_secret(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    declared = {r.name: r.secret_outputs for r in monitor.registrations if r.secret_outputs}
    assert declared == {f"accounts-{app}-credential": ("seed",) for app in ("orders", "billing", "shipping")}


def test_an_app_credential_seed_is_secret_and_its_public_key_is_not(monitor: RecordingMonitor) -> None:
    found: dict[str, Any] = {}

    async def check() -> None:
        credential = AppCredential("orders-credential", "orders")
        found["seed"] = await resolved(credential.seed)
        found["public_key"] = await resolved(credential.public_key)
        found["app"] = await resolved(credential.app)

    run_program(check)
    (seed, seed_secret), (public_key, key_secret) = found["seed"], found["public_key"]
    assert (seed_secret, key_secret) == (True, False)
    assert public_key_of(seed) == public_key and found["app"] == ("orders", False)


def test_a_pair_id_keeps_the_resource_names_across_a_stream_rename(monitor: RecordingMonitor) -> None:
    set_stack_config(
        [{**ORDERS_BILLING, "stream": "orders-billing-v2", "id": "orders-billing-sync"}], SERVERS
    )
    exports = run_build()

    [component] = monitor.of_type(APP_PAIR_T)
    assert component.name == "orders-billing-sync"
    stream = monitor.named("orders-billing-sync-stream")
    assert stream.inputs["name"] == "orders-billing-v2"
    assert {r.inputs["stream"] for r in monitor.of_type(CONSUMER_T)} == {"orders-billing-v2"}
    assert set(exports["bridges"]) == {"orders-billing-v2"}  # apps are told the stream's new name


# -- AppPair built directly ------------------------------------------------------------------------------
CONNECTION = Connection("test", servers=SERVERS)


@pytest.mark.parametrize(
    ("args", "child_opts", "expected"),
    [
        ({"stream": "x.y", "apps": ["a", "b"]}, None, "AppPair args.stream: "),
        ({"stream": "x", "apps": ["a", "a"]}, None, "AppPair args.apps: apps must be two distinct apps"),
        ({"stream": "x", "apps": ["a", "b"], "consumer": {"max_deliver": 0}}, None, "consumer.max_deliver"),
        (
            {"stream": "x", "apps": ["a", "b"]},
            {"c-consumer": pulumi.ResourceOptions(protect=True)},
            "child_opts: unknown role(s) c-consumer",
        ),
    ],
    ids=["bad stream", "same app twice", "bad consumer setting", "unknown child role"],
)
def test_app_pair_with_invalid_args_raises_before_anything_registers(
    monitor: RecordingMonitor, args: dict[str, Any], child_opts: Any, expected: str
) -> None:
    raised: list[ConfigError] = []

    async def check() -> None:
        with pytest.raises(ConfigError) as err:
            AppPair("x", args, connection=CONNECTION, child_opts=child_opts)
        raised.append(err.value)

    run_program(check)
    assert monitor.registrations == [] and monitor.resources == {}
    assert any(expected in problem for problem in raised[0].problems), raised[0].problems


def test_child_opts_protect_only_the_child_of_that_role(monitor: RecordingMonitor) -> None:
    args = {**ORDERS_BILLING, "protect": False}

    async def check() -> None:
        AppPair(
            "orders-billing",
            args,
            connection=CONNECTION,
            child_opts={"billing-consumer": pulumi.ResourceOptions(protect=True)},
        )

    run_program(check)
    assert Counter(r.type for r in monitor.registrations) == Counter(
        {APP_PAIR_T: 1, STREAM_T: 1, CONSUMER_T: 2, PERMISSIONS_T: 2}
    )
    assert [r.name for r in monitor.registrations if r.protect] == ["orders-billing-billing-consumer"]
    [component] = monitor.of_type(APP_PAIR_T)
    assert all(r.parent == component.urn for r in monitor.registrations if r.custom)
    # a connection of its own is stored on each server object
    stream = monitor.named("orders-billing-stream")
    assert stream.inputs["connection"] == {"name": "test", "servers": SERVERS}


# -- the stack outputs ------------------------------------------------------------------------------------
def test_bridges_export_is_a_plain_value_that_validates_against_the_contract(
    monitor: RecordingMonitor,
) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        exported = build()["bridges"]
        # Known at preview and exported as it is: plain JSON, no Output anywhere inside.
        json.dumps(exported)  # what `pulumi stack output bridges --json` prints must be plain JSON
        bridges, secret = await resolved(exported)
        assert secret is False
        assert bridges == exported_bridges(TWO_PAIRS)
        for raw in TWO_PAIRS:
            pair = Pair.model_validate(raw)
            for app in pair.apps:
                bridge = BridgeOutputs.model_validate(bridges[pair.stream][app])
                consumer = topology.consumer_config(pair, app)
                assert bridge.consumer.ack_wait_ns == consumer["ack_wait"]
                assert bridge.consumer.backoff_ns == consumer["backoff"]
                assert bridge.consumer.max_ack_pending == consumer["max_ack_pending"]
        assert bridges["billing-shipping-sync"]["shipping"]["consumer"]["max_ack_pending"] == 1000
        assert bridges["billing-shipping-sync"]["billing"]["dlq_subject"] is None

    run_program(check)


def test_layout_export_names_the_app_pair_layout(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    exports = run_build()

    assert exports["layout"] == LAYOUT == "app-pair"
    assert "bridge_check" not in exports


def test_credentials_export_is_secret_and_holds_the_generated_key_pair_of_each_app(
    monitor: RecordingMonitor,
) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    found: dict[str, Any] = {}

    async def check() -> None:
        found["credentials"] = await resolved(build()["credentials"])

    run_program(check)
    credentials, secret = found["credentials"]
    assert secret is True
    assert set(credentials) == {"orders", "billing", "shipping"}
    for app, entry in credentials.items():
        creds = AppCredentialsOutput.model_validate(entry)
        assert public_key_of(creds.seed) == creds.public_key
        assert creds.account == f"APP_{app}"
        state = monitor.state(monitor.named(f"accounts-{app}-credential"))
        assert (creds.public_key, creds.seed) == (state["public_key"], state["seed"])
    assert len({e["public_key"] for e in credentials.values()}) == 3


def test_permissions_export_shows_each_apps_subjects_keyed(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        exports = build()
        json.dumps(exports["permissions"])  # a plain value, known at preview
        permissions, secret = await resolved(exports["permissions"])
        assert secret is False
        layout = account_layout([Pair.model_validate(raw) for raw in TWO_PAIRS])
        assert permissions == {a.app: a.document() for a in layout.apps}
        assert "billing.sync.dlq" in permissions["billing"]["publish"]
        assert permissions["billing"]["streams"] == ["orders-billing-sync", "billing-shipping-sync"]
        conf, conf_secret = await resolved(exports["accounts_conf"])
        credentials, _ = await resolved(exports["credentials"])
        assert conf_secret is False
        for entry in credentials.values():
            assert f'nkey: "{entry["public_key"]}"' in conf
            assert entry["seed"] not in conf

    run_program(check)


OUTPUT_KEYS = ("layout", "bridges", "credentials", "permissions", "accounts_conf", "documents")


def test_main_exports_the_outputs_and_only_credentials_is_secret(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS, raw={"outputDir": "/srv/jsb"})
    exported: dict[str, Any] = {}

    async def check() -> None:
        main()
        stack = pulumi.runtime.get_root_resource()
        assert stack is not None
        outputs = stack.outputs  # type: ignore[attr-defined]
        assert set(outputs) == set(OUTPUT_KEYS)
        for key in OUTPUT_KEYS:
            exported[key] = await resolved(outputs[key])

    run_program(check)
    assert {k: secret for k, (_, secret) in exported.items()} == {k: k == "credentials" for k in OUTPUT_KEYS}
    assert exported["layout"][0] == "app-pair"
    assert set(exported["bridges"][0]) == {"orders-billing-sync", "billing-shipping-sync"}
    [documents] = monitor.of_type(DOCUMENTS_T)
    assert exported["documents"][0] == monitor.state(documents)["files"]
    assert exported["documents"][0] == sorted(f"/srv/jsb/{p}" for p in documents.inputs["documents"])


def test_stacks_main_runs_the_program_on_the_dev_stack_config(monitor: RecordingMonitor) -> None:
    """`stacks/__main__.py` with `stacks/Pulumi.dev.yaml`: what `pulumi up` on dev would register."""
    dev = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    assert dev["jsb:servers"] == ["nats://127.0.0.1:4222"]
    # The program and the provider host run in stacks/ (`main`): a relative outputDir starts there.
    assert (ROOT / "stacks" / dev["jsb:outputDir"]).resolve() == (ROOT / ".jsb" / "out").resolve()
    set_stack_config(dev["jsb:pairs"], dev["jsb:servers"], raw={"outputDir": dev["jsb:outputDir"]})

    async def check() -> None:
        runpy.run_path(str(ROOT / "stacks" / "__main__.py"), run_name="__main__")

    run_program(check)
    pairs = [Pair.model_validate(raw) for raw in dev["jsb:pairs"]]
    apps = {app for pair in pairs for app in pair.apps}
    assert [r.name for r in monitor.of_type(APP_PAIR_T)] == [p.resource_name for p in pairs]
    assert Counter(r.type for r in monitor.registrations) == Counter(
        {
            APP_PAIR_T: len(pairs),
            STREAM_T: len(pairs),
            CONSUMER_T: 2 * len(pairs),
            PERMISSIONS_T: 2 * len(pairs),
            APP_ACCOUNTS_T: 1,
            CREDENTIAL_T: len(apps),
            DOCUMENTS_T: 1,
        }
    )
    assert sorted(r.inputs["app"] for r in monitor.of_type(CREDENTIAL_T)) == sorted(apps)


def test_pulumi_yaml_points_at_the_program_and_the_stack_files() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "jsb"  # config keys are jsb:*
    assert project["main"].rstrip("/") == "stacks" and project["stackConfigDir"] == "stacks"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    assert (ROOT / project["runtime"]["options"]["virtualenv"] / "bin" / "python").exists()


# -- the stack's previous state: a stack of an older layout is refused -----------------------------------
OLDER_STACKS = {
    "before pair-stream": (
        {"bridges": exported_bridges(TWO_PAIRS), "permissions": {}, "accounts_conf": ""},
        BEFORE_PAIR_STREAM_RESOURCES,
        [
            "before-pair-stream: ",
            "AppCredential 'orders-credential'",
            "Stream 'orders-billing-sync-stream'",
            "Consumer 'orders-billing-sync-orders-consumer'",
        ],
    ),
    "before pair-stream, first up failed before writing outputs": (
        {},
        BEFORE_PAIR_STREAM_RESOURCES,
        ["before-pair-stream: ", "AppCredential 'orders-credential'"],
    ),
    "pair-stream, by its layout output": (
        {"layout": "pair-stream", "bridges": exported_bridges(TWO_PAIRS)},
        {},
        ["pair-stream (its `layout` output)"],
    ),
    "pair-stream, first up failed before writing outputs": (
        {},
        PAIR_STREAM_RESOURCES,
        [
            "pair-stream: ",
            "PairStream 'orders-billing-sync'",
            "AppCredentials 'app-credentials'",
            "ServerDocuments 'server-documents'",
        ],
    ),
}


@pytest.mark.parametrize(("outputs", "resources", "expected"), OLDER_STACKS.values(), ids=OLDER_STACKS.keys())
def test_a_stack_of_an_older_layout_fails_the_run_before_anything_registers(
    monitor: RecordingMonitor, outputs: dict[str, Any], resources: dict[str, Any], expected: list[str]
) -> None:
    """Registering the new layout over an old one would give every app a new key and rewrite the
    accounts include: every app locked out. The run fails and names the command that converts the state."""
    monitor.mocks.previous_outputs = outputs
    monitor.mocks.previous_resources = resources
    set_stack_config(TWO_PAIRS, SERVERS)

    with pytest.raises(StateLayoutError) as err:
        run_main()
    text = str(err.value)
    assert "older layout" in text and "Nothing was changed" in text
    for fragment in expected:
        assert fragment in text, text
    assert "`jsb-infra migrate-state --stack <stack>`" in text
    stack = f"{ORGANIZATION}/{PROJECT}/{STACK}"
    assert monitor.previous_outputs_reads() == [({"name": stack}, 0)]
    # the resources are read only when the outputs name no layout
    assert monitor.resource_reads() == ([] if "layout" in outputs else [({"stackName": stack}, 0)])
    assert monitor.registrations == []  # no AppPair, Stream, AppCredential or documents reached the engine
    assert list(monitor.resources) == []


def test_a_stack_of_a_layout_this_version_does_not_write_fails_the_run_before_anything_registers(
    monitor: RecordingMonitor,
) -> None:
    monitor.mocks.previous_outputs = {"layout": "some-later-layout", "bridges": exported_bridges(TWO_PAIRS)}
    set_stack_config(TWO_PAIRS, SERVERS)

    with pytest.raises(StateLayoutError, match=r"layout is 'some-later-layout'.*Nothing was changed"):
        run_main()
    assert monitor.registrations == [] and list(monitor.resources) == []


@pytest.mark.parametrize(
    ("outputs", "resources"),
    [
        ({}, {}),
        ({"layout": "app-pair", "bridges": exported_bridges(TWO_PAIRS)}, APP_PAIR_RESOURCES),
        ({}, APP_PAIR_RESOURCES),
    ],
    ids=["a new stack", "a stack of this layout", "this layout, first up failed before writing outputs"],
)
def test_a_new_stack_or_one_of_this_layout_runs_normally(
    monitor: RecordingMonitor, outputs: dict[str, Any], resources: dict[str, Any]
) -> None:
    monitor.mocks.previous_outputs = outputs
    monitor.mocks.previous_resources = resources
    set_stack_config(TWO_PAIRS, SERVERS)
    exports = run_build()

    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH
    assert exports["layout"] == "app-pair"


# -- invalid stack config: nothing registers -----------------------------------------------------------
BAD_CONFIGS = {
    "bad pair": (
        [ORDERS_BILLING, {"stream": "x", "apps": ["a", "a"]}],
        SERVERS,
        ["jsb:pairs[1].apps: apps must be two distinct apps, got 'a' twice"],
    ),
    "overlapping pairs": (
        [ORDERS_BILLING, {"stream": "orders-billing-2", "apps": ["billing", "orders"]}],
        SERVERS,
        ["overlaps pairs[0] (stream 'orders-billing-sync') on subject"],
    ),
    "duplicate stream": (
        [ORDERS_BILLING, {**BILLING_SHIPPING, "stream": "orders-billing-sync"}],
        SERVERS,
        ["jsb:pairs[1].stream: 'orders-billing-sync' is already the stream of pairs[0]"],
    ),
    "missing servers": (TWO_PAIRS, None, ["jsb:servers: required"]),
    "empty servers": (TWO_PAIRS, [], ["jsb:servers: must be a non-empty list"]),
    "server without scheme": (TWO_PAIRS, ["127.0.0.1:4222"], ["jsb:servers[0]: '127.0.0.1:4222' is not"]),
    "server with credentials": (
        TWO_PAIRS,
        ["nats://admin:s3cret@10.0.0.1:4222"],
        ["jsb:servers[0]: must not contain credentials"],
    ),
    "missing pairs": (None, SERVERS, ["jsb:pairs: required"]),
    "pairs not a list": ({"stream": "x"}, SERVERS, ["jsb:pairs: must be a list"]),
    "bad duration and bad server together": (
        [{**ORDERS_BILLING, "consumer": {"backoff": ["1 second"]}}],
        ["http://nats:4222"],
        ["jsb:servers[0]:", "jsb:pairs[0].consumer.backoff[0]:"],
    ),
}


@pytest.mark.parametrize(("pairs", "servers", "expected"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_invalid_stack_config_fails_before_any_resource_registers(
    monitor: RecordingMonitor, pairs: Any, servers: Any, expected: list[str]
) -> None:
    set_stack_config(pairs, servers)
    raised: list[ConfigError] = []

    async def check() -> None:
        with pytest.raises(ConfigError) as err:
            build()
        raised.append(err.value)

    run_program(check)  # waits for any registration that might have been started

    assert monitor.registrations == []
    assert monitor.resources == {}
    assert monitor.mocks.invokes == []  # refused before the stack's state is even read
    text = str(raised[0])
    for fragment in expected:
        assert fragment in text, text
    assert "s3cret" not in text  # a URL holding a password is refused without being echoed


def test_pairs_given_as_a_plain_string_are_refused_with_the_key(monitor: RecordingMonitor) -> None:
    set_stack_config(servers=SERVERS, raw={"pairs": "orders,billing"})

    async def check() -> None:
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.problems == [
            "jsb:pairs: must be a YAML list in the stack config, got the plain string 'orders,billing'"
        ]

    run_program(check)
    assert monitor.registrations == []


def test_servers_as_comma_separated_text_are_accepted(monitor: RecordingMonitor) -> None:
    """`pulumi config set jsb:servers a,b` stores plain text; the providers accept it, so does the program."""
    set_stack_config([ORDERS_BILLING], raw={"servers": "nats://a:4222, nats://b:4222"})

    async def check() -> None:
        bridges, _ = await resolved(build()["bridges"])
        assert bridges["orders-billing-sync"]["orders"]["servers"] == ["nats://a:4222", "nats://b:4222"]

    run_program(check)


def test_main_turns_a_config_error_into_a_clean_run_error(monitor: RecordingMonitor) -> None:
    set_stack_config([{"stream": "x.y", "apps": ["a", "b"]}], SERVERS)

    async def check() -> None:
        with pytest.raises(pulumi.RunError, match=r"jsb:pairs\[0\]\.stream: stream name 'x.y' contains '\.'"):
            main()

    run_program(check)
    assert monitor.registrations == []


def test_app_limits_from_the_stack_config_reach_the_accounts_include(monitor: RecordingMonitor) -> None:
    limits = {"connections": 20, "overrides": {"billing": {"payload": 2048}}}
    set_stack_config(TWO_PAIRS, SERVERS, raw={"appLimits": json.dumps(limits)})
    run_build()
    [documents] = monitor.of_type(DOCUMENTS_T)
    conf = documents.inputs["documents"]["accounts.conf"]
    blocks = dict(re.findall(r'"APP_(\w+)" \{(.*?)\n  \}', conf, re.S))
    assert "max_connections: 20, max_subscriptions: 1000, max_payload: 2048," in blocks["billing"]
    assert "max_connections: 20, max_subscriptions: 1000, max_payload: 1048576," in blocks["orders"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            json.dumps({"connections": 0}),
            "jsb:appLimits.connections: connections must be -1 (no limit) or positive",
        ),
        (json.dumps({"overrides": {"nobody": {}}}), "jsb:appLimits.overrides.nobody: 'nobody' is not an app"),
        ("100", "jsb:appLimits: must be a YAML mapping in the stack config, got the plain string '100'"),
    ],
)
def test_bad_app_limits_in_the_stack_config_fail_before_any_resource_registers(
    monitor: RecordingMonitor, raw: str, problem: str
) -> None:
    set_stack_config(TWO_PAIRS, SERVERS, raw={"appLimits": raw})

    async def check() -> None:
        with pytest.raises(ConfigError) as err:
            build()
        assert any(p.startswith(problem) for p in err.value.problems), err.value.problems

    run_program(check)
    assert monitor.registrations == []
