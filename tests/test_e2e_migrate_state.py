"""End-to-end: a stack written by the previous layout, migrated with `jsb-infra migrate-state`, then run by
the new program with the real Pulumi CLI against a real nats-server.

The state is the fixture tests/fixtures/state-before-pair-stream (a real `pulumi up` of the AppPair
layout: two pairs sharing the app `orders`). A fresh server gets the fixture's streams and consumers
from the admin API and the fixture's app keys in its accounts include, as the previous version left
them. The story, in order: the new program refuses the old state and changes nothing; `migrate-state
--dry-run` changes nothing; `migrate-state` converts it (seeds encrypted in the imported state); the
preview replaces and deletes nothing; `up` makes no JetStream API write and keeps every key; an app
publishes and consumes with its old seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pulumi.automation as auto
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV, provision
from e2e_support import (
    ApiAudit,
    copy_project,
    offline_env,
    pulumi_bin_dir,
    pulumi_command,
    run_cli,
    set_plain_config,
)

from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.outputs import BridgeOutputs
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.deploy.migration.state_migration import (
    CREDENTIAL_TYPE,
    CREDENTIALS_TYPE,
    OLD_TYPES,
    PAIR_STREAM_TYPE,
    serialized_providers,
)
from jsb_infra.local.server import LocalNatsServer

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).parent / "fixtures" / "state-before-pair-stream"
INFO: dict[str, Any] = json.loads((FIXTURE / "fixture.json").read_text())
STACK = INFO["stack"]
PAIRS: list[Pair] = list(parse_pairs(INFO["pairs"]).pairs)
NEW_TYPES = (PAIR_STREAM_TYPE, CREDENTIALS_TYPE)
GUARD_TYPES = ("pulumi:providers:pulumi",)
"""What a refused run leaves in state: the default provider of the built-in `pulumi` package, whose
`readStackOutputs` the guard invokes (no resource of jsb-infra's)."""


def fixture_deployment() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURE / "deployment.json").read_text())
    return document


def fixture_keys() -> dict[str, dict[str, str]]:
    """{app: {public_key, seed}} as the previous version recorded them."""
    return {
        r["inputs"]["app"]: {
            "public_key": r["outputs"]["public_key"],
            "seed": json.loads(r["outputs"]["seed"]["plaintext"]),
        }
        for r in fixture_deployment()["deployment"]["resources"]
        if r["type"] == CREDENTIAL_TYPE
    }


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return pulumi_bin_dir()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    """The servers the previous version provisioned: its streams and consumers, its app keys."""
    store = tmp_path_factory.mktemp("migrate-nats")
    keys = {app: entry["public_key"] for app, entry in fixture_keys().items()}
    (store / "accounts.conf").write_text(render_accounts_conf(account_layout(PAIRS), keys, DEPLOY))
    nats_server = LocalNatsServer(
        store_dir=store, extra_config='include "accounts.conf"\n', env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD}
    ).start()

    async def create_all() -> None:
        for pair in PAIRS:
            await provision(nats_server.url, pair)

    asyncio.run(create_all())
    yield nats_server
    nats_server.stop()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("migrate-pulumi")


@pytest.fixture(scope="module")
def env(scratch: Path, bin_dir: Path) -> dict[str, str]:
    return offline_env(scratch, bin_dir, INFO["passphrase"])


def imported_stack(
    scratch: Path, bin_dir: Path, env: dict[str, str], deployment: dict[str, Any]
) -> auto.Stack:
    """The fixture's stack file (config, encryption salt) and `deployment`, imported as exported."""
    project = copy_project(scratch / "project")
    shutil.copy(FIXTURE / f"Pulumi.{STACK}.yaml", project / "stacks" / f"Pulumi.{STACK}.yaml")
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project),
        env_vars=env,
        pulumi_home=str(scratch / "home"),
        pulumi_command=pulumi_command(bin_dir, scratch),
    )
    created = auto.create_stack(stack_name=STACK, work_dir=str(project), opts=options)
    created.import_stack(auto.Deployment(**deployment))
    return created


@pytest.fixture(scope="module")
def stack(scratch: Path, bin_dir: Path, env: dict[str, str], server: LocalNatsServer) -> auto.Stack:
    imported = imported_stack(scratch, bin_dir, env, fixture_deployment())
    set_plain_config(imported, {"jsb:servers": [server.url]})  # this run's port, not the fixture's
    return imported


def test_00_a_state_it_cannot_map_is_refused_and_left_as_it_was(tmp_path, bin_dir):
    """Two credentials for one app: which key is the app's? The command refuses, naming both."""
    deployment = fixture_deployment()
    resources = deployment["deployment"]["resources"]
    [orders] = [r for r in resources if r["type"] == CREDENTIAL_TYPE and r["inputs"]["app"] == "orders"]
    resources.append({**orders, "urn": orders["urn"].replace("orders-credential", "orders-credential-2")})
    env = offline_env(tmp_path, bin_dir, INFO["passphrase"])
    broken = imported_stack(tmp_path, bin_dir, env, deployment)
    before = decrypted_resources(broken)

    result = migrate_state(broken, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stack 'fleet' cannot be migrated; nothing was changed" in result.stderr
    assert "app 'orders': two credentials (AppCredential 'orders-credential-2' and another)" in result.stderr
    assert decrypted_resources(broken) == before
    assert not list(Path(broken.workspace.work_dir).glob("*.before-pair-stream.*.json"))


def migrate_state(stack: auto.Stack, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.prefix) / "bin" / "jsb-infra"), "migrate-state", "--stack", STACK, *args],
        cwd=stack.workspace.work_dir,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def decrypted_resources(stack: auto.Stack) -> list[dict[str, Any]]:
    """The state's resources with secrets decrypted (the ciphertexts change at every save)."""
    return list(json.loads(run_cli(stack, "stack", "export", "--show-secrets"))["deployment"]["resources"])


def without_trace(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("stackTrace", "sourcePosition", "modified")}


def types_in_state(stack: auto.Stack) -> Counter[str]:
    return Counter(
        r["type"] for r in json.loads(run_cli(stack, "stack", "export"))["deployment"]["resources"]
    )


async def server_objects(server: LocalNatsServer) -> dict[str, str]:
    """Every stream's and consumer's `created`, by name: what a recreate would change."""
    nc = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        out = {}
        for pair in PAIRS:
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{pair.stream}", b"", timeout=5)).data)
            out[pair.stream] = info["created"]
            for app in pair.apps:
                durable = names.durable_name(app)
                reply = await nc.request(f"$JS.API.CONSUMER.INFO.{pair.stream}.{durable}", b"", timeout=5)
                out[f"{pair.stream}/{durable}"] = json.loads(reply.data)["created"]
        return out
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def memo() -> dict[str, Any]:
    return {}


async def test_01_the_new_program_refuses_the_old_state_and_changes_nothing(stack, server, memo):
    memo["objects"] = await server_objects(server)
    before = decrypted_resources(stack)
    async with ApiAudit(server.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
        with pytest.raises(auto.CommandError) as refused:
            stack.up(color="never")
    assert "jsb-infra migrate-state" in str(refused.value)
    assert audit.writes == 0
    after = {r["urn"]: r for r in decrypted_resources(stack)}
    for resource in before:
        # the run registered the stack again (from another call site), and changed nothing else
        assert without_trace(after.pop(resource["urn"])) == without_trace(resource)
    # what the guard itself reads (the stack's previous outputs), nothing else
    assert sorted(r["type"] for r in after.values()) == sorted(GUARD_TYPES), after
    assert await server_objects(server) == memo["objects"]


async def test_02_dry_run_reports_and_changes_nothing(stack, env):
    before = types_in_state(stack)
    result = migrate_state(stack, env, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "pair 'orders-billing': AppPair + Stream 'orders-billing-sync'" in result.stdout
    assert "3 AppCredential (billing, orders, shipping) -> AppCredentials" in result.stdout
    assert "dry run: the stack is unchanged" in result.stdout
    assert types_in_state(stack) == before
    assert not list(Path(stack.workspace.work_dir).glob("*.before-pair-stream.*.json"))


async def test_03_migrate_state_converts_with_a_backup_and_keeps_seeds_encrypted(stack, env, memo):
    result = migrate_state(stack, env)
    assert result.returncode == 0, result.stderr
    [backup] = Path(stack.workspace.work_dir).glob(f"{STACK}.before-pair-stream.*.json")
    backed_up = json.loads(backup.read_text())["deployment"]["resources"]
    assert Counter(r["type"] for r in backed_up)[CREDENTIAL_TYPE] == 3  # the old layout, as it was

    types = types_in_state(stack)
    assert types[PAIR_STREAM_TYPE] == 2 and types[CREDENTIALS_TYPE] == 1
    assert not any(types[t] for t in OLD_TYPES)
    encrypted = run_cli(stack, "stack", "export")
    seeds = [entry["seed"] for entry in fixture_keys().values()]
    for text in (encrypted, backup.read_text()):
        assert not [seed for seed in seeds if seed in text], "a seed in plain text"
    [creds] = [r for r in json.loads(encrypted)["deployment"]["resources"] if r["type"] == CREDENTIALS_TYPE]
    assert "ciphertext" in creds["outputs"]["seeds"]

    memo["migrated"] = {r["urn"]: r for r in decrypted_resources(stack) if r["type"] in NEW_TYPES}

    again = migrate_state(stack, env)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout, again.stdout + again.stderr


async def test_04_preview_replaces_and_deletes_nothing(stack):
    steps = json.loads(run_cli(stack, "preview", "--json", "--show-sames"))["steps"]
    ops = {step["urn"].rsplit("::", 1)[1]: step["op"] for step in steps}
    assert not [s for s in steps if s["op"] in ("delete", "replace", "create-replacement", "delete-replaced")]
    for name in ("orders-billing", "orders-shipping-sync", "app-credentials"):
        assert ops[name] == "same", steps
    diff = run_cli(stack, "preview", "--diff")
    assert "replace" not in diff and "delete" not in diff, diff


async def test_05_up_writes_nothing_to_jetstream_and_keeps_every_key(stack, server, memo):
    async with ApiAudit(server.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
        up = stack.up(color="never")
    assert audit.writes == 0, audit.subjects
    changes = up.summary.resource_changes or {}
    assert not {"create", "delete", "replace"} & {op for op, n in changes.items() if n}, up.stdout
    assert await server_objects(server) == memo["objects"]  # nothing recreated
    # the program registers what the migration wrote: the same provider, and outputs kept as they were
    providers = serialized_providers()
    for resource in decrypted_resources(stack):
        if resource["type"] in NEW_TYPES:
            migrated = memo["migrated"][resource["urn"]]
            assert resource["outputs"] == migrated["outputs"], resource["urn"]
            expected = (
                providers.pair_stream if resource["type"] == PAIR_STREAM_TYPE else providers.credentials
            )
            assert resource["inputs"]["__provider"] == expected

    outputs = stack.outputs()
    assert outputs["credentials"].secret
    keys = fixture_keys()
    for app, entry in keys.items():
        assert outputs["credentials"].value[app]["public_key"] == entry["public_key"]
        assert outputs["credentials"].value[app]["seed"] == entry["seed"]
    assert outputs["layout"].value == "pair-stream"
    old_outputs = next(
        r["outputs"]
        for r in fixture_deployment()["deployment"]["resources"]
        if r["type"] == "pulumi:pulumi:Stack"
    )
    assert outputs["bridges"].value == old_outputs["bridges"]
    assert outputs["permissions"].value == old_outputs["permissions"]
    assert outputs["accounts_conf"].value == old_outputs["accounts_conf"]


async def test_05b_up_with_refresh_reads_and_writes_nothing(stack, server, memo):
    """The server's objects were made apart from this state (their `created` differs from the recorded
    one): a refresh records them, and still nothing is written or recreated."""
    async with ApiAudit(server.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
        up = stack.up(color="never", refresh=True)
    assert audit.writes == 0, audit.subjects
    assert audit.subjects, "a refresh reads the streams and consumers"
    changes = up.summary.resource_changes or {}
    assert not {"create", "delete", "replace"} & {op for op, n in changes.items() if n}, up.stdout
    assert await server_objects(server) == memo["objects"]


async def test_06_an_app_still_publishes_and_consumes_with_its_old_seed(stack, server):
    bridge = BridgeOutputs.model_validate(stack.outputs()["bridges"].value["orders-billing-sync"]["orders"])
    admin = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        await admin.jetstream().publish(bridge.consume_subject, b"from billing", timeout=5)
    finally:
        await admin.close()
    app = await nats.connect(
        server.url, nkeys_seed_str=fixture_keys()["orders"]["seed"], inbox_prefix=bridge.inbox_prefix
    )
    try:
        js = app.jetstream()
        ack = await js.publish(bridge.publish_subject, b"from orders", timeout=5)
        assert ack.stream == "orders-billing-sync"
        sub = await js.pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [msg] = await sub.fetch(1, timeout=5)
        assert (msg.subject, msg.data) == (bridge.consume_subject, b"from billing")
        await msg.ack_sync(timeout=5)
    finally:
        await app.close()
