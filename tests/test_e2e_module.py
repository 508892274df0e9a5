"""End-to-end: jsb-infra used as a module, in a platform team's own Pulumi program.

The program (written below into a throwaway project named `platform`, not `jsb`) has a resource of
its own, two `AppPair`s on two `Connection`s to two real nats-servers (one connection with the admin
password as a secret Input, one naming the environment variable the provider host reads it
from), one `AppAccounts` per deployment, and passes an app's secret seed into its own resource. One
stack, one story, in order, with the real Pulumi CLI: each child is its own object in preview,
`--target` and `protect`; objects made by hand are adopted; the seed stays secret in state.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi.automation as auto
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER
from e2e_support import ApiAudit, offline_env, pulumi_bin_dir, pulumi_command, run_cli

from jsb_infra.core import names
from jsb_infra.core.spec import Pair
from jsb_infra.core.topology import consumer_config, stream_config
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import AdminConnection, admin_session

pytestmark = pytest.mark.e2e

STACK = "prod"
PASSPHRASE = "module-e2e-passphrase"
EAST_STREAM, WEST_STREAM = "orders-billing-sync", "inventory-shipping-sync"
EAST_ADMIN_PASSWORD = ADMIN_PASSWORD
WEST_ADMIN_PASSWORD = "west-admin-secret"
WEST_PASSWORD_ENV = "WEST_NATS_PASSWORD"

PROGRAM = '''
"""A platform team's program: its own resource, and jsb-infra's components on two clusters."""

import pulumi
from pulumi.dynamic import CreateResult, Resource, ResourceProvider

from jsb_infra import AdminCredentials, AppAccounts, AppAccountsArgs, AppPair, AppPairArgs, Connection


class AppDeploymentProvider(ResourceProvider):
    def create(self, props):
        return CreateResult("app-" + props["app"], dict(props))


class AppDeployment(Resource):
    """The team's own resource: an app deployment that takes the app's NATS seed."""

    def __init__(self, name, app, seed, opts=None):
        super().__init__(AppDeploymentProvider(), name, {"app": app, "seed": seed}, opts)


config = pulumi.Config()
east = Connection(
    "east",
    servers=[config.require("eastUrl")],
    admin=AdminCredentials(user="admin", password=config.require_secret("eastPassword")),
)
west = Connection(
    "west",
    servers=[config.require("westUrl")],
    admin=AdminCredentials(user="admin", password={"env": "WEST_NATS_PASSWORD"}),
)

orders_billing = AppPair(
    "orders-billing",
    AppPairArgs(
        stream="orders-billing-sync",
        apps=("orders", "billing"),
        protect=False,
        allow_destroy_with_messages=True,
        consumer={"max_deliver": config.get_int("eastMaxDeliver") or 5, "backoff": ["1s", "2s"]},
        stream_options={"max_age": "1h"},
    ),
    connection=east,
    child_opts={
        "billing-consumer": pulumi.ResourceOptions(protect=config.get_bool("protectBilling") or False)
    },
)
inventory_shipping = AppPair(
    "inventory-shipping",
    AppPairArgs(
        stream="inventory-shipping-sync",
        apps=("inventory", "shipping"),
        dlq=False,
        protect=False,
        allow_destroy_with_messages=True,
        consumer={"max_deliver": config.get_int("westMaxDeliver") or 5},
        stream_options={"retention": "limits", "max_msgs": 1000},
    ),
    connection=west,
)
east_accounts = AppAccounts(
    "east", AppAccountsArgs(pairs=[orders_billing], output_dir=config.require("eastOut"))
)
west_accounts = AppAccounts(
    "west", AppAccountsArgs(pairs=[inventory_shipping], output_dir=config.require("westOut"))
)
orders_seed = east_accounts.credentials.apply(lambda c: c["orders"]["seed"])
AppDeployment("orders-deployment", "orders", orders_seed)

pulumi.export("bridges", {**orders_billing.bridges, **inventory_shipping.bridges})
pulumi.export("orders_public_key", east_accounts.public_keys["orders"])
pulumi.export("credentials", east_accounts.credentials)
'''


def auth_config(password: str) -> str:
    return f'authorization {{ users: [ {{user: "{ADMIN_USER}", password: "{password}"}} ] }}\n'


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalNatsServer]]:
    started = {
        "east": LocalNatsServer(
            store_dir=tmp_path_factory.mktemp("east"), extra_config=auth_config(EAST_ADMIN_PASSWORD)
        ).start(),
        "west": LocalNatsServer(
            store_dir=tmp_path_factory.mktemp("west"), extra_config=auth_config(WEST_ADMIN_PASSWORD)
        ).start(),
    }
    yield started
    for server in started.values():
        server.stop()


def admin(server: LocalNatsServer, password: str) -> Any:
    return admin_session(AdminConnection(servers=[server.url], user=ADMIN_USER, password=password))


def east_js(servers: dict[str, LocalNatsServer]) -> Any:
    return admin(servers["east"], EAST_ADMIN_PASSWORD)


def west_js(servers: dict[str, LocalNatsServer]) -> Any:
    return admin(servers["west"], WEST_ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("module-e2e")


@pytest.fixture(scope="module")
def stack(scratch: Path, servers: dict[str, LocalNatsServer]) -> auto.Stack:
    bin_dir = pulumi_bin_dir()
    project = scratch / "platform"
    project.mkdir()
    (project / "__main__.py").write_text(textwrap.dedent(PROGRAM))
    (project / "Pulumi.yaml").write_text(
        "name: platform\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {sys.prefix}\n"
    )
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project),
        env_vars={**offline_env(scratch, bin_dir, PASSPHRASE), WEST_PASSWORD_ENV: WEST_ADMIN_PASSWORD},
        pulumi_home=str(scratch / "home"),
        pulumi_command=pulumi_command(bin_dir, scratch),
    )
    stack = auto.create_or_select_stack(stack_name=STACK, work_dir=str(project), opts=options)
    stack.set_config("platform:eastUrl", auto.ConfigValue(servers["east"].url))
    stack.set_config("platform:westUrl", auto.ConfigValue(servers["west"].url))
    stack.set_config("platform:eastPassword", auto.ConfigValue(EAST_ADMIN_PASSWORD, secret=True))
    stack.set_config("platform:eastOut", auto.ConfigValue(str(scratch / "out-east")))
    stack.set_config("platform:westOut", auto.ConfigValue(str(scratch / "out-west")))
    return stack


@pytest.fixture(scope="module")
def memo() -> dict[str, Any]:
    return {}


def east_pair(max_deliver: int = 5) -> Pair:
    return Pair.model_validate(
        {
            "stream": EAST_STREAM,
            "apps": ["orders", "billing"],
            "protect": False,
            "allow_destroy_with_messages": True,
            "consumer": {"max_deliver": max_deliver, "backoff": ["1s", "2s"]},
            "stream_options": {"max_age": "1h"},
        }
    )


def urn(stack: auto.Stack, parent: str, kind: str, name: str) -> str:
    return f"urn:pulumi:{stack.name}::platform::{parent}$pulumi-python:dynamic/jsb:{kind}::{name}"


def changed_ops(summary: dict[str, int] | None) -> dict[str, int]:
    return {op: n for op, n in (summary or {}).items() if n and op != "same"}


# -- the story ------------------------------------------------------------------------------------------
async def test_01_create_puts_each_pair_on_its_own_server(stack, servers, memo):
    # A stream made by hand before the first up, equal to what the spec renders: adopted, not refused.
    async with east_js(servers) as js:
        await js.create_stream(stream_config(east_pair()))
    # `pulumi import` cannot import a dynamic resource; the preview says the create adopts it instead
    preview = stack.preview(color="never", diff=True)
    assert re.search(
        r"adopts\s*: \"stream 'orders-billing-sync' is on the server \(created [^)]*, 0 message\(s\)\): "
        r"equal to the spec; the create adopts it as is\"",
        preview.stdout,
    ), preview.stdout
    # nothing else is on the servers
    assert len(re.findall(r"^\s*adopts\s*:", preview.stdout, re.M)) == 1, preview.stdout
    result = stack.up(color="never")
    # stack, the team's resource; per pair: AppPair, Stream, 2 Consumers, 2 PermissionDocuments;
    # per deployment: AppAccounts, 2 AppCredentials, ServerDocuments
    assert result.summary.resource_changes == {"create": 2 + 2 * 6 + 2 * 4}, result.stdout
    async with east_js(servers) as js:
        assert await js.stream_info(EAST_STREAM) is not None
        assert await js.stream_info(WEST_STREAM) is None
        info = await js.consumer_info(EAST_STREAM, "billing-workers")
        assert info is not None and info["config"]["max_deliver"] == 5
        memo["billing_created"] = info["created"]
        memo["orders_created"] = (await js.consumer_info(EAST_STREAM, "orders-workers"))["created"]
    async with west_js(servers) as js:
        assert await js.stream_info(WEST_STREAM) is not None
        assert await js.stream_info(EAST_STREAM) is None
    state = json.loads(run_cli(stack, "stack", "export"))
    resources = state["deployment"]["resources"]
    streams = [r for r in resources if r["type"] == "pulumi-python:dynamic/jsb:Stream"]
    east_stream = next(r for r in streams if r["outputs"]["name"] == EAST_STREAM)
    assert east_stream["outputs"]["adopted"] is True
    assert east_stream["parent"].endswith("jsb:index:AppPair::orders-billing")
    # a child carries its own rendered config, not the whole pair
    assert all("pair" not in r["inputs"] for r in streams)
    outputs = stack.outputs()
    assert set(outputs["bridges"].value) == {"orders", "billing", "inventory", "shipping"}
    assert outputs["bridges"].value["orders"]["servers"] == [servers["east"].url]
    assert outputs["bridges"].value["shipping"]["servers"] == [servers["west"].url]
    assert (Path(stack.get_config("platform:eastOut").value) / EAST_STREAM / "stream.json").exists()
    assert (Path(stack.get_config("platform:westOut").value) / WEST_STREAM / "stream.json").exists()


async def test_02_no_op_up_writes_nothing(stack, servers):
    async with ApiAudit(servers["east"].url, ADMIN_USER, EAST_ADMIN_PASSWORD) as audit:
        result = stack.up(color="never", refresh=True)
    assert changed_ops(result.summary.resource_changes) == {}, result.stdout
    assert audit.writes == 0, audit.subjects


async def test_03_one_consumer_change_previews_as_that_consumers_update(stack, servers):
    stack.set_config("platform:eastMaxDeliver", auto.ConfigValue("7"))
    preview = stack.preview(color="never", diff=True)
    # the pair's two consumers, and the documents rendered from them (consumer configs, bridges)
    assert changed_ops(preview.change_summary) == {"update": 3}, preview.stdout
    text = preview.stdout
    assert re.search(r"~ pulumi-python:dynamic/jsb:Consumer: \(update\)", text), text
    assert re.search(r"~ max_deliver\s*: 5 => 7", text), text
    assert "replace" not in text and "jsb:Stream: (update)" not in text, text
    for noise in ("bundle", "digests", "H4sI", "sha256"):
        assert noise not in text, f"{noise} in preview --diff"


async def test_04_target_one_consumer_while_another_pair_has_a_change_pending(stack, servers, memo):
    stack.set_config("platform:westMaxDeliver", auto.ConfigValue("9"))  # pending on the west pair
    target = urn(stack, "jsb:index:AppPair", "Consumer", "orders-billing-billing-consumer")
    result = stack.up(color="never", target=[target])
    assert changed_ops(result.summary.resource_changes) == {"update": 1}, result.stdout
    async with east_js(servers) as js:
        billing = await js.consumer_info(EAST_STREAM, "billing-workers")
        orders = await js.consumer_info(EAST_STREAM, "orders-workers")
    assert billing["config"]["max_deliver"] == 7 and billing["created"] == memo["billing_created"]
    assert orders["config"]["max_deliver"] == 5  # not targeted: untouched
    async with west_js(servers) as js:
        shipping = await js.consumer_info(WEST_STREAM, "shipping-workers")
    assert shipping["config"]["max_deliver"] == 5  # the pending change was not applied


async def test_05_the_rest_applies_then_the_server_matches_the_spec(stack, servers):
    result = stack.up(color="never")
    # orders' consumer and the east documents; both west consumers and the west documents
    assert changed_ops(result.summary.resource_changes) == {"update": 5}, result.stdout
    async with east_js(servers) as js:
        for app in ("orders", "billing"):
            info = await js.consumer_info(EAST_STREAM, names.durable_name(app))
            assert info["config"]["max_deliver"] == 7
            assert info["config"]["max_deliver"] == consumer_config(east_pair(7), app)["max_deliver"]
    async with west_js(servers) as js:
        for app in ("inventory", "shipping"):
            assert (await js.consumer_info(WEST_STREAM, names.durable_name(app)))["config"][
                "max_deliver"
            ] == 9


async def test_06_protect_on_one_consumer_holds(stack, servers):
    stack.set_config("platform:protectBilling", auto.ConfigValue("true"))
    stack.up(color="never")
    with pytest.raises(auto.CommandError, match="protect"):
        stack.destroy(color="never")
    async with east_js(servers) as js:
        # the protected consumer is there; the destroy stopped before the stream went
        assert await js.consumer_info(EAST_STREAM, "billing-workers") is not None
        assert await js.stream_info(EAST_STREAM) is not None
    stack.set_config("platform:protectBilling", auto.ConfigValue("false"))
    stack.up(color="never")


async def test_07_the_seed_passed_to_the_teams_resource_stays_secret_in_state(stack, servers):
    outputs = stack.outputs()
    assert outputs["credentials"].secret
    seed = outputs["credentials"].value["orders"]["seed"]
    assert seed.startswith("SU")
    state = run_cli(stack, "stack", "export")
    assert seed not in state
    for password in (EAST_ADMIN_PASSWORD, WEST_ADMIN_PASSWORD):
        assert password not in state
    deployment = next(
        r for r in json.loads(state)["deployment"]["resources"] if r["urn"].endswith("::orders-deployment")
    )
    assert "ciphertext" in json.dumps(deployment["outputs"]["seed"])
    # West names where its password is read: its children carry that name, plain, and no state
    # holds the password, not even decrypted. East passes the value: it is in state, as a secret.
    decrypted = run_cli(stack, "stack", "export", "--show-secrets")
    assert WEST_ADMIN_PASSWORD not in decrypted and EAST_ADMIN_PASSWORD in decrypted
    streams = [r for r in json.loads(state)["deployment"]["resources"] if r["type"].endswith("jsb:Stream")]
    west_stream = next((r for r in streams if r["inputs"]["connection"].get("name") == "west"), streams)
    assert west_stream["inputs"]["connection"]["admin"] == {
        "user": "admin",
        "password": {"env": WEST_PASSWORD_ENV},
    }
    # the app works with its generated identity? Its account layout is written for the servers:
    east_out = Path(stack.get_config("platform:eastOut").value)
    assert outputs["orders_public_key"].value in (east_out / "accounts.conf").read_text()


async def test_07b_replacing_one_apps_credential_rotates_that_app_alone(stack, servers):
    """docs/auth.md's rotation: `pulumi up --replace <the app's AppCredential>`."""
    before = stack.outputs()["credentials"].value
    credential = (
        f"urn:pulumi:{stack.name}::platform::jsb:index:AppAccounts$"
        "pulumi-python:dynamic/jsb:AppCredential::east-orders-credential"
    )
    result = stack.up(color="never", replace=[credential])
    after = stack.outputs()["credentials"].value
    assert after["orders"]["public_key"] != before["orders"]["public_key"]
    assert after["orders"]["seed"] != before["orders"]["seed"]
    assert after["billing"] == before["billing"], "the other app keeps its key"
    # the accounts include the servers load names the new key and no longer the old one
    accounts_conf = (Path(stack.get_config("platform:eastOut").value) / "accounts.conf").read_text()
    assert after["orders"]["public_key"] in accounts_conf
    assert before["orders"]["public_key"] not in accounts_conf
    ops = changed_ops(result.summary.resource_changes)
    assert ops.get("replace") == 1 and set(ops) <= {"replace", "update"}, result.stdout


async def test_08_destroy_removes_what_it_made_on_both_servers(stack, servers):
    stack.destroy(color="never")
    async with east_js(servers) as js:
        assert await js.stream_info(EAST_STREAM) is None
    async with west_js(servers) as js:
        assert await js.stream_info(WEST_STREAM) is None
    assert json.loads(run_cli(stack, "stack", "export"))["deployment"].get("resources") in (None, [])
