"""End-to-end: a stack written by an older layout, migrated with `jsb-infra migrate-state` to the app-pair
layout, then run by the new program with the real Pulumi CLI against a real nats-server.

Two stories, one per older layout, each with its own server and file backend:
- `before-pair-stream`: tests/fixtures/state-before-pair-stream (a real `pulumi up` of the first AppPair
  layout: AppPair + Stream + Consumers per pair, an AppCredential per app; two pairs share `orders`);
- `pair-stream`: tests/fixtures/state-pair-stream (the same stack as the pair-stream program left it:
  one PairStream per pair, one AppCredentials); its config is the older fixture's stack file (same
  stack, same encryption salt).
Both hold the same streams, consumers and app keys: a fresh server gets the pairs' streams and
consumers from the admin API and the fixture's app keys in its accounts include, as the older version
left them. The story, in order: the new program refuses the old state and changes nothing;
`migrate-state --dry-run` changes nothing; `migrate-state` converts it (seeds encrypted in the imported
state); the preview replaces and deletes nothing and creates only the permission documents (no server
I/O); `up` and `up --refresh` make no JetStream API write and keep every key; an app publishes and
consumes with its old seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pulumi.automation as auto
import pytest
import yaml
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
    APP_ACCOUNTS_TYPE,
    APP_PAIR_TYPE,
    CONSUMER_TYPE,
    CREDENTIAL_TYPE,
    CREDENTIALS_TYPE,
    PAIR_STREAM_TYPE,
    PERMISSION_DOCUMENT_TYPE,
    STREAM_TYPE,
    serialized_providers,
)
from jsb_infra.local.server import LocalNatsServer

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent / "fixtures"
OLDEST = FIXTURES / "state-before-pair-stream"
"""The stack file (config, encryption salt) and fixture.json of both stories (one stack)."""
INFO: dict[str, Any] = json.loads((OLDEST / "fixture.json").read_text())
STACK = INFO["stack"]
AS_DEPLOYED = {"discard": "old", "max_msgs_per_subject": -1, "max_msg_size": -1, "max_bytes": -1}
"""The stream bounds of the version that wrote the fixture (unbounded, discard old), pinned in the
pairs so that the migration alone is under test (bounding the streams is a separate, later update)."""


def pinned(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, "stream_options": {**AS_DEPLOYED, **p.get("stream_options", {})}} for p in pairs]


PAIRS: list[Pair] = list(parse_pairs(pinned(INFO["pairs"])).pairs)
SERVER_TYPES = (STREAM_TYPE, CONSUMER_TYPE, CREDENTIAL_TYPE)
"""What must be neither replaced nor deleted: the server's objects and the app keys."""
GUARD_TYPES = ("pulumi:providers:pulumi",)
"""What a refused run leaves in state: the default provider of the built-in `pulumi` package, whose
`readStackOutputs` the guard invokes (no resource of jsb-infra's)."""
PERMISSION_DOCUMENTS = sorted(
    f"{pair.resource_name}-{app}-permissions" for pair in PAIRS for app in pair.apps
)
"""The only creates after a migration: a PermissionDocument per pair and app (no server I/O)."""
BACKUP_GLOB = f"{STACK}.before-app-pair.*.json"
REPORT = [
    "PairStream 'orders-billing' -> AppPair + Stream 'orders-billing-sync' + Consumers "
    "(orders-workers, billing-workers) (protected)",
    "PairStream 'orders-shipping-sync' -> AppPair + Stream 'orders-shipping-sync' + Consumers "
    "(orders-workers, shipping-workers)",
    "AppCredentials 'app-credentials' -> 3 AppCredential (billing, orders, shipping) under AppAccounts "
    "'accounts' (same keys, seeds secret)",
    "AccountsInclude 'accounts-include': moved under AppAccounts 'accounts'",
    "ServerDocuments 'server-documents': moved under AppAccounts 'accounts'",
    "stack outputs: layout = 'app-pair'",
]


@dataclass(frozen=True)
class Story:
    layout: str
    fixture: Path
    old_key_types: dict[str, int]
    """What the backup holds of the old layout's keys."""

    def deployment(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.fixture / "deployment.json").read_text())
        return document

    def stack_outputs(self) -> dict[str, Any]:
        return next(
            r["outputs"]
            for r in self.deployment()["deployment"]["resources"]
            if r["type"] == "pulumi:pulumi:Stack"
        )

    def keys(self) -> dict[str, dict[str, str]]:
        """{app: {public_key, seed}} as the older version recorded them."""
        out: dict[str, dict[str, str]] = {}
        for r in self.deployment()["deployment"]["resources"]:
            if r["type"] == CREDENTIAL_TYPE:
                seed = json.loads(r["outputs"]["seed"]["plaintext"])
                out[r["inputs"]["app"]] = {"public_key": r["outputs"]["public_key"], "seed": seed}
            elif r["type"] == CREDENTIALS_TYPE:
                seeds = json.loads(r["outputs"]["seeds"]["plaintext"])
                for app, public_key in r["outputs"]["public_keys"].items():
                    out[app] = {"public_key": public_key, "seed": seeds[app]}
        return out


STORIES = {
    "before-pair-stream": Story("before-pair-stream", OLDEST, {CREDENTIAL_TYPE: 3}),
    "pair-stream": Story(
        "pair-stream", FIXTURES / "state-pair-stream", {CREDENTIALS_TYPE: 1, PAIR_STREAM_TYPE: 2}
    ),
}


def test_the_two_fixtures_hold_the_same_keys():
    """Both stories are one stack at two versions: same apps, same keys."""
    assert STORIES["before-pair-stream"].keys() == STORIES["pair-stream"].keys()
    assert sorted(STORIES["pair-stream"].keys()) == ["billing", "orders", "shipping"]


@pytest.fixture(scope="module", params=list(STORIES))
def story(request: pytest.FixtureRequest) -> Story:
    return STORIES[request.param]


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return pulumi_bin_dir()


@pytest.fixture(scope="module")
def server(story: Story, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    """The server the older version provisioned: its streams and consumers, its app keys."""
    store = tmp_path_factory.mktemp(f"migrate-nats-{story.layout}")
    keys = {app: entry["public_key"] for app, entry in story.keys().items()}
    (store / "accounts.conf").write_text(render_accounts_conf(account_layout(PAIRS), keys, DEPLOY))
    nats_server = LocalNatsServer(
        store_dir=store, extra_config='include "accounts.conf"\n', env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD}
    ).start()

    async def create_all() -> None:
        for pair in PAIRS:
            await provision(nats_server.url, pair)

    try:
        asyncio.run(create_all())
        yield nats_server
    finally:
        nats_server.stop()


@pytest.fixture(scope="module")
def scratch(story: Story, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(f"migrate-pulumi-{story.layout}")


@pytest.fixture(scope="module")
def env(scratch: Path, bin_dir: Path) -> dict[str, str]:
    return offline_env(scratch, bin_dir, INFO["passphrase"])


def imported_stack(
    scratch: Path, bin_dir: Path, env: dict[str, str], deployment: dict[str, Any]
) -> auto.Stack:
    """The fixture's stack file (config, encryption salt) and `deployment`, imported as exported."""
    project = copy_project(scratch / "project")
    stack_file = yaml.safe_load((OLDEST / f"Pulumi.{STACK}.yaml").read_text())
    stack_file["config"]["jsb:pairs"] = pinned(stack_file["config"]["jsb:pairs"])
    (project / "stacks" / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump(stack_file))
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project),
        env_vars=env,
        pulumi_home=str(scratch / "home"),
        pulumi_command=pulumi_command(bin_dir, scratch),
    )
    created = auto.create_stack(stack_name=STACK, work_dir=str(project), opts=options)
    created.import_stack(auto.Deployment(**deployment))
    return created


def recorded_objects() -> dict[str, str]:
    """Every stream's and consumer's `created` as the fixtures record it, keyed as server_objects."""
    out = {}
    for r in STORIES["before-pair-stream"].deployment()["deployment"]["resources"]:
        if r["type"] == STREAM_TYPE:
            out[r["outputs"]["name"]] = r["outputs"]["created"]
        elif r["type"] == CONSUMER_TYPE:
            out[f"{r['outputs']['stream']}/{r['outputs']['durable']}"] = r["outputs"]["created"]
    return out


def as_recorded_from(deployment: dict[str, Any], live: dict[str, str]) -> dict[str, Any]:
    """`deployment` as if its `up` had run against this server: every recorded `created` of a stream or
    consumer (a consumer's `stream_created` too) replaced by the live object's. Without it a refresh
    reads streams newer than the recorded ones, and the new program rightly replaces their consumers
    (a consumer of an earlier stream)."""
    recorded = recorded_objects()
    assert sorted(recorded) == sorted(live)
    times = {recorded[key]: live[key] for key in recorded}
    assert len(times) == len(recorded)

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, str) and value in times:
            return times[value]
        if isinstance(value, str) and any(t in value for t in times):  # secrets' plaintext is JSON text
            for old, new in times.items():
                value = value.replace(old, new)
        return value

    swapped: dict[str, Any] = swap(deployment)
    text = json.dumps(swapped)
    assert not [t for t in times if t in text]
    return swapped


@pytest.fixture(scope="module")
def stack(
    story: Story, scratch: Path, bin_dir: Path, env: dict[str, str], server: LocalNatsServer
) -> auto.Stack:
    live = asyncio.run(server_objects(server))
    imported = imported_stack(scratch, bin_dir, env, as_recorded_from(story.deployment(), live))
    set_plain_config(imported, {"jsb:servers": [server.url]})  # this run's port, not the fixture's
    return imported


@pytest.fixture(scope="module")
def memo(story: Story) -> dict[str, Any]:
    return {}


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


def name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[1]


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


def test_00_a_state_it_cannot_map_is_refused_and_left_as_it_was(tmp_path, bin_dir):
    """Two credentials for one app: which key is the app's? The command refuses, naming both."""
    deployment = STORIES["before-pair-stream"].deployment()
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
    assert not list(Path(broken.workspace.work_dir).glob(BACKUP_GLOB))


async def test_01_the_new_program_refuses_the_old_state_and_changes_nothing(stack, server, memo):
    memo["objects"] = await server_objects(server)
    before = decrypted_resources(stack)
    async with ApiAudit(server.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
        with pytest.raises(auto.CommandError) as refused:
            stack.up(color="never")
    assert "jsb-infra migrate-state" in str(refused.value)
    assert audit.writes == 0, audit.subjects
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
    assert result.stdout.splitlines() == [*REPORT, "dry run: the stack is unchanged"], result.stdout
    assert types_in_state(stack) == before
    assert not list(Path(stack.workspace.work_dir).glob(BACKUP_GLOB))


async def test_03_migrate_state_converts_with_a_backup_and_keeps_seeds_encrypted(story, stack, env, memo):
    result = migrate_state(stack, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[: len(REPORT)] == REPORT, result.stdout
    [backup] = Path(stack.workspace.work_dir).glob(BACKUP_GLOB)
    backed_up = Counter(r["type"] for r in json.loads(backup.read_text())["deployment"]["resources"])
    for type_, count in story.old_key_types.items():  # the old layout, as it was
        assert backed_up[type_] == count, backed_up

    types = types_in_state(stack)
    assert types[APP_PAIR_TYPE] == 2 and types[STREAM_TYPE] == 2 and types[CONSUMER_TYPE] == 4
    assert types[CREDENTIAL_TYPE] == 3 and types[APP_ACCOUNTS_TYPE] == 1
    assert not types[PAIR_STREAM_TYPE] and not types[CREDENTIALS_TYPE] and not types[PERMISSION_DOCUMENT_TYPE]
    encrypted = run_cli(stack, "stack", "export")
    seeds = [entry["seed"] for entry in story.keys().values()]
    for text in (encrypted, backup.read_text()):
        assert not [seed for seed in seeds if seed in text], "a seed in plain text"
    creds = [r for r in json.loads(encrypted)["deployment"]["resources"] if r["type"] == CREDENTIAL_TYPE]
    assert sorted(name_of(r["urn"]) for r in creds) == [
        "accounts-billing-credential",
        "accounts-orders-credential",
        "accounts-shipping-credential",
    ]
    assert all("ciphertext" in r["outputs"]["seed"] for r in creds)

    migrated = decrypted_resources(stack)
    memo["migrated"] = {r["urn"]: r for r in migrated if r["type"] in SERVER_TYPES}
    for r in migrated:
        if r["type"] == CREDENTIAL_TYPE:
            key = story.keys()[r["inputs"]["app"]]
            assert (r["id"], r["outputs"]["public_key"], r["outputs"]["seed"]["plaintext"]) == (
                key["public_key"],
                key["public_key"],
                json.dumps(key["seed"]),
            )

    again = migrate_state(stack, env)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout, again.stdout + again.stderr


async def test_04_preview_replaces_and_deletes_nothing_and_creates_only_the_permission_documents(stack, memo):
    steps = json.loads(run_cli(stack, "preview", "--json", "--show-sames"))["steps"]
    bad = [
        (s["op"], s["urn"])
        for s in steps
        if s["op"] in ("delete", "replace", "create-replacement", "delete-replaced")
    ]
    assert not bad, bad
    creates = sorted((s["newState"]["type"], name_of(s["urn"])) for s in steps if s["op"] == "create")
    assert creates == [(PERMISSION_DOCUMENT_TYPE, name) for name in PERMISSION_DOCUMENTS], creates
    ops = {s["urn"]: s["op"] for s in steps}
    for urn in memo["migrated"]:  # every stream, consumer and app key: untouched
        assert ops.get(urn) == "same", (urn, ops.get(urn))
    diff = run_cli(stack, "preview", "--diff")
    assert not [
        line for line in diff.splitlines() if "replace" in line.lower() or "delete" in line.lower()
    ], diff


async def test_05_up_writes_nothing_to_jetstream_and_keeps_every_key(story, stack, server, memo):
    async with ApiAudit(server.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
        up = stack.up(color="never")
    assert audit.writes == 0, audit.subjects
    changes = {op: n for op, n in (up.summary.resource_changes or {}).items() if n}
    assert changes.get("create") == len(PERMISSION_DOCUMENTS), up.stdout
    assert not {"delete", "replace"} & set(changes), up.stdout
    assert await server_objects(server) == memo["objects"]  # nothing recreated
    # the program registers what the migration wrote: the same provider, and outputs kept as they were
    providers = serialized_providers()
    expected_provider = {
        STREAM_TYPE: providers.stream,
        CONSUMER_TYPE: providers.consumer,
        CREDENTIAL_TYPE: providers.credential,
    }
    seen = set()
    for resource in decrypted_resources(stack):
        if resource["type"] in SERVER_TYPES:
            migrated = memo["migrated"][resource["urn"]]
            assert resource["outputs"] == migrated["outputs"], resource["urn"]
            assert resource["id"] == migrated["id"], resource["urn"]
            assert resource["inputs"]["__provider"] == expected_provider[resource["type"]], resource["urn"]
            seen.add(resource["urn"])
    assert seen == set(memo["migrated"])

    outputs = stack.outputs()
    assert outputs["credentials"].secret
    for app, entry in story.keys().items():
        assert outputs["credentials"].value[app]["public_key"] == entry["public_key"]
        assert outputs["credentials"].value[app]["seed"] == entry["seed"]
    assert outputs["layout"].value == "app-pair"
    old_outputs = story.stack_outputs()
    assert outputs["bridges"].value == old_outputs["bridges"]
    # The include is today's rendering (this version adds the app accounts' limits and the JetStream
    # account's reservations) of the very same users: every app keeps the key it had.
    keys = {app: entry["public_key"] for app, entry in story.keys().items()}
    assert outputs["accounts_conf"].value == render_accounts_conf(account_layout(PAIRS), keys, DEPLOY)
    assert set(re.findall(r'nkey: "(U[A-Z2-7]{55})"', outputs["accounts_conf"].value)) == set(
        re.findall(r'nkey: "(U[A-Z2-7]{55})"', old_outputs["accounts_conf"])
    )


async def test_05b_up_with_refresh_reads_and_writes_nothing(stack, server, memo):
    """A refresh reads every stream and consumer (the state records them as this server has them), and
    still nothing is written, created or recreated."""
    async with ApiAudit(server.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
        up = stack.up(color="never", refresh=True)
    assert audit.writes == 0, audit.subjects
    assert audit.subjects, "a refresh reads the streams and consumers"
    changes = up.summary.resource_changes or {}
    assert not {"create", "delete", "replace"} & {op for op, n in changes.items() if n}, up.stdout
    assert await server_objects(server) == memo["objects"]
    outputs = stack.outputs()
    for resource in decrypted_resources(stack):
        if resource["type"] == CREDENTIAL_TYPE:
            old = memo["migrated"][resource["urn"]]
            assert resource["outputs"]["public_key"] == old["outputs"]["public_key"]
            assert resource["outputs"]["seed"] == old["outputs"]["seed"]
    assert outputs["layout"].value == "app-pair"


async def test_06_an_app_still_publishes_and_consumes_with_its_old_seed(story, stack, server):
    bridge = BridgeOutputs.model_validate(stack.outputs()["bridges"].value["orders-billing-sync"]["orders"])
    admin = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        await admin.jetstream().publish(bridge.consume_subject, b"from billing", timeout=5)
    finally:
        await admin.close()
    app = await nats.connect(
        server.url, nkeys_seed_str=story.keys()["orders"]["seed"], inbox_prefix=bridge.inbox_prefix
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
