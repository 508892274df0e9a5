"""End-to-end, JWT mode: the real Pulumi CLI issues the accounts and users on a server in operator mode.

Offline: an operator, its signing key, a system account and a JetStream account with a deploy user
are made here (tests/operator_support.py), and one nats-server runs in operator mode with a full
directory resolver. One stack, one story, in order: `pulumi up` creates the JetStream account's JWT
and an account + user per app, every JWT read back by the server and by `nsc describe jwt`; every app
does every runtime operation with the exported `.creds`; no seed is in plain text; DLQ off updates the
JWTs and the apps' rights with the same server process; `rotate` re-issues a user; removing a pair
revokes its apps; `pulumi destroy` leaves the resolver without our exports and imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pulumi.automation as auto
import pytest
from e2e_support import (
    ensure_nsc,
    local_stack,
    preview_copy,
    run_cli,
    set_plain_config,
)
from nats.aio.client import RawCredentials
from operator_support import Operator

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout
from jsb_infra.core.outputs import BridgeOutputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.runtime import BridgeClient, Credentials, load_bridge, load_credentials

pytestmark = pytest.mark.e2e

STACK = "jwt"
PASSPHRASE = "e2e-jwt-passphrase"
CONSUMER = {"max_deliver": 5, "backoff": [], "ack_wait": "2s", "max_ack_pending": 100}
FIRST: dict[str, Any] = {
    "stream": "jwt-orders-billing",
    "apps": ["orders", "billing"],
    "dlq": True,
    "protect": False,
    "allow_destroy_with_messages": True,
    "consumer": CONSUMER,
}
SECOND: dict[str, Any] = {**FIRST, "stream": "jwt-audit-ledger", "apps": ["audit", "ledger"]}


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def operator() -> Operator:
    return Operator()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-jwt")


@pytest.fixture(scope="module")
def server(operator: Operator, scratch: Path) -> Iterator[LocalNatsServer]:
    nats_server = LocalNatsServer(
        store_dir=scratch / "nats", extra_config=operator.server_config(scratch / "resolver")
    )
    nats_server.start()
    yield nats_server
    nats_server.stop()


@pytest.fixture(scope="module")
def nsc() -> Path:
    return ensure_nsc()


@pytest.fixture(scope="module")
def stack(operator: Operator, server: LocalNatsServer, scratch: Path) -> auto.Stack:
    stack = local_stack(scratch, STACK, PASSPHRASE)
    _, deploy = operator.write_creds(scratch / "creds")
    signing_key_file(scratch).write_text(operator.signing_seed + "\n")
    configure(stack, server, operator, [FIRST, SECOND], scratch / "out")
    # The secrets stay out of the stack config (and so out of the state): it names where the
    # providers read them, a file for the signing key and environment variables for the rest.
    stack.workspace.env_vars.update({CREDS_ENV: str(deploy), SYSTEM_CREDS_ENV: operator.system_creds})
    stack.set_config("jsb:admin.creds_file.env", auto.ConfigValue(CREDS_ENV), path=True)
    stack.set_config(
        "jsb:operatorSigningKey.file", auto.ConfigValue(str(signing_key_file(scratch))), path=True
    )
    stack.set_config("jsb:systemCreds.env", auto.ConfigValue(SYSTEM_CREDS_ENV), path=True)
    return stack


CREDS_ENV, SYSTEM_CREDS_ENV = "JSB_NATS_CREDS", "JSB_SYSTEM_CREDS"


def signing_key_file(scratch: Path) -> Path:
    return scratch / "creds" / "operator-signing.nk"


def configure(
    stack: auto.Stack,
    server: LocalNatsServer,
    operator: Operator,
    pairs: list[dict[str, Any]],
    out: Path,
    rotate: dict[str, str] | None = None,
) -> None:
    auth: dict[str, Any] = {
        "mode": "jwt",
        "jetstream_account": operator.jetstream_key,
        "signing_keys": [operator.jetstream_signing_key],  # it issued the deploy user: keep it
    }
    if rotate:
        auth["rotate"] = rotate
    set_plain_config(
        stack, {"jsb:servers": [server.url], "jsb:pairs": pairs, "jsb:outputDir": str(out), "jsb:auth": auth}
    )


@pytest.fixture(scope="module")
def memo() -> dict[str, Any]:
    return {}


# -- helpers -------------------------------------------------------------------------------------------
async def resolver_jwt(server: LocalNatsServer, operator: Operator, account: str) -> dict[str, Any]:
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        token = await resolver.lookup(nc, account)
    assert token, f"the resolver holds no JWT for {account}"
    return jc.decode(token)


def credentials(stack: auto.Stack) -> dict[str, Any]:
    shown = json.loads(run_cli(stack, "stack", "output", "credentials", "--json", "--show-secrets"))
    assert isinstance(shown, dict)
    return shown


def bridge_of(stack: auto.Stack, stream: str, app: str) -> BridgeOutputs:
    return load_bridge(stack.outputs()["bridges"].value, stream=stream, app=app)


class Outputs:
    """The stack's bridges and credentials, read once (each read runs the CLI)."""

    def __init__(self, stack: auto.Stack):
        self.bridges = stack.outputs()["bridges"].value
        self.credentials = credentials(stack)

    def bridge(self, stream: str, app: str) -> BridgeOutputs:
        return load_bridge(self.bridges, stream=stream, app=app)

    def creds(self, app: str) -> Credentials:
        return load_credentials(credentials=self.credentials, app=app)


async def connect(server: LocalNatsServer, creds: str, app: str, **extra: Any) -> nats.NATS:
    return await nats.connect(
        server.url,
        user_credentials=RawCredentials(creds),
        inbox_prefix=names.inbox_prefix(app),
        allow_reconnect=False,
        connect_timeout=2,
        **extra,
    )


async def refused(server: LocalNatsServer, creds: str, app: str) -> bool:
    """True when the server refuses a connection with these credentials."""
    try:
        nc = await connect(server, creds, app)
    except Exception:
        return True
    await nc.close()
    return False


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return await check()


def nsc_reads(nsc: Path, scratch: Path, token: str) -> dict[str, Any]:
    """`nsc describe jwt --json`: nsc verifies the signature and decodes through nats-io/jwt's types,
    so a claim it does not know would be missing from what it prints."""
    path = scratch / "token.jwt"
    path.write_text(token)
    result = subprocess.run(
        [str(nsc), "describe", "jwt", "-f", str(path), "--json"],
        capture_output=True,
        text=True,
        env={"HOME": str(scratch), "NSC_HOME": str(scratch / "nsc"), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert isinstance(out, dict)
    return out


async def send_four_each_way(outs: Outputs, stream: str, app: str) -> None:
    """Four events for `app` from its peer, and one from `app`, through the runtime client."""
    bridge = outs.bridge(stream, app)
    async with BridgeClient(
        outs.bridge(stream, bridge.destination), outs.creds(bridge.destination)
    ) as peer_client:
        for i in range(4):
            ack = await peer_client.publish("sync", "thing", i, {"n": i})
            assert ack.stream == stream
    async with BridgeClient(bridge, outs.creds(app)) as client:
        ack = await client.publish("sync", "thing", 99, {"from": app})
        assert ack.stream == stream


async def every_runtime_operation(server: LocalNatsServer, outs: Outputs, stream: str, app: str) -> None:
    """As `app`, through the runtime client's config loaders: publish (PubAck), DLQ publish, fetch,
    ack, nak with delay, in_progress twice, term, ack_sync, all with the `.creds` of the output."""
    bridge = outs.bridge(stream, app)
    creds = outs.creds(app)
    assert creds.method == "creds"
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(
        server.url, **creds.connect_options(), inbox_prefix=bridge.inbox_prefix, error_cb=on_error
    )
    try:
        js = nc.jetstream()
        dlq_ack = await js.publish(bridge.dlq_subject or "", b"parked")
        assert dlq_ack.stream == stream
        sub = await js.pull_subscribe_bind(durable=bridge.durable, stream=stream)
        with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
            for old in await sub.fetch(10, timeout=1):  # what an earlier app's run sent this one
                await old.ack_sync(timeout=5)
        await send_four_each_way(outs, stream, app)
        first, second, third, fourth = await sub.fetch(4, timeout=5)
        await first.ack()
        await second.nak(delay=0.3)
        await third.in_progress()
        await third.in_progress()
        await third.ack_sync(timeout=5)
        await fourth.term()
        [again] = await sub.fetch(1, timeout=5)  # the nak'd one, after its delay
        assert again.data == second.data and again.metadata.num_delivered == 2
        await again.ack_sync(timeout=5)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await sub.fetch(1, timeout=0.5)  # nothing else: term and acks held
        assert not [e for e in errors if "permission" in e.lower()], errors
    finally:
        await nc.close()


# -- the story -----------------------------------------------------------------------------------------
async def test_01_up_issues_accounts_and_users_every_jwt_read_by_the_server_and_nsc(
    stack, server, operator, nsc, scratch, memo
):
    memo["pid"] = server.process.pid if server.process else None
    result = stack.up(color="never")
    memo["up log"] = result.stdout + result.stderr
    created = result.summary.resource_changes or {}
    assert created.get("create", 0) >= 5, result.stdout
    layout = account_layout(parse_pairs([FIRST, SECOND]).pairs)

    js = await resolver_jwt(server, operator, operator.jetstream_key)
    exports = js["nats"]["exports"]
    assert sorted(e["subject"] for e in exports) == sorted(s.subject for s, _ in layout.exports())
    assert all(e["type"] == "service" and e["token_req"] is True for e in exports)
    streamed = {e["subject"] for e in exports if e.get("response_type") == "Stream"}
    assert streamed == {s.subject for s, _ in layout.exports() if s.response_type == "Stream"}
    assert all(".MSG.NEXT." in s for s in streamed) and len(streamed) == 4
    assert js["nats"]["limits"]["disk_storage"] == -1  # JetStream on
    kept, [signing_key] = (
        {operator.jetstream_signing_key},
        set(js["nats"]["signing_keys"]) - {operator.jetstream_signing_key},
    )
    assert kept < set(js["nats"]["signing_keys"])  # the operator's own key is kept
    issued = credentials(stack)
    assert sorted(issued) == ["audit", "billing", "ledger", "orders"]
    for account in layout.apps:
        entry = issued[account.app]
        claims = await resolver_jwt(server, operator, entry["account"])
        assert claims["name"] == account.account and claims["iss"] == jc.public_key(operator.signing_seed)
        limits = claims["nats"]["limits"]
        assert "disk_storage" not in limits and "mem_storage" not in limits  # no JetStream of its own
        imports = claims["nats"]["imports"]
        assert [i["subject"] for i in imports] == sorted(s.subject for s in account.services)
        for item in imports:
            activation = jc.decode(item["token"])
            assert activation["sub"] == entry["account"] and activation["iss"] == signing_key
            assert activation["nats"] == {
                "type": "activation",
                "version": 2,
                "subject": item["subject"],
                "kind": "service",
                "issuer_account": operator.jetstream_key,
            }
            assert nsc_reads(nsc, scratch, item["token"]) == activation
        user_jwt, seed = jc.parse_creds(entry["creds"])
        user = jc.decode(user_jwt)
        assert user["sub"] == entry["public_key"] == jc.public_key(seed)
        assert (
            user["nats"]["issuer_account"] == entry["account"]
            and user["iss"] in claims["nats"]["signing_keys"]
        )
        assert user["nats"]["pub"] == {"allow": list(account.publish)}
        assert user["nats"]["sub"] == {"allow": list(account.subscribe)}
        assert user["nats"]["allowed_connection_types"] == ["STANDARD"]
        assert nsc_reads(nsc, scratch, user_jwt) == user
    # nsc reads the account JWTs exactly as the resolver stores them
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        for key in [operator.jetstream_key, *(issued[a]["account"] for a in issued)]:
            token = await resolver.lookup(nc, key)
            assert token and nsc_reads(nsc, scratch, token) == jc.decode(token)
    memo["creds"] = {app: entry["creds"] for app, entry in issued.items()}


async def test_02_both_apps_do_every_runtime_operation_with_their_creds(stack, server):
    outs = Outputs(stack)
    for app in FIRST["apps"]:
        await every_runtime_operation(server, outs, FIRST["stream"], app)
    for app in SECOND["apps"]:  # the other pair's apps publish through their imports too
        async with BridgeClient(outs.bridge(SECOND["stream"], app), outs.creds(app)) as client:
            assert (await client.publish("sync", "thing", 1, {})).stream == SECOND["stream"]


async def test_03_no_seed_or_signing_key_in_plain_text(stack, operator, scratch, memo):
    plain = json.loads(run_cli(stack, "stack", "output", "--json"))
    assert plain["credentials"] == "[secret]"
    decrypted = json.dumps(stack.export_stack().deployment)
    secrets = [operator.signing_seed, jc.parse_creds(operator.system_creds)[1]]
    for creds in memo["creds"].values():
        secrets.append(jc.parse_creds(creds)[1])
    for resource in stack.export_stack().deployment["resources"]:
        outputs = resource.get("outputs") or {}
        for key in ("account_seed", "user_seed", "seed"):
            value = outputs.get(key)
            if isinstance(value, dict) and "plaintext" in value:
                secrets.append(json.loads(value["plaintext"]))
    assert len(secrets) >= 2 + 4 + 4 + 1, "the seeds of every account, user and signing key"
    assert all(s in decrypted for s in secrets[2:])  # they are in state, as secrets
    # The operator signing key and the system user's seed are not, not even decrypted.
    assert not [s for s in secrets[:2] if s in decrypted]
    exported = run_cli(stack, "stack", "export")
    texts = {
        "pulumi stack export": exported,
        "pulumi up": memo["up log"],
        "preview --diff": run_cli(stack, "preview", "--diff"),
    }
    texts.update(
        {
            str(p): p.read_bytes().decode("utf-8", "replace")
            for p in (scratch / "state").rglob("*")
            if p.is_file()
        }
    )
    texts[str(scratch / "project" / "stacks" / f"Pulumi.{STACK}.yaml")] = (
        scratch / "project" / "stacks" / f"Pulumi.{STACK}.yaml"
    ).read_text()
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a seed appears in plain text in {where}"


async def test_03b_a_jwt_changed_behind_pulumis_back_shows_in_refresh_and_up_repairs_it(
    stack, server, operator
):
    """Someone pushes the JetStream account without exports (as `nsc push` of a stale copy would)."""
    time.sleep(1)  # a later iat than the stack's JWT: the resolver keeps only a newer one
    stale = jc.encode(operator.jetstream_claims(), operator.signing_seed)
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        await resolver.push(nc, stale)
    assert "exports" not in (await resolver_jwt(server, operator, operator.jetstream_key))["nats"]
    stack.refresh(color="never")
    preview = stack.preview(color="never", diff=True)
    assert "JetStreamAccountJwt::accounts-jetstream-account" in preview.stdout, preview.stdout
    assert "AppAccountJwt::accounts-orders-account" not in preview.stdout  # only the drifted identity
    stack.up(color="never")
    layout = account_layout(parse_pairs([FIRST, SECOND]).pairs)
    exports = (await resolver_jwt(server, operator, operator.jetstream_key))["nats"]["exports"]
    assert sorted(e["subject"] for e in exports) == sorted(s.subject for s, _ in layout.exports())
    await every_runtime_operation(server, Outputs(stack), FIRST["stream"], "orders")  # the imports work again


def issued_creds(claims: dict[str, Any], seed: str, signing_seed: str) -> str:
    return jc.creds_document(jc.encode(claims, signing_seed), seed)


def preview_of_a_copy_without_secrets(stack: auto.Stack, env: dict[str, str]) -> str:
    """`python -m jsb_infra.ops.preview_state` copies the stack with every seed redacted; its preview,
    under its own passphrase, with `env`'s identities; asserts no seed of the stack is in the copy."""
    pulumi = preview_copy(stack, "jwt-preview-passphrase", env)
    seeds = [jc.parse_creds(entry["creds"])[1] for entry in credentials(stack).values()]
    assert seeds and not [seed for seed in seeds if seed in pulumi("stack", "export", "--show-secrets")]
    return pulumi("preview", "--refresh", "--diff")


async def test_03c_a_preview_with_read_only_identities_shows_a_pending_change_and_cannot_write(
    stack, server, operator, scratch
):
    """The preview job holds a JetStream-account user that may only read stream and consumer info and
    a system-account user that may only look account JWTs up (as the operator issues them with nsc,
    docs/auth.md); no operator signing key (its file is gone for the run) and no deploy user."""
    reader_seed, lookup_seed = (jc.new_seed(nkeys.PREFIX_BYTE_USER) for _ in range(2))
    reader = issued_creds(
        jc.read_only_user_claims("preview", jc.public_key(reader_seed), operator.jetstream_key),
        reader_seed,
        operator.jetstream_signing_seed,
    )
    lookup = issued_creds(
        jc.claims_lookup_user_claims("lookup", jc.public_key(lookup_seed), operator.system_key),
        lookup_seed,
        operator.system_signing_seed,
    )
    reader_file = scratch / "creds" / "preview.creds"
    reader_file.write_text(reader)
    configure(stack, server, operator, [FIRST, SECOND], scratch / "out", rotate={"orders": "preview-1"})
    signing = signing_key_file(scratch)
    hidden = signing.rename(signing.with_suffix(".away"))
    env = stack.workspace.env_vars
    saved = dict(env)
    env.update({CREDS_ENV: str(reader_file), SYSTEM_CREDS_ENV: lookup})
    try:
        shown = run_cli(stack, "preview", "--refresh", "--diff")
        on_copy = preview_of_a_copy_without_secrets(stack, dict(env))
    finally:
        env.clear()
        env.update(saved)
        hidden.rename(signing)
        configure(stack, server, operator, [FIRST, SECOND], scratch / "out")
    for previewed in (shown, on_copy):
        assert "AppAccountJwt::accounts-orders-account" in previewed and '"preview-1"' in previewed
        assert "~ 1 to update" in previewed, previewed[-3000:]

    async with resolver.system_session([server.url], operator.system_creds) as nc:
        before = await resolver.lookup(nc, operator.jetstream_key)
    assert before

    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    nc = await nats.connect(
        server.url,
        user_credentials=RawCredentials(reader),
        inbox_prefix=names.READ_ONLY_INBOX_PREFIX,
        error_cb=on_error,
    )
    stream = FIRST["stream"]
    writes = [
        f"$JS.API.STREAM.DELETE.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.CONSUMER.DELETE.{stream}.orders-workers",
    ]
    assert json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)).data)["config"]
    for subject in writes:
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(subject, b"{}", timeout=0.5)
    await nc.close()
    nc = await nats.connect(
        server.url,
        user_credentials=RawCredentials(lookup),
        inbox_prefix=names.READ_ONLY_INBOX_PREFIX,
        error_cb=on_error,
    )
    assert await resolver.lookup(nc, operator.jetstream_key) == before  # it may read
    time.sleep(1)
    newer = jc.encode(operator.jetstream_claims(), operator.signing_seed)  # would drop our exports
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request("$SYS.REQ.CLAIMS.UPDATE", newer.encode(), timeout=0.5)
    await nc.close()
    for subject in [*writes, "$SYS.REQ.CLAIMS.UPDATE"]:
        assert any(f'permissions violation for publish to "{subject.lower()}"' in e for e in errors), subject
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        assert await resolver.lookup(nc, operator.jetstream_key) == before  # nothing pushed
    await every_runtime_operation(server, Outputs(stack), FIRST["stream"], "orders")  # all still there


async def test_04_dlq_off_updates_the_jwts_and_rights_without_a_restart(
    stack, server, operator, scratch, memo
):
    old_orders = memo["creds"]["orders"]
    open_conn = await connect(server, old_orders, "orders")
    configure(stack, server, operator, [{**FIRST, "dlq": False}, SECOND], scratch / "out")
    preview = stack.preview(color="never", diff=True)
    changed = {op for op, n in (preview.change_summary or {}).items() if n and op != "same"}
    assert changed == {"update"}, preview.stdout  # nothing replaced, no identity re-created
    # the preview names the identities that change, and only those
    for identity in (
        "JetStreamAccountJwt::accounts-jetstream-account",
        "AppAccountJwt::accounts-orders-account",
    ):
        assert identity in preview.stdout, preview.stdout
    for identity in ("AppAccountJwt::accounts-audit-account", "AppAccountJwt::accounts-ledger-account"):
        assert identity not in preview.stdout, preview.stdout
    stack.up(color="never")
    assert server.process is not None and server.process.pid == memo["pid"], "the server was restarted"

    js = await resolver_jwt(server, operator, operator.jetstream_key)
    subjects = {e["subject"] for e in js["nats"]["exports"]}
    assert names.dlq_subject("orders") not in subjects and names.dlq_subject("audit") in subjects
    issued = credentials(stack)
    claims = await resolver_jwt(server, operator, issued["orders"]["account"])
    assert names.dlq_subject("orders") not in {i["subject"] for i in claims["nats"]["imports"]}
    # the user lost a subject: its earlier JWT is revoked (the open connection is closed, and refused)
    assert await eventually(lambda: asyncio.sleep(0, result=open_conn.is_closed))
    assert await refused(server, old_orders, "orders")
    new = await connect(server, issued["orders"]["creds"], "orders")
    try:
        js_ctx = new.jetstream()
        bridge = bridge_of(stack, FIRST["stream"], "orders")
        assert (await js_ctx.publish(bridge.publish_subject, b"still works")).stream == FIRST["stream"]
        with pytest.raises((nats.errors.Error, TimeoutError)):  # no import, not in the allow list
            await js_ctx.publish(names.dlq_subject("orders"), b"parked", timeout=1)
    finally:
        await new.close()
    # billing also lost its DLQ; audit and ledger (the other pair) kept their users
    assert not await refused(server, memo["creds"]["audit"], "audit")
    memo["creds"] = {app: entry["creds"] for app, entry in issued.items()}


async def test_05_rotate_reissues_the_user_and_revokes_the_old_one(stack, server, operator, scratch, memo):
    old = memo["creds"]["ledger"]
    configure(
        stack, server, operator, [{**FIRST, "dlq": False}, SECOND], scratch / "out", rotate={"ledger": "1"}
    )
    stack.up(color="never")
    issued = credentials(stack)
    assert jc.parse_creds(issued["ledger"]["creds"])[1] != jc.parse_creds(old)[1]
    assert await eventually(lambda: refused(server, old, "ledger"))
    assert not await refused(server, issued["ledger"]["creds"], "ledger")
    assert issued["audit"]["creds"] == memo["creds"]["audit"]  # only the rotated app changed
    memo["creds"] = {app: entry["creds"] for app, entry in issued.items()}


async def test_06_removing_a_pair_revokes_its_apps(stack, server, operator, scratch, memo):
    audit = await connect(server, memo["creds"]["audit"], "audit")
    accounts = {app: e["account"] for app, e in credentials(stack).items()}
    configure(stack, server, operator, [{**FIRST, "dlq": False}], scratch / "out", rotate={"ledger": "1"})
    stack.up(color="never")
    assert await eventually(lambda: asyncio.sleep(0, result=audit.is_closed)), "audit's connection stayed"
    for app in ("audit", "ledger"):
        assert await refused(server, memo["creds"][app], app)
        claims = await resolver_jwt(server, operator, accounts[app])
        assert "imports" not in claims["nats"] and jc.ALL_USERS in claims["nats"]["revocations"]
    assert not await refused(server, memo["creds"]["orders"], "orders")
    js = await resolver_jwt(server, operator, operator.jetstream_key)
    assert not [e for e in js["nats"]["exports"] if "audit" in e["subject"] or "ledger" in e["subject"]]


async def test_07_destroy_leaves_the_resolver_without_our_exports_and_imports(stack, server, operator):
    accounts = {app: e["account"] for app, e in credentials(stack).items()}
    stack.destroy(color="never")
    js = await resolver_jwt(server, operator, operator.jetstream_key)
    assert "exports" not in js["nats"]
    assert js["nats"]["limits"]["disk_storage"] == -1  # the operator's account keeps its JetStream
    for app, key in accounts.items():
        claims = await resolver_jwt(server, operator, key)
        assert "imports" not in claims["nats"], app
        assert jc.ALL_USERS in claims["nats"]["revocations"]
