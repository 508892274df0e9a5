"""The Pulumi program and the AppPair component under `pulumi.runtime.set_mocks`.

What mocks can show: the resource graph the program registers (types, names, parents,
counts, options), the stack outputs and their schema, which outputs are secret, and that a bad stack
config stops the program before anything registers. What they cannot show (check/diff/update, the
provider in a fresh process) is covered by the provider-host and end-to-end tests.

The monitor below records each registration request and, like the engine, marks the outputs named in
`additional_secret_outputs` as secret; the mocks answer like the providers would, derived from the
inputs with the same pure modules (topology, permissions, nkeys).
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
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.sync_await import _sync_await

from jsb_infra import names, topology
from jsb_infra.accounts import account_layout
from jsb_infra.component import COMPONENT_TYPE, AppPair
from jsb_infra.credentials import new_user_keypair, public_key_of
from jsb_infra.outputs import AppCredentials, BridgeOutputs, bridge_outputs
from jsb_infra.program import build, main
from jsb_infra.providers.consumer import Consumer
from jsb_infra.providers.credential import AppCredential
from jsb_infra.providers.documents import ServerDocuments
from jsb_infra.providers.stream import Stream
from jsb_infra.spec import ConfigError, Pair

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["nats://127.0.0.1:4222"]


def dynamic_type(cls: type) -> str:
    """The type token a `pulumi.dynamic.Resource` subclass registers with (dynamic.py)."""
    return f"pulumi-python:{cls._resource_type_name}"  # type: ignore[attr-defined]


STREAM_T, CONSUMER_T = dynamic_type(Stream), dynamic_type(Consumer)
CREDENTIAL_T, DOCUMENTS_T = dynamic_type(AppCredential), dynamic_type(ServerDocuments)
CHILDREN_PER_PAIR = Counter({STREAM_T: 1, CONSUMER_T: 2})

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


# -- the mock engine -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    protect: bool
    dependencies: tuple[str, ...]
    secret_outputs: tuple[str, ...]
    inputs: dict[str, Any]


class ProviderLikeMocks(pulumi.runtime.Mocks):
    """Answers each dynamic resource with the outputs its provider's create would return."""

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = {k: v for k, v in args.inputs.items() if k != "__provider"}
        return self._outputs(args.typ, args.name, inputs)

    @staticmethod
    def _outputs(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if typ == STREAM_T:
            pair = Pair.model_validate(inputs["pair"])
            config = topology.stream_config(pair)
            return pair.stream, {
                **inputs,
                "name": pair.stream,
                "config": config,
                "created": "t0",
                "messages": 0,
            }
        if typ == CONSUMER_T:
            pair, app = Pair.model_validate(inputs["pair"]), inputs["app"]
            config = topology.consumer_config(pair, app)
            durable = names.durable_name(app)
            outs = {**inputs, "stream": pair.stream, "durable": durable, "config": config, "created": "t1"}
            return f"{pair.stream}/{durable}", outs
        if typ == CREDENTIAL_T:
            seed, public_key = new_user_keypair()
            return public_key, {**inputs, "public_key": public_key, "seed": seed}
        if typ == DOCUMENTS_T:
            return "server-documents", {**inputs, "files": []}
        return f"{name}-id", inputs  # components: no physical id, outputs come from register_outputs


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
    pulumi.runtime.set_mocks(recording.mocks, project="jsb", stack="dev", preview=False, monitor=recording)
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


async def resolved(output: pulumi.Output[Any]) -> tuple[Any, bool]:
    return await output.future(), await output.is_secret()


# -- the resource graph ----------------------------------------------------------------------------------
def test_two_pairs_register_one_component_each_with_its_children(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        build()

    run_program(check)

    components = monitor.of_type(COMPONENT_TYPE)
    assert sorted(c.name for c in components) == sorted(p["stream"] for p in TWO_PAIRS)
    assert all(not c.custom and "::pulumi:pulumi:Stack::" in c.parent for c in components)

    children = [r for r in monitor.registrations if r.parent in {c.urn for c in components}]
    assert len(children) == sum(CHILDREN_PER_PAIR.values()) * len(TWO_PAIRS)
    for component in components:
        mine = [r for r in children if r.parent == component.urn]
        assert Counter(r.type for r in mine) == CHILDREN_PER_PAIR, component.name
        assert all(r.custom for r in mine)
    # One identity per app across its pairs (billing is in both), and one set of server documents.
    top = [r for r in monitor.registrations if r.type in (CREDENTIAL_T, DOCUMENTS_T)]
    assert Counter(r.type for r in top) == Counter({CREDENTIAL_T: 3, DOCUMENTS_T: 1})
    assert sorted(r.inputs["app"] for r in monitor.of_type(CREDENTIAL_T)) == ["billing", "orders", "shipping"]
    assert all("::pulumi:pulumi:Stack::" in r.parent for r in top)


def test_children_carry_their_pair_and_app(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        build()

    run_program(check)

    by_urn = {c.urn: c.name for c in monitor.of_type(COMPONENT_TYPE)}
    for typ in (STREAM_T, CONSUMER_T):
        for reg in monitor.of_type(typ):
            assert reg.inputs["pair"]["stream"] == by_urn[reg.parent]
            assert "__provider" in reg.inputs  # a dynamic resource: its provider travels with it
    apps_per_stream = Counter((by_urn[r.parent], r.inputs["app"]) for r in monitor.of_type(CONSUMER_T))
    expected = {(p["stream"], app) for p in TWO_PAIRS for app in p["apps"]}
    assert set(apps_per_stream) == expected and set(apps_per_stream.values()) == {1}


def test_server_documents_hold_the_whole_render_known_without_keys(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        build()

    run_program(check)
    [documents] = monitor.of_type(DOCUMENTS_T)
    docs = documents.inputs["documents"]
    assert "accounts.conf" in docs and "apps/billing.json" in docs
    assert "orders-billing-sync/bridges/orders.json" in docs
    keys = sorted(r.inputs["app"] for r in monitor.of_type(CREDENTIAL_T))
    assert all(f"APP_{app}" in docs["accounts.conf"] for app in keys)
    users = re.findall(r'nkey: "(U[A-Z2-7]{55})"', docs["accounts.conf"])
    assert len(users) == len(set(users)) == 3, "every app's user, by its generated key"


def test_stream_protection_consumer_dependency_and_secret_seed_declared(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        build()

    run_program(check)

    by_urn = {c.urn: c.name for c in monitor.of_type(COMPONENT_TYPE)}
    protected = {by_urn[s.parent]: s.protect for s in monitor.of_type(STREAM_T)}
    assert protected == {"orders-billing-sync": True, "billing-shipping-sync": False}

    stream_urn = {by_urn[s.parent]: s.urn for s in monitor.of_type(STREAM_T)}
    for consumer in monitor.of_type(CONSUMER_T):
        assert stream_urn[by_urn[consumer.parent]] in consumer.dependencies

    for credential in monitor.of_type(CREDENTIAL_T):
        assert "seed" in credential.secret_outputs
    for reg in monitor.registrations:
        if reg.type != CREDENTIAL_T:
            assert "seed" not in reg.secret_outputs


def test_a_protected_pair_protects_its_consumers_too_but_not_credentials_or_documents(
    monitor: RecordingMonitor,
) -> None:
    """Removing a protected pair must not delete its consumers: the apps would stop, and on an
    interest stream the messages only they were interested in would go."""
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        build()

    run_program(check)

    by_urn = {c.urn: c.name for c in monitor.of_type(COMPONENT_TYPE)}
    consumers = Counter((by_urn[c.parent], c.protect) for c in monitor.of_type(CONSUMER_T))
    assert consumers == {("orders-billing-sync", True): 2, ("billing-shipping-sync", False): 2}
    assert [r.protect for r in monitor.of_type(CREDENTIAL_T)] == [False] * 3
    assert [r.protect for r in monitor.of_type(DOCUMENTS_T)] == [False]


@pytest.mark.parametrize("override", [True, False])
def test_the_protect_override_covers_the_stream_and_its_consumers(
    monitor: RecordingMonitor, override: bool
) -> None:
    pair = Pair.model_validate({**ORDERS_BILLING, "protect": not override})

    async def check() -> None:
        AppPair(pair.stream, pair=pair, servers=SERVERS, protect=override)

    run_program(check)
    assert [r.protect for r in monitor.of_type(STREAM_T) + monitor.of_type(CONSUMER_T)] == [override] * 3


def test_a_pair_id_keeps_the_component_name_across_a_stream_rename(monitor: RecordingMonitor) -> None:
    set_stack_config(
        [{**ORDERS_BILLING, "stream": "orders-billing-v2", "id": "orders-billing-sync"}], SERVERS
    )

    async def check() -> None:
        build()

    run_program(check)
    assert [c.name for c in monitor.of_type(COMPONENT_TYPE)] == ["orders-billing-sync"]
    [stream] = monitor.of_type(STREAM_T)
    assert (
        stream.name == "orders-billing-sync-stream" and stream.inputs["pair"]["stream"] == "orders-billing-v2"
    )


# -- the stack outputs ------------------------------------------------------------------------------------
def test_bridges_export_validates_against_the_contract_and_is_not_secret(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        bridges, secret = await resolved(build()["bridges"])
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
        json.dumps(bridges)  # what `pulumi stack output bridges --json` prints must be plain JSON

    run_program(check)


def test_credentials_export_is_secret_and_holds_one_key_pair_per_app(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        credentials, secret = await resolved(build()["credentials"])
        assert secret is True
        assert set(credentials) == {"orders", "billing", "shipping"}
        public_keys = []
        for app, entry in credentials.items():
            creds = AppCredentials.model_validate(entry)
            assert public_key_of(creds.seed) == creds.public_key
            assert creds.account == f"APP_{app}"
            public_keys.append(creds.public_key)
        assert len(set(public_keys)) == len(public_keys)

    run_program(check)


def test_credential_seed_outputs_are_secret_and_public_keys_are_not(monitor: RecordingMonitor) -> None:
    secrets: dict[str, tuple[bool, bool]] = {}

    async def check() -> None:
        for app in ("orders", "billing"):
            credential = AppCredential(f"{app}-credential", app)
            seed, seed_secret = await resolved(credential.seed)
            public_key, key_secret = await resolved(credential.public_key)
            assert public_key_of(seed) == public_key
            secrets[app] = (seed_secret, key_secret)

    run_program(check)
    assert secrets == {"orders": (True, False), "billing": (True, False)}


def test_permissions_export_shows_each_apps_subjects_keyed(monitor: RecordingMonitor) -> None:
    set_stack_config(TWO_PAIRS, SERVERS)

    async def check() -> None:
        exports = build()
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

    async def check() -> None:
        main()
        stack = pulumi.runtime.get_root_resource()
        assert stack is not None
        for key in ("bridges", "credentials", "permissions", "accounts_conf"):
            exported[key] = await resolved(stack.outputs[key])  # type: ignore[attr-defined]

    run_program(check)
    assert [secret for _, secret in exported.values()] == [False, True, False, False]
    assert set(exported["bridges"][0]) == {"orders-billing-sync", "billing-shipping-sync"}


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
    assert [c.name for c in monitor.of_type(COMPONENT_TYPE)] == ["orders-billing-sync"]
    assert Counter(
        r.type for r in monitor.registrations if r.type != COMPONENT_TYPE
    ) == CHILDREN_PER_PAIR + Counter({CREDENTIAL_T: 2, DOCUMENTS_T: 1})


def test_pulumi_yaml_points_at_the_program_and_the_stack_files() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "jsb"  # config keys are jsb:*
    assert project["main"].rstrip("/") == "stacks" and project["stackConfigDir"] == "stacks"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    assert (ROOT / project["runtime"]["options"]["virtualenv"] / "bin" / "python").exists()


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
