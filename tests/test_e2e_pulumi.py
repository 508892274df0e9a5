"""End-to-end: the real Pulumi CLI (Automation API) deploys the jsb program against a real nats-server.

One stack per module, one story: the tests run in order and each builds on the previous one
(up, no-op, in-place update, refused replace, drift, out-of-band delete, outputs and secrets, a
smoke run with an app's generated identity, destroy). Only the real engine shows preview, replace
ordering, secret handling, stack outputs and refresh, which mock and provider-host tests cannot.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pulumi.automation as auto
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV
from e2e_support import (
    admin_connection,
    copy_project,
    offline_env,
    pulumi_bin_dir,
    pulumi_command,
    run_cli,
    set_admin,
    set_plain_config,
)

from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.credentials import public_key_of
from jsb_infra.core.outputs import AppCredentials, BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import consumer_config, stream_config
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import admin_session, differences

pytestmark = pytest.mark.e2e

STACK = "e2e"
STREAM = "e2e-orders-billing"
APPS = ("orders", "billing")
PASSPHRASE = "e2e-test-passphrase"
SECOND_NS = 1_000_000_000

BASE_PAIR: dict[str, Any] = {
    "stream": STREAM,
    "apps": list(APPS),
    "dlq": True,
    "protect": False,
    "consumer": {"max_deliver": 3, "backoff": ["1s", "2s"], "max_ack_pending": 100},
    "stream_options": {"retention": "workqueue", "max_age": "1h", "duplicate_window": "1m"},
}


def with_changes(**changes: Any) -> dict[str, Any]:
    """BASE_PAIR with nested sections merged: with_changes(stream_options={"max_age": "2h"})."""
    pair = json.loads(json.dumps(BASE_PAIR))
    for key, value in changes.items():
        pair[key] = {**pair[key], **value} if isinstance(value, dict) else value
    return pair


# -- module fixtures: one CLI, one server, one project, one stack ------------------------------------
@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return pulumi_bin_dir()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    store = tmp_path_factory.mktemp("e2e-nats")
    # Like `make up`: the server's whole auth config is an included accounts file; until the stack has
    # written its own, the layout rendered without keys (every account and import, no app user yet).
    bootstrap = account_layout(parse_pairs([BASE_PAIR]).pairs)
    (store / "accounts.conf").write_text(render_accounts_conf(bootstrap, {}, DEPLOY))
    nats_server = LocalNatsServer(
        store_dir=store,
        extra_config='include "accounts.conf"\n',
        env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD},
    )
    nats_server.start()
    yield nats_server
    nats_server.stop()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-pulumi")


@pytest.fixture(scope="module")
def out_dir(scratch: Path) -> Path:
    return scratch / "out"


@pytest.fixture(scope="module")
def workspace_options(scratch: Path, bin_dir: Path) -> auto.LocalWorkspaceOptions:
    project = copy_project(scratch / "project")
    return auto.LocalWorkspaceOptions(
        work_dir=str(project),
        env_vars=offline_env(scratch, bin_dir, PASSPHRASE),
        pulumi_home=str(scratch / "home"),
        pulumi_command=pulumi_command(bin_dir, scratch),
    )


def new_stack(
    name: str, options: auto.LocalWorkspaceOptions, url: str, pairs: list[dict[str, Any]], out: Path
) -> auto.Stack:
    """A stack in the shared workspace: servers, pairs and outputDir in the stack file, jsb:admin secret."""
    stack = auto.create_or_select_stack(stack_name=name, work_dir=options.work_dir, opts=options)
    deploy_user = {"user": ADMIN_USER, "password_env": DEPLOY_PASSWORD_ENV}
    set_plain_config(
        stack,
        {"jsb:servers": [url], "jsb:pairs": pairs, "jsb:outputDir": str(out), "jsb:deployUser": deploy_user},
    )
    set_admin(stack, ADMIN_USER, ADMIN_PASSWORD)
    return stack


@pytest.fixture(scope="module")
def stack(
    workspace_options: auto.LocalWorkspaceOptions, server: LocalNatsServer, out_dir: Path
) -> auto.Stack:
    return new_stack(STACK, workspace_options, server.url, [BASE_PAIR], out_dir)


@pytest.fixture(scope="module")
def memo() -> dict[str, Any]:
    """What one test hands to the next (created timestamps, seeds)."""
    return {}


def set_pair(stack: auto.Stack, pair: dict[str, Any]) -> Pair:
    set_plain_config(stack, {"jsb:pairs": [pair]})
    return parse_pairs([pair]).pairs[0]


# -- talking to the server as the admin --------------------------------------------------------------
def admin_js(server: LocalNatsServer) -> Any:
    """An admin session (async context manager) on the test server."""
    return admin_session(admin_connection(server.url, ADMIN_USER, ADMIN_PASSWORD))


async def api(server: LocalNatsServer, subject: str) -> dict[str, Any]:
    """A raw $JS.API request as the admin."""
    async with admin_js(server) as js:
        reply = await js.nc.request(subject, b"", timeout=5)
    result: dict[str, Any] = json.loads(reply.data)
    return result


async def stream_names(server: LocalNatsServer) -> list[str]:
    return list((await api(server, "$JS.API.STREAM.NAMES")).get("streams") or [])


async def consumer_names(server: LocalNatsServer, stream: str) -> list[str]:
    return sorted((await api(server, f"$JS.API.CONSUMER.NAMES.{stream}")).get("consumers") or [])


async def stream_info(server: LocalNatsServer) -> dict[str, Any]:
    async with admin_js(server) as js:
        info = await js.stream_info(STREAM)
    assert info is not None, f"stream {STREAM} is missing on the server"
    return info


async def consumer_info(server: LocalNatsServer, app: str) -> dict[str, Any] | None:
    async with admin_js(server) as js:
        return await js.consumer_info(STREAM, names.durable_name(app))


async def server_matches(server: LocalNatsServer, pair: Pair) -> None:
    """The server holds exactly the rendered stream and consumers (raw INFO, field by field)."""
    assert await stream_names(server) == [pair.stream]
    assert differences(stream_config(pair), (await stream_info(server))["config"]) == {}
    keeper = [names.DLQ_KEEPER] if pair.dlq else []  # holds the dead letters (docs/permissions.md)
    assert await consumer_names(server, pair.stream) == sorted(
        [*(names.durable_name(a) for a in pair.apps), *keeper]
    )
    for app in pair.apps:
        info = await consumer_info(server, app)
        assert info is not None
        assert differences(consumer_config(pair, app), info["config"]) == {}, app


async def publish_as_admin(server: LocalNatsServer, subject: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        js = nc.jetstream()
        for payload in payloads:
            await js.publish(subject, payload, timeout=5)
    finally:
        await nc.close()


PAIR = STREAM
"""The AppPair component's name (pair.resource_name: no `id`, so the stream); its children are
named `<PAIR>-<role>`."""
STREAM_RES = f"{PAIR}-stream"
DOCUMENTS_RES = "accounts-server-documents"
TOTAL = 11
"""What one pair registers: the stack, the AppPair with its Stream, 2 Consumers and 2
PermissionDocuments, the AppAccounts with 2 AppCredentials and the ServerDocuments."""


def consumer_res(app: str) -> str:
    return f"{PAIR}-{app}-consumer"


def changes(summary: dict[str, int] | None) -> set[str]:
    """The kinds of change in a preview/up summary, without "same"."""
    return {op for op, count in (summary or {}).items() if count and op != "same"}


def stepped(run: Any, **kwargs: Any) -> tuple[Any, dict[str, set[str]]]:
    """Run a stack operation (preview, up, refresh, destroy) and return its result and the resources
    it changed, by name (the stack's own as "stack"): {name: {op, ...}} from the engine's step
    events, without "same", without "refresh" (every resource has one in a refresh; what it changed
    shows in the summary and the output) and without the default provider."""
    events: list[Any] = []
    result = run(color="never", on_event=events.append, **kwargs)
    steps: dict[str, set[str]] = {}
    for event in events:
        for step in (event.resource_pre_event, event.res_outputs_event):
            if step is None:
                continue
            op = getattr(step.metadata.op, "value", step.metadata.op)
            if op not in ("same", "refresh") and not step.metadata.type.startswith("pulumi:providers:"):
                is_stack = step.metadata.type == "pulumi:pulumi:Stack"
                name = "stack" if is_stack else step.metadata.urn.rsplit("::", 1)[1]
                steps.setdefault(name, set()).add(op)
    return result, steps


# -- the story -----------------------------------------------------------------------------------------
async def test_01_up_from_nothing_creates_exactly_the_rendered_topology(stack, server, out_dir, memo):
    assert await stream_names(server) == []
    result, steps = stepped(stack.up)
    # the stack; the AppPair with its stream, consumers and permission documents; the AppAccounts
    # with the apps' credentials and the server documents
    assert result.summary.resource_changes == {"create": TOTAL}
    assert steps == {
        name: {"create"}
        for name in [
            "stack",
            PAIR,
            STREAM_RES,
            *(consumer_res(app) for app in APPS),
            *(f"{PAIR}-{app}-permissions" for app in APPS),
            "accounts",
            *(f"accounts-{app}-credential" for app in APPS),
            DOCUMENTS_RES,
        ]
    }, steps
    types = {r["urn"].rsplit("::", 1)[1]: r["type"] for r in stack.export_stack().deployment["resources"]}
    assert types[PAIR] == "jsb:index:AppPair" and types["accounts"] == "jsb:index:AppAccounts"
    assert types[STREAM_RES] == "pulumi-python:dynamic/jsb:Stream"
    assert types[consumer_res("orders")] == "pulumi-python:dynamic/jsb:Consumer"
    assert types[f"{PAIR}-orders-permissions"] == "pulumi-python:dynamic/jsb:PermissionDocument"
    assert types["accounts-orders-credential"] == "pulumi-python:dynamic/jsb:AppCredential"
    assert types[DOCUMENTS_RES] == "pulumi-python:dynamic/jsb:ServerDocuments"
    assert stack.outputs()["layout"].value == "app-pair"
    pair = parse_pairs([BASE_PAIR]).pairs[0]
    await server_matches(server, pair)
    written = sorted(p.name for p in (out_dir / STREAM / "permissions").iterdir())
    assert written == ["billing.conf", "billing.json", "orders.conf", "orders.json"]
    assert (out_dir / "accounts.conf").read_text() == stack.outputs()["accounts_conf"].value


async def test_02_second_preview_and_up_change_nothing(stack, server):
    before = await stream_info(server)
    preview = stack.preview(color="never")
    assert changes(preview.change_summary) == set(), preview.stdout
    up = stack.up(color="never")
    assert changes(up.summary.resource_changes) == set(), up.stdout
    assert (await stream_info(server))["created"] == before["created"]


async def test_03_ack_wait_and_max_age_update_in_place(stack, server, memo):
    pair = parse_pairs([BASE_PAIR]).pairs[0]
    billing = pair.consumer_for("billing")
    await publish_as_admin(server, names.publish_subject("orders", "billing"), [b"m1", b"m2", b"m3"])
    stream_before = await stream_info(server)
    assert stream_before["state"]["messages"] == 3
    consumers_before = {app: await consumer_info(server, app) for app in APPS}

    # A stream setting: the Stream updates in place; its consumers are untouched.
    set_pair(stack, with_changes(stream_options={"max_age": "2h"}))
    stream_only, steps = stepped(stack.preview)
    # the stream, and the rendered stream.json among the server documents
    assert stream_only.change_summary == {"same": TOTAL - 2, "update": 2}, stream_only.stdout
    assert steps == {STREAM_RES: {"update"}, DOCUMENTS_RES: {"update"}}, stream_only.stdout

    # backoff [1s, 2s] -> [2s, 3s]: the server's ack_wait (= backoff[0]) goes 1s -> 2s.
    changed = set_pair(
        stack, with_changes(consumer={"backoff": ["2s", "3s"]}, stream_options={"max_age": "2h"})
    )
    assert changed.consumer_for("billing").ack_wait == 2 * SECOND_NS != billing.ack_wait
    # the stream, both consumers, and the documents (stream and consumer configs, bridges)
    updated = {STREAM_RES, *(consumer_res(app) for app in APPS), DOCUMENTS_RES}
    preview, steps = stepped(stack.preview)
    assert preview.change_summary == {"same": TOTAL - 4, "update": 4}, preview.stdout
    assert steps == {name: {"update"} for name in updated}, preview.stdout
    up, steps = stepped(stack.up)
    assert up.summary.resource_changes == {"same": TOTAL - 4, "update": 4}, up.stdout
    assert steps == {name: {"update"} for name in updated}, up.stdout

    await server_matches(server, changed)
    stream_after = await stream_info(server)
    assert stream_after["config"]["max_age"] == 2 * 3600 * SECOND_NS
    assert stream_after["created"] == stream_before["created"]
    assert stream_after["state"]["messages"] == 3  # not recreated: the messages are still there
    for app in APPS:
        after = await consumer_info(server, app)
        assert after is not None and consumers_before[app] is not None
        assert after["created"] == consumers_before[app]["created"], f"{app}'s consumer was recreated"
        assert after["config"]["ack_wait"] == 2 * SECOND_NS
        assert after["config"]["backoff"] == [2 * SECOND_NS, 3 * SECOND_NS]
    memo["pair"] = with_changes(consumer={"backoff": ["2s", "3s"]}, stream_options={"max_age": "2h"})
    memo["stream_created"] = stream_before["created"]


def outputs_section(stdout: str) -> str:
    """The stack outputs part of a `preview --diff` (after the resources)."""
    for marker in ("--outputs:--", "Outputs:"):
        if marker in stdout:
            return stdout.split(marker, 1)[1]
    raise AssertionError(f"no outputs in the preview:\n{stdout}")


async def test_03b_preview_diff_shows_permission_and_bridge_changes(stack, server, memo):
    """What a reviewer sees in `pulumi preview --diff`: every permission change keyed by subject (not a
    list position), every bridge field an app reads, and a new app's identity, before anything runs."""
    current: dict[str, Any] = memo["pair"]
    before = await stream_info(server)

    set_pair(stack, {**current, "dlq": False})
    dlq_off = stack.preview(color="never", diff=True).stdout
    outputs = outputs_section(dlq_off)
    for app in APPS:
        assert re.search(rf"- {app}\.sync\.dlq\s+: \"{app} parks messages", outputs), dlq_off
        assert re.search(rf'-\s+\{{service: "{app}\.sync\.dlq", accounts: \["APP_{app}"\]\}}', dlq_off)
    assert outputs.count("- dlq_subject") == 2, outputs
    assert not re.search(r"\[\d+\]: \"\w+\.sync\.dlq\" =>", outputs), "a positional list diff"

    set_pair(stack, {**current, "consumer": {**current["consumer"], "max_deliver": 4}})
    max_deliver = outputs_section(stack.preview(color="never", diff=True).stdout)
    assert len(re.findall(r"~ max_deliver\s*: 3 => 4", max_deliver)) == 2, max_deliver  # both bridges

    shipping = {
        "stream": "e2e-billing-shipping",
        "apps": ["billing", "shipping"],
        "dlq": False,
        "protect": False,
    }
    set_plain_config(stack, {"jsb:pairs": [current, shipping]})
    added, steps = stepped(stack.preview, diff=True)
    # the new pair (component, stream, consumers, permission documents) and one new identity,
    # shipping's (billing keeps its own); the documents gain the new pair's and shipping's
    new_pair = "e2e-billing-shipping"
    assert steps == {
        new_pair: {"create"},
        f"{new_pair}-stream": {"create"},
        **{
            f"{new_pair}-{app}-{role}": {"create"}
            for app in ("billing", "shipping")
            for role in ("consumer", "permissions")
        },
        "accounts-shipping-credential": {"create"},
        DOCUMENTS_RES: {"update"},
    }, added.stdout
    assert added.change_summary.get("create") == 7, added.stdout
    assert added.stdout.count("+ pulumi-python:dynamic/jsb:Stream: (create)") == 1, added.stdout
    assert added.stdout.count("+ jsb:index:AppPair: (create)") == 1, added.stdout
    assert added.stdout.count("+ pulumi-python:dynamic/jsb:AppCredential: (create)") == 1, added.stdout
    added_outputs = outputs_section(added.stdout)
    assert re.search(r"\+ shipping\s*: \{", added_outputs), added_outputs
    assert re.search(r"\+ billing\.sync\.shipping\s+:", added_outputs), added_outputs

    # A rename keeps the pair's identity through `id`: a previewed, guarded replace of the stream (its 3
    # messages would go), never a second pair whose stream collides with the first.
    set_pair(stack, {**current, "stream": "e2e-orders-billing-v2", "id": STREAM})
    with pytest.raises(auto.CommandError) as renamed:
        stack.preview(color="never")
    refused = f"refusing to replace stream {STREAM!r} (because name changed): it still holds 3 message(s)"
    assert refused in str(renamed.value), str(renamed.value)

    set_pair(stack, current)
    assert changes(stack.preview(color="never").change_summary) == set()
    assert (await stream_info(server))["created"] == before["created"], "previews change nothing"


async def test_04_retention_change_is_a_replace_refused_while_messages_remain(stack, server, memo):
    current: dict[str, Any] = memo["pair"]
    limits = {**current, "stream_options": {**current["stream_options"], "retention": "limits"}}

    # With messages in the stream and no opt-in, the preview already fails (diff runs the guard) ...
    set_pair(stack, limits)
    with pytest.raises(auto.CommandError) as refused_preview:
        stack.preview(color="never")
    guard = f"refusing to replace stream {STREAM!r} (because config.retention changed)"
    assert guard in str(refused_preview.value), str(refused_preview.value)
    assert "still holds 3 message(s)" in str(refused_preview.value)
    # ... and so does the up, before it deletes anything.
    with pytest.raises(auto.CommandError) as refused_up:
        stack.up(color="never")
    assert guard in str(refused_up.value)
    # kept by a failed up
    assert sorted(stack.outputs()) == [
        "accounts_conf",
        "bridges",
        "credentials",
        "documents",
        "layout",
        "permissions",
    ]

    set_pair(stack, current)
    info = await stream_info(server)
    assert (info["config"]["retention"], info["created"]) == ("workqueue", memo["stream_created"])
    assert info["state"]["messages"] == 3
    await server_matches(server, parse_pairs([current]).pairs[0])
    assert changes(stack.preview(color="never").change_summary) == set()

    # The documented two-step opt-in: store allow_destroy_with_messages first (in place), then the
    # preview of the retention change shows the replace the guard was refusing.
    opted_in = {**current, "allow_destroy_with_messages": True}
    set_pair(stack, opted_in)
    up, steps = stepped(stack.up)
    # stored with the stream and each consumer (their deletes read it); no document changes
    stored = {STREAM_RES, *(consumer_res(app) for app in APPS)}
    assert up.summary.resource_changes == {"same": TOTAL - 3, "update": 3}, up.stdout
    assert steps == {name: {"update"} for name in stored}, up.stdout
    set_pair(stack, {**limits, "allow_destroy_with_messages": True})
    preview, steps = stepped(stack.preview)
    # the stream is replaced, and the consumers with it (their stream's incarnation changes); the
    # documents updated
    assert preview.change_summary == {"same": TOTAL - 4, "replace": 3, "update": 1}, preview.stdout
    assert {name: "replace" in ops for name, ops in steps.items()} == {
        **{name: True for name in stored},
        DOCUMENTS_RES: False,
    }, preview.stdout

    set_pair(stack, opted_in)  # restore: nothing was replaced
    assert changes(stack.preview(color="never").change_summary) == set()
    info = await stream_info(server)
    assert (info["config"]["retention"], info["created"]) == ("workqueue", memo["stream_created"])
    assert info["state"]["messages"] == 3
    memo["pair"] = opted_in


async def test_05_out_of_band_edit_shows_in_refresh_and_up_puts_it_back(stack, server, memo):
    pair = parse_pairs([memo["pair"]]).pairs[0]
    rendered = consumer_config(pair, "billing")
    async with admin_js(server) as js:
        await js.update_consumer(STREAM, {**rendered, "max_ack_pending": 7})
    assert (await consumer_info(server, "billing") or {})["config"]["max_ack_pending"] == 7

    refresh = stack.refresh(color="never")
    assert refresh.summary.resource_changes == {"same": TOTAL - 1, "update": 1}, refresh.stdout
    # only billing's consumer drifted
    refreshed = re.findall(r"^\s*~\s+(\S+) (\S+) updated", refresh.stdout, re.MULTILINE)
    assert refreshed == [("pulumi-python:dynamic/jsb:Consumer", consumer_res("billing"))], refresh.stdout
    preview, steps = stepped(stack.preview)
    assert preview.change_summary == {"same": TOTAL - 1, "update": 1}, preview.stdout
    assert steps == {consumer_res("billing"): {"update"}}, preview.stdout

    up, steps = stepped(stack.up)
    assert up.summary.resource_changes == {"same": TOTAL - 1, "update": 1}, up.stdout
    assert steps == {consumer_res("billing"): {"update"}}, up.stdout
    after = await consumer_info(server, "billing")
    assert after is not None and after["config"]["max_ack_pending"] == rendered["max_ack_pending"] == 100
    await server_matches(server, pair)


async def test_06_out_of_band_delete_is_recreated(stack, server, memo):
    pair = parse_pairs([memo["pair"]]).pairs[0]
    old = await consumer_info(server, "orders")
    async with admin_js(server) as js:
        assert await js.delete_consumer(STREAM, names.durable_name("orders"))

    # Pulumi diffs against its state, not the server: a plain preview does not see the delete ...
    assert changes(stack.preview(color="never").change_summary) == set()
    # ... `up --refresh` (Pulumi's way to see drift) reads the consumer as gone and recreates it.
    up, steps = stepped(stack.up, refresh=True)
    assert up.summary.resource_changes is not None and up.summary.resource_changes.get("create") == 1, (
        up.stdout
    )
    assert changes(up.summary.resource_changes) == {"create"}, up.stdout
    # only the orders consumer: found missing by the refresh, then created again
    assert steps == {consumer_res("orders"): {"create"}}, up.stdout
    new = await consumer_info(server, "orders")
    assert new is not None and old is not None and new["created"] != old["created"]
    await server_matches(server, pair)


async def test_07_outputs_bridges_and_secret_credentials(stack, server, scratch, memo):
    pair = parse_pairs([memo["pair"]]).pairs[0]
    outputs = stack.outputs()
    assert not outputs["bridges"].secret
    assert outputs["credentials"].secret
    for app in APPS:
        bridge = BridgeOutputs.model_validate(outputs["bridges"].value[STREAM][app])
        live = await consumer_info(server, app)
        assert live is not None
        assert bridge.durable == live["name"] and bridge.stream == live["stream_name"] == STREAM
        assert bridge.consumer.max_deliver == live["config"]["max_deliver"]
        assert bridge.consumer.ack_wait_ns == live["config"]["ack_wait"] == 2 * SECOND_NS
        assert bridge.consumer.backoff_ns == live["config"]["backoff"]
        assert bridge.consumer.max_ack_pending == live["config"]["max_ack_pending"]
        assert bridge == bridge_outputs(pair, app, [server.url])

    plain = json.loads(run_cli(stack, "stack", "output", "--json"))
    assert plain["credentials"] == "[secret]"
    assert plain["bridges"] == outputs["bridges"].value
    shown = json.loads(run_cli(stack, "stack", "output", "--json", "--show-secrets"))
    assert shown["credentials"] == outputs["credentials"].value
    seeds = {}
    assert sorted(shown["credentials"]) == sorted(APPS)  # one identity per app
    for app in APPS:
        creds = AppCredentials.model_validate(shown["credentials"][app])
        assert creds.seed.startswith("SU") and public_key_of(creds.seed) == creds.public_key
        seeds[app] = creds.seed
    memo["seeds"] = seeds

    # `pulumi stack export` (what a state file holds) has the public keys, so this is the right place
    # to look, but no seed and no admin password; the seeds are there only as encrypted secrets.
    # (The Automation API's export_stack() passes --show-secrets: there the seed is a decrypted secret.)
    exported = run_cli(stack, "stack", "export")
    assert public_key_of(seeds["orders"]) in exported
    decrypted = stack.export_stack().deployment
    credentials = {
        r["outputs"]["app"]: r for r in decrypted["resources"] if r["type"].endswith("jsb:AppCredential")
    }
    assert sorted(credentials) == sorted(APPS)  # one AppCredential per app
    for app in APPS:
        assert credentials[app]["urn"].endswith(f"::accounts-{app}-credential")
        envelope = credentials[app]["outputs"]["seed"]  # each app's seed, its own secret
        assert envelope["4dabf18193072939515e22adb298388d"] == "1b47061264138c4ac30d75fd1eb44270"
        assert json.loads(envelope["plaintext"]) == seeds[app]
        assert credentials[app]["outputs"]["public_key"] == public_key_of(seeds[app])
    state_files = [p for p in (scratch / "state").rglob("*") if p.is_file()]
    stack_file = scratch / "project" / "stacks" / f"Pulumi.{STACK}.yaml"
    assert any(p.name == f"{STACK}.json" for p in state_files) and stack_file.exists()
    texts = {"pulumi stack export": exported, str(stack_file): stack_file.read_text()}
    state_texts = {str(p): p.read_bytes().decode("utf-8", "replace") for p in state_files}
    assert any(public_key_of(seeds["orders"]) in text for text in state_texts.values())
    texts.update(state_texts)
    for where, text in texts.items():
        for secret in [*seeds.values(), ADMIN_PASSWORD]:
            assert secret not in text, f"a secret appears in plain text in {where}"


class Errors:
    """Async errors nats-py hands to error_cb (permission violations arrive only there)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, err: Exception) -> None:
        self.seen.append(str(err).lower())

    def violations(self) -> list[str]:
        return [e for e in self.seen if "permissions violation" in e]


async def connect_app(url: str, seed: str, bridge: BridgeOutputs, errors: Errors, within: float = 5.0) -> Any:
    """Connect as the app; retried while the server applies the reloaded config (SIGHUP is async)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await nats.connect(
                url,
                nkeys_seed_str=seed,
                inbox_prefix=bridge.inbox_prefix,
                error_cb=errors.record,
                allow_reconnect=False,
                connect_timeout=2,
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_08_smoke_run_with_generated_credentials_and_permissions(stack, server, out_dir, memo):
    # the server takes the account layout the stack wrote, as is
    (server.store_dir / "accounts.conf").write_text((out_dir / "accounts.conf").read_text())
    server.reload()

    bridge = BridgeOutputs.model_validate(stack.outputs()["bridges"].value[STREAM]["orders"])
    await publish_as_admin(server, bridge.consume_subject, [b"smoke-in"])
    errors = Errors()
    nc = await connect_app(server.url, memo["seeds"]["orders"], bridge, errors)
    try:
        js = nc.jetstream()
        ack = await js.publish(bridge.publish_subject, b"smoke-out", timeout=5)
        assert ack.stream == STREAM
        sub = await js.pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [msg] = await sub.fetch(1, timeout=5)
        assert (msg.subject, msg.data) == (bridge.consume_subject, b"smoke-in")
        await msg.ack_sync(timeout=5)
        await nc.flush()
        await asyncio.sleep(0.1)
        assert errors.violations() == [], errors.seen

        # The permissions are enforced, not just loaded: the peer's subject is refused.
        await nc.publish(names.publish_subject("billing", "orders"), b"not mine")
        await nc.flush()
        await asyncio.sleep(0.2)
        assert any('"billing.sync.orders"' in v for v in errors.violations()), errors.seen
    finally:
        await nc.close()
    info = await consumer_info(server, "orders")
    assert info is not None and info["num_ack_pending"] == 0 and info["num_pending"] == 0
    assert info["ack_floor"]["consumer_seq"] == 1


async def test_08b_opted_in_replace_recreates_the_stream_and_its_consumers(stack, server, memo):
    """A real replace (storage file -> memory): the Stream is replaced delete-first, and its Consumers
    with it (their stream's incarnation changes), created again as new durables on the new stream."""
    before = await stream_info(server)
    consumers_before = {app: await consumer_info(server, app) for app in APPS}
    memory = {**memo["pair"], "stream_options": {**memo["pair"]["stream_options"], "storage": "memory"}}
    pair = set_pair(stack, memory)

    up, steps = stepped(stack.up)
    # the stream, and its consumers with it; the rendered stream.json updated
    assert up.summary.resource_changes == {"same": TOTAL - 4, "replace": 3, "update": 1}, up.stdout
    replaced = {STREAM_RES, *(consumer_res(app) for app in APPS)}
    assert {name: "replace" in ops for name, ops in steps.items()} == {
        **{name: True for name in replaced},
        DOCUMENTS_RES: False,
    }, up.stdout
    after = await stream_info(server)
    assert after["config"]["storage"] == "memory" and after["created"] != before["created"]
    assert after["state"]["messages"] == 0  # the opt-in said losing them was fine
    for app in APPS:
        old, new = consumers_before[app], await consumer_info(server, app)
        assert old is not None and new is not None and new["created"] != old["created"], app
    await server_matches(server, pair)
    assert changes(stack.preview(color="never").change_summary) == set()
    bridges = stack.outputs()["bridges"].value[STREAM]
    assert BridgeOutputs.model_validate(bridges["orders"]) == bridge_outputs(pair, "orders", [server.url])

    await publish_as_admin(server, names.publish_subject("orders", "billing"), [b"after-replace"])
    memo["pair"] = memory


async def test_09_destroy_leaves_the_server_empty(stack, server, out_dir):
    # The stream still holds messages; the opt-in stored in test_04 lets destroy delete it.
    assert (await stream_info(server))["state"]["messages"] >= 1
    result = stack.destroy(color="never")
    assert result.summary.resource_changes == {"delete": TOTAL}
    assert await stream_names(server) == []
    assert not list(out_dir.rglob("*.conf")) and not list(out_dir.rglob("*.json"))


async def test_10_invalid_stack_config_fails_naming_the_field_and_creates_nothing(
    workspace_options, server, scratch
):
    out = scratch / "invalid-out"
    other = {"stream": "e2e-other", "apps": ["billing", "orders"], "dlq": False}  # same subjects as BASE_PAIR
    stack = new_stack("e2e-invalid", workspace_options, server.url, [BASE_PAIR, other], out)
    try:
        with pytest.raises(auto.CommandError) as overlap:
            stack.up(color="never")
        assert "jsb:pairs[1] (stream 'e2e-other') overlaps pairs[0]" in str(overlap.value)
        assert "Traceback" not in str(overlap.value)

        set_plain_config(stack, {"jsb:pairs": [{**BASE_PAIR, "stream_options": {"max_age": "soon"}}]})
        with pytest.raises(auto.CommandError) as bad_duration:
            stack.preview(color="never")
        assert "jsb:pairs[0].stream_options.max_age: 'soon' is not a duration" in str(bad_duration.value)

        assert await stream_names(server) == []
        assert not out.exists()
        resources = stack.export_stack().deployment.get("resources") or []
        assert [r["type"] for r in resources if r["type"].startswith("pulumi-python")] == []
    finally:
        stack.workspace.remove_stack(stack.name, force=True)
