"""The Pulumi program under `pulumi.runtime.set_mocks`.

What mocks can show: the resource graph the program registers (types, names, parents, counts,
options, dependencies), the stack outputs and their schema, which outputs are secret, that a bad stack
config or a stack of an older resource layout stops the program before anything registers, and that a
consumer whose live config differs from its bridge fails the run. What they cannot show
(check/diff/update, the provider in a fresh process) is covered by the provider-host and end-to-end
tests.

The monitor below records each registration request and, like the engine, marks the outputs named in
`additional_secret_outputs` as secret; the mocks answer like the providers would, derived from the
inputs with the same pure modules (topology, names, nkeys), and answer the program's reference to its
own stack with the previous outputs a test sets.
"""

from __future__ import annotations

import asyncio
import json
import re
import runpy
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from jsb_infra.deploy.bridge_check import BridgeMismatch
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.sync_await import _sync_await

from jsb_infra.core import names, topology
from jsb_infra.core.accounts import account_layout
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.documents import render_documents
from jsb_infra.core.outputs import AppCredentials as AppCredentialsOutput
from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import ConfigError, Pair
from jsb_infra.deploy.program import LAYOUT, StateLayoutError, build, main
from jsb_infra.deploy.providers.base import canonical_pair
from jsb_infra.deploy.providers.credential import AppCredentials
from jsb_infra.deploy.providers.documents import ServerDocuments
from jsb_infra.deploy.providers.pair_stream import PairStream

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["nats://127.0.0.1:4222"]
ORGANIZATION, PROJECT, STACK = "organization", "jsb", "dev"


def dynamic_type(cls: type) -> str:
    """The type token a `pulumi.dynamic.Resource` subclass registers with (dynamic.py)."""
    return f"pulumi-python:{cls._resource_type_name}"  # type: ignore[attr-defined]


PAIR_STREAM_T, CREDENTIALS_T = dynamic_type(PairStream), dynamic_type(AppCredentials)
DOCUMENTS_T = dynamic_type(ServerDocuments)
READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"
READ_STACK_RESOURCES = "pulumi:pulumi:readStackResourceOutputs"

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
TWO_PAIRS_GRAPH = Counter({PAIR_STREAM_T: 2, CREDENTIALS_T: 1, DOCUMENTS_T: 1})
"""Config mode without an accounts file: one PairStream per pair, one AppCredentials, one ServerDocuments."""

LiveConsumer = Callable[[str, str, dict[str, Any]], dict[str, Any] | None]
"""(stream, app, rendered consumer config) -> the config the mocked server reports for that durable
(None: the durable is missing from the pair's state)."""


def as_rendered(stream: str, app: str, config: dict[str, Any]) -> dict[str, Any] | None:
    return config


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


class ProviderLikeMocks(pulumi.runtime.Mocks):
    """Answers each dynamic resource with the outputs its provider's create would return, and the
    engine's `readStackOutputs` of the program's own stack with `previous_outputs` (a new stack has
    none); every invoke is recorded, in order, with the registrations made before it."""

    def __init__(self) -> None:
        self.previous_outputs: dict[str, Any] = {}
        self.previous_resources: dict[str, str] = {}  # {urn: type} of the resources in the stack's state
        self.live_consumer: LiveConsumer = as_rendered
        self.invokes: list[tuple[str, dict[str, Any], int]] = []
        self.registered = 0

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.invokes.append((args.token, dict(args.args), self.registered))
        if args.token == READ_STACK_OUTPUTS:
            return {"name": args.args["name"], "outputs": self.previous_outputs, "secretOutputNames": []}, []
        if args.token == READ_STACK_RESOURCES:
            resources = {urn: {"type": typ, "outputs": {}} for urn, typ in self.previous_resources.items()}
            return {"name": args.args["stackName"], "outputs": resources}, []
        return {}, []

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.registered += 1
        inputs = {k: v for k, v in args.inputs.items() if k != "__provider"}
        return self._outputs(args.typ, args.name, inputs)

    def _outputs(self, typ: str, name: str, inputs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if typ == PAIR_STREAM_T:
            pair = Pair.model_validate(inputs["pair"])
            return pair.stream, {
                "pair": inputs["pair"],
                "stream": {
                    "adopted": False,
                    "dlq_keeper": pair.dlq,
                    "unset": {},
                    "name": pair.stream,
                    "config": topology.stream_config(pair),
                    "created": "t0",
                    "messages": 0,
                },
                "consumers": {
                    app: consumer for app in pair.apps if (consumer := self._consumer(pair, app)) is not None
                },
            }
        if typ == CREDENTIALS_T:
            keys = {app: new_user_keypair() for app in inputs["apps"]}
            return "app-credentials", {
                "apps": inputs["apps"],
                "public_keys": {app: public_key for app, (_, public_key) in keys.items()},
                "seeds": {app: seed for app, (seed, _) in keys.items()},
            }
        if typ == DOCUMENTS_T:
            return "server-documents", {**inputs, "files": []}
        return f"{name}-id", inputs

    def _consumer(self, pair: Pair, app: str) -> dict[str, Any] | None:
        live = self.live_consumer(pair.stream, app, dict(topology.consumer_config(pair, app)))
        if live is None:
            return None
        return {
            "adopted": False,
            "unset": {},
            "app": app,
            "stream": pair.stream,
            "durable": names.durable_name(app),
            "config": live,
            "created": "t1",
        }


class RecordingMonitor(MockMonitor):
    """The mock monitor, plus a record of every registration and read request (the graph the engine
    would see)."""

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

    def state(self, registration: Registration) -> dict[str, Any]:
        """The outputs the mocks answered the registration with (secrets unwrapped)."""
        return dict(self.resources[registration.urn].state)

    def previous_outputs_reads(self) -> list[tuple[dict[str, Any], int]]:
        """Each `readStackOutputs` the program made: its arguments, and how many resources had
        registered before it."""
        return [(args, before) for token, args, before in self.mocks.invokes if token == READ_STACK_OUTPUTS]


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


def run_build() -> None:
    async def check() -> None:
        build()

    run_program(check)


def run_main() -> None:
    """What `stacks/__main__.py` does, in the mock runtime."""

    async def check() -> None:
        main()

    run_program(check)


def bridge_check_verdict() -> tuple[Any, bool]:
    """Run the program and wait for its `bridge_check` output: (value, secret)."""
    verdicts: list[tuple[Any, bool]] = []

    async def check() -> None:
        verdicts.append(await resolved(build()["bridge_check"]))

    run_program(check)
    return verdicts[0]


async def resolved(value: Any) -> tuple[Any, bool]:
    """A stack output's value and whether it is secret (a plain value is exported as it is)."""
    output = pulumi.Output.from_input(value)
    return await output.future(), await output.is_secret()


def exported_bridges(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """`bridges` as a run of either layout exports it."""
    parsed = [Pair.model_validate(raw) for raw in pairs]
    return {
        p.stream: {a: bridge_outputs(p, a, SERVERS).model_dump(mode="json") for a in p.apps} for p in parsed
    }


OLDER_LAYOUT_OUTPUTS = {"bridges": exported_bridges(TWO_PAIRS), "permissions": {}, "accounts_conf": ""}
"""What a stack of the AppPair / AppCredential layout exported: `bridges`, and no `layout`."""
OLDER_LAYOUT_RESOURCES = {
    "urn:pulumi:dev::jsb::pulumi:pulumi:Stack::jsb-dev": "pulumi:pulumi:Stack",
    "urn:pulumi:dev::jsb::jsb:index:AppPair::orders-billing-sync": "jsb:index:AppPair",
    "urn:pulumi:dev::jsb::jsb:index:AppPair$pulumi-python:dynamic/jsb:Stream::orders-billing-sync-stream": (
        "pulumi-python:dynamic/jsb:Stream"
    ),
    "urn:pulumi:dev::jsb::pulumi-python:dynamic/jsb:AppCredential::orders-credential": (
        "pulumi-python:dynamic/jsb:AppCredential"
    ),
}
"""Resources of a stack of that layout (their types are what the program looks at)."""


# -- the resource graph ----------------------------------------------------------------------------------
def test_two_pairs_register_one_pair_stream_each_one_credentials_and_one_documents(
    monitor: RecordingMonitor,
) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH
    assert all(r.custom and "::pulumi:pulumi:Stack::" in r.parent for r in monitor.registrations)
    pair_streams = {r.name: r for r in monitor.of_type(PAIR_STREAM_T)}
    assert sorted(pair_streams) == sorted(p["stream"] for p in TWO_PAIRS)
    for raw in TWO_PAIRS:
        reg = pair_streams[raw["stream"]]
        # The whole pair as the provider stores it (the wire drops None values and carries numbers
        # as floats: the pair read back is the same pair).
        assert Pair.model_validate(reg.inputs["pair"]) == Pair.model_validate(raw)
        assert set(reg.inputs["pair"]) <= set(canonical_pair(Pair.model_validate(raw)))
        assert "__provider" in reg.inputs  # a dynamic resource: its provider travels with it
    # One identity per app across its pairs (billing is in both), all in one resource, sorted.
    [credentials] = monitor.of_type(CREDENTIALS_T)
    assert credentials.name == "app-credentials"
    assert credentials.inputs["apps"] == ["billing", "orders", "shipping"]
    [documents] = monitor.of_type(DOCUMENTS_T)
    assert documents.name == "server-documents"


def test_the_stacks_previous_outputs_are_read_once_before_any_resource_registers(
    monitor: RecordingMonitor,
) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    assert monitor.previous_outputs_reads() == [({"name": f"{ORGANIZATION}/{PROJECT}/{STACK}"}, 0)]
    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH


def test_server_documents_hold_the_whole_render_and_the_generated_keys(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    [documents] = monitor.of_type(DOCUMENTS_T)
    docs = documents.inputs["documents"]
    assert set(documents.inputs) - {"__provider"} <= {"documents", "output_dir"}, "texts as they are"
    rendered = render_documents([Pair.model_validate(raw) for raw in TWO_PAIRS], {}, servers=SERVERS)
    assert {str(p): t for p, t in rendered.items()}.keys() - {"accounts.conf"} == docs.keys() - {
        "accounts.conf"
    }
    assert "accounts.conf" in docs and "apps/billing.json" in docs
    assert "orders-billing-sync/bridges/orders.json" in docs
    assert "billing-shipping-sync/bridges/shipping.json" in docs
    [credentials] = monitor.of_type(CREDENTIALS_T)
    public_keys = monitor.state(credentials)["public_keys"]
    assert sorted(public_keys) == ["billing", "orders", "shipping"]
    assert all(f"APP_{app}" in docs["accounts.conf"] for app in public_keys)
    users = re.findall(r'nkey: "(U[A-Z2-7]{55})"', docs["accounts.conf"])
    assert sorted(users) == sorted(public_keys.values()), "every app's user, by its generated key"
    assert len(set(users)) == 3


def test_pair_protection_follows_the_pair_and_nothing_else_is_protected(monitor: RecordingMonitor) -> None:
    """Removing a protected pair must not delete its stream and durables: the apps would stop, and on
    an interest stream the messages only they were interested in would go."""
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    protected = {r.name: r.protect for r in monitor.of_type(PAIR_STREAM_T)}
    assert protected == {"orders-billing-sync": True, "billing-shipping-sync": False}
    assert [r.protect for r in monitor.of_type(CREDENTIALS_T) + monitor.of_type(DOCUMENTS_T)] == [False] * 2


@pytest.mark.parametrize("protect", [True, False])
def test_a_pairs_protect_setting_reaches_its_pair_stream(monitor: RecordingMonitor, protect: bool) -> None:
    set_stack_config([{**ORDERS_BILLING, "protect": protect}], SERVERS)
    run_build()

    [pair_stream] = monitor.of_type(PAIR_STREAM_T)
    assert pair_stream.protect is protect
    assert pair_stream.inputs["pair"]["protect"] is protect


def test_a_pair_stream_is_deleted_before_it_is_replaced(monitor: RecordingMonitor) -> None:
    """A replacement keeps the stream's name: the old one must go first or the create finds it."""
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    assert [r.delete_before_replace for r in monitor.of_type(PAIR_STREAM_T)] == [True, True]
    assert [r.delete_before_replace for r in monitor.of_type(CREDENTIALS_T)] == [False]


def test_only_the_credentials_seeds_are_declared_secret(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    run_build()

    declared = {r.type: r.secret_outputs for r in monitor.registrations}
    assert declared == {PAIR_STREAM_T: (), CREDENTIALS_T: ("seeds",), DOCUMENTS_T: ()}


def test_app_credentials_seeds_are_secret_and_public_keys_are_not(monitor: RecordingMonitor) -> None:
    found: dict[str, Any] = {}

    async def check() -> None:
        credentials = AppCredentials("app-credentials", ["orders", "billing"])
        found["seeds"] = await resolved(credentials.seeds)
        found["public_keys"] = await resolved(credentials.public_keys)

    run_program(check)
    (seeds, seeds_secret), (public_keys, keys_secret) = found["seeds"], found["public_keys"]
    assert (seeds_secret, keys_secret) == (True, False)
    assert set(seeds) == set(public_keys) == {"orders", "billing"}
    assert {app: public_key_of(seed) for app, seed in seeds.items()} == public_keys
    assert len(set(public_keys.values())) == 2


def test_a_pair_id_keeps_the_resource_name_across_a_stream_rename(monitor: RecordingMonitor) -> None:
    set_stack_config(
        [{**ORDERS_BILLING, "stream": "orders-billing-v2", "id": "orders-billing-sync"}], SERVERS
    )
    exports: dict[str, Any] = {}

    async def check() -> None:
        exports.update(build())

    run_program(check)
    [pair_stream] = monitor.of_type(PAIR_STREAM_T)
    assert pair_stream.name == "orders-billing-sync"
    assert pair_stream.inputs["pair"]["stream"] == "orders-billing-v2"
    assert set(exports["bridges"]) == {"orders-billing-v2"}  # apps are told the stream's new name


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
        assert set(bridges) == {p["stream"] for p in TWO_PAIRS}
        for raw in TWO_PAIRS:
            pair = Pair.model_validate(raw)
            assert set(bridges[pair.stream]) == set(pair.apps)
            for app in pair.apps:
                bridge = BridgeOutputs.model_validate(bridges[pair.stream][app])
                assert bridge == bridge_outputs(pair, app, SERVERS)
                consumer = topology.consumer_config(pair, app)
                assert bridge.consumer.ack_wait_ns == consumer["ack_wait"]
                assert bridge.consumer.backoff_ns == consumer["backoff"]
                assert bridge.consumer.max_ack_pending == consumer["max_ack_pending"]
        assert bridges["billing-shipping-sync"]["shipping"]["consumer"]["max_ack_pending"] == 1000
        assert bridges["billing-shipping-sync"]["billing"]["dlq_subject"] is None

    run_program(check)


def test_layout_and_bridge_check_exports(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        exports = build()
        assert exports["layout"] == LAYOUT == "pair-stream"
        assert await resolved(exports["bridge_check"]) == ("2 pairs: consumers match the bridges", False)

    run_program(check)


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
    [registered] = monitor.of_type(CREDENTIALS_T)
    state = monitor.state(registered)
    assert {app: e["public_key"] for app, e in credentials.items()} == state["public_keys"]
    assert {app: e["seed"] for app, e in credentials.items()} == state["seeds"]
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


def test_main_exports_the_outputs(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)
    exported: dict[str, Any] = {}
    keys = ("layout", "bridges", "bridge_check", "credentials", "permissions", "accounts_conf", "documents")

    async def check() -> None:
        main()
        stack = pulumi.runtime.get_root_resource()
        assert stack is not None
        for key in keys:
            exported[key] = await resolved(stack.outputs[key])  # type: ignore[attr-defined]

    run_program(check)
    assert {k: secret for k, (_, secret) in exported.items()} == {k: k == "credentials" for k in keys}
    assert exported["layout"][0] == "pair-stream"
    assert set(exported["bridges"][0]) == {"orders-billing-sync", "billing-shipping-sync"}
    assert exported["bridge_check"][0] == "2 pairs: consumers match the bridges"


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
    assert [r.name for r in monitor.of_type(PAIR_STREAM_T)] == ["orders-billing-sync"]
    assert Counter(r.type for r in monitor.registrations) == Counter(
        {PAIR_STREAM_T: 1, CREDENTIALS_T: 1, DOCUMENTS_T: 1}
    )
    [credentials] = monitor.of_type(CREDENTIALS_T)
    assert credentials.inputs["apps"] == ["billing", "orders"]


def test_pulumi_yaml_points_at_the_program_and_the_stack_files() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "jsb"  # config keys are jsb:*
    assert project["main"].rstrip("/") == "stacks" and project["stackConfigDir"] == "stacks"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    assert (ROOT / project["runtime"]["options"]["virtualenv"] / "bin" / "python").exists()


# -- the stack's previous outputs: a stack of an older layout is refused ---------------------------------
@pytest.mark.parametrize(
    "previous",
    [OLDER_LAYOUT_OUTPUTS, {}],
    ids=["AppPair layout", "AppPair layout whose first up failed before writing outputs"],
)
def test_a_stack_of_the_older_layout_fails_the_run_before_anything_registers(
    monitor: RecordingMonitor, previous: dict[str, Any]
) -> None:
    """Registering the new layout over the old one would give every app a new key and rewrite the
    accounts include: every app locked out. The run fails and names the command that converts the state."""
    monitor.mocks.previous_outputs = previous
    monitor.mocks.previous_resources = OLDER_LAYOUT_RESOURCES
    set_stack_config(TWO_PAIRS, SERVERS)

    with pytest.raises(StateLayoutError) as err:
        run_main()
    text = str(err.value)
    assert "older layout" in text and "Nothing was changed" in text
    assert (
        "jsb:index:AppPair, pulumi-python:dynamic/jsb:AppCredential, pulumi-python:dynamic/jsb:Stream" in text
    )
    assert "`jsb-infra migrate-state --stack <stack>`" in text
    assert monitor.previous_outputs_reads() == [({"name": f"{ORGANIZATION}/{PROJECT}/{STACK}"}, 0)]
    reads = [(token, args) for token, args, _ in monitor.mocks.invokes if token == READ_STACK_RESOURCES]
    assert reads == [(READ_STACK_RESOURCES, {"stackName": f"{ORGANIZATION}/{PROJECT}/{STACK}"})]
    assert monitor.registrations == []  # no PairStream, AppCredentials or ServerDocuments reached the engine
    assert list(monitor.resources) == []


def test_a_stack_of_a_layout_this_version_does_not_write_fails_the_run_before_anything_registers(
    monitor: RecordingMonitor,
) -> None:
    monitor.mocks.previous_outputs = {**OLDER_LAYOUT_OUTPUTS, "layout": "some-later-layout"}
    set_stack_config(TWO_PAIRS, SERVERS)

    with pytest.raises(StateLayoutError, match=r"layout is 'some-later-layout'.*Nothing was changed"):
        run_main()
    assert monitor.registrations == [] and list(monitor.resources) == []


@pytest.mark.parametrize(
    "previous",
    [{}, {"layout": "pair-stream", "bridges": exported_bridges(TWO_PAIRS)}],
    ids=["a new stack", "a stack of this layout"],
)
def test_a_new_stack_or_one_of_this_layout_runs_normally(
    monitor: RecordingMonitor, previous: dict[str, Any]
) -> None:
    monitor.mocks.previous_outputs = previous
    set_stack_config(TWO_PAIRS, SERVERS)
    verdict = bridge_check_verdict()
    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH
    assert verdict == ("2 pairs: consumers match the bridges", False)


# -- bridge_check: the live consumers against the bridges the apps are given ----------------------------
def test_a_live_consumer_that_differs_from_its_bridge_fails_the_run_naming_the_field(
    monitor: RecordingMonitor,
) -> None:
    def drifted(stream: str, app: str, config: dict[str, Any]) -> dict[str, Any]:
        if (stream, app) == ("billing-shipping-sync", "shipping"):
            return {**config, "max_deliver": config["max_deliver"] + 1}
        return config

    monitor.mocks.live_consumer = drifted
    set_stack_config(TWO_PAIRS, SERVERS)

    with pytest.raises(BridgeMismatch) as err:
        run_main()
    text = str(err.value)
    assert "consumer billing-shipping-sync/shipping-workers" in text and "app shipping" in text
    assert "max_deliver: bridge 3, server 4" in text
    assert "max_ack_pending" not in text and "backoff" not in text  # only the field that differs
    assert "pulumi up --refresh" in text
    assert Counter(r.type for r in monitor.registrations) == TWO_PAIRS_GRAPH  # the check runs after them


def test_a_live_config_reported_in_floats_matches_its_bridge(monitor: RecordingMonitor) -> None:
    """Numbers that crossed JSON may come back as floats: equal values are not a mismatch."""
    monitor.mocks.live_consumer = lambda stream, app, config: {
        **config,
        "max_deliver": float(config["max_deliver"]),
        "max_ack_pending": float(config["max_ack_pending"]),
    }
    set_stack_config(TWO_PAIRS, SERVERS)
    verdict = bridge_check_verdict()
    assert verdict == ("2 pairs: consumers match the bridges", False)


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
