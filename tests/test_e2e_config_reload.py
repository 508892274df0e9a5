"""End-to-end, config mode: `pulumi up` next to the server writes the accounts include the server runs
on and runs the reload hook, so the apps work at once, with the same server process.

The server starts on a bootstrap include (the JetStream account and its deploy user, no app users
yet), as an operator would before the first deploy. The first `up` reloads it with a signal to its
pid file; the second (DLQ off) with a command (`nats-server --signal reload=<pid file>`).

The stack names its own JetStream account (`jsb:jetstreamAccount: STREAMS`), a deploy user and
`jsb:auth`, and writes its documents to `jsb:outputDir`: `jsb-infra render --stack` of its stack file
(as the real CLI wrote it) must be byte for byte what that `up` wrote, file by file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pulumi.automation as auto
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV
from e2e_support import (
    local_stack,
    run_cli,
    set_admin,
    set_plain_config,
)

from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.server import LocalNatsServer, nats_server_binary
from jsb_infra.ops.rendered_tree import MANIFEST, read_tree
from jsb_infra.runtime import load_bridge, load_credentials

pytestmark = pytest.mark.e2e

PAIR: dict[str, Any] = {
    "stream": "reload-orders-billing",
    "apps": ["orders", "billing"],
    "dlq": True,
    "protect": False,
    "allow_destroy_with_messages": True,
    "consumer": {"max_deliver": 3, "backoff": [], "ack_wait": "2s"},
}
JETSTREAM_ACCOUNT = "STREAMS"
JSB_INFRA = str(Path(sys.executable).parent / "jsb-infra")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-reload")


@pytest.fixture(scope="module")
def include(scratch: Path) -> Path:
    path = scratch / "server" / "accounts.conf"
    path.parent.mkdir(parents=True)
    layout = account_layout(parse_pairs([PAIR]).pairs, JETSTREAM_ACCOUNT)
    path.write_text(render_accounts_conf(layout, {}, DEPLOY))
    return path


@pytest.fixture(scope="module")
def server(scratch: Path, include: Path) -> Iterator[LocalNatsServer]:
    pid_file = include.parent / "nats-server.pid"
    relative = os.path.relpath(include, scratch / "nats")  # nats-server: relative to the including file
    nats_server = LocalNatsServer(
        store_dir=scratch / "nats",
        extra_config=f"pid_file: {json.dumps(str(pid_file))}\ninclude {json.dumps(relative)}\n",
        env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD},
    )
    nats_server.start()
    yield nats_server
    nats_server.stop()


@pytest.fixture(scope="module")
def stack(scratch: Path, server: LocalNatsServer) -> auto.Stack:
    stack = local_stack(scratch, "reload", "e2e-reload")
    set_admin(stack, ADMIN_USER, ADMIN_PASSWORD)
    return stack


def configure(
    stack: auto.Stack, server: LocalNatsServer, include: Path, pair: dict[str, Any], reload: Any
) -> None:
    set_plain_config(
        stack,
        {
            "jsb:servers": [server.url],
            "jsb:pairs": [pair],
            "jsb:deployUser": {"user": ADMIN_USER, "password_env": DEPLOY_PASSWORD_ENV},
            "jsb:jetstreamAccount": JETSTREAM_ACCOUNT,
            "jsb:auth": {"mode": "config", "accounts_file": str(include), "reload": reload},
            "jsb:outputDir": str(include.parent.parent / "documents"),
            "jsb:appLimits": {"connections": 50, "overrides": {"billing": {"subscriptions": 200}}},
        },
    )


async def connect_app(stack: auto.Stack, server: LocalNatsServer, app: str, within: float = 2.0) -> nats.NATS:
    """Connect as the app; a signal reload is asynchronous, so allow the server a moment to apply it."""
    shown = json.loads(run_cli(stack, "stack", "output", "credentials", "--json", "--show-secrets"))
    creds = load_credentials(credentials=shown, app=app)
    deadline = time.monotonic() + within
    while True:
        try:
            return await nats.connect(
                server.url,
                **creds.connect_options(),
                inbox_prefix=names.inbox_prefix(app),
                allow_reconnect=False,
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_up_writes_the_include_and_reloads_the_server_the_apps_work_at_once(stack, server, include):
    pid = server.process.pid if server.process else None
    configure(
        stack, server, include, PAIR, {"signal": "HUP", "pid_file": str(include.parent / "nats-server.pid")}
    )
    result = stack.up(color="never")
    assert "AccountsInclude" in result.stdout
    written = include.read_text()
    assert json.loads(run_cli(stack, "stack", "output", "accounts_conf", "--json")) == written
    assert written.count("nkey:") == 2  # both app users are in the file the server runs on
    for app in PAIR["apps"]:
        nc = await connect_app(stack, server, app)
        try:
            bridge = load_bridge(stack.outputs()["bridges"].value, stream=PAIR["stream"], app=app)
            ack = await nc.jetstream().publish(bridge.publish_subject, b"at once", timeout=5)
            assert ack.stream == PAIR["stream"]
            assert (await nc.jetstream().publish(bridge.dlq_subject or "", b"dlq", timeout=5)).stream == PAIR[
                "stream"
            ]
        finally:
            await nc.close()
    assert server.process is not None and server.process.pid == pid, "the server was restarted"


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JSB_INFRA, "render", *args], capture_output=True, text=True)


def test_render_stack_check_is_byte_equal_to_what_up_wrote(stack, include):
    """After the first `up`: the stack file as `pulumi config set` wrote it, rendered with the keys `up`
    generated, is every document `up` wrote (the include the server runs on among them)."""
    stack_file = Path(stack.workspace.work_dir) / "stacks" / f"Pulumi.{stack.name}.yaml"
    assert "jsb:jetstreamAccount: STREAMS" in stack_file.read_text()
    shown = json.loads(run_cli(stack, "stack", "output", "credentials", "--json", "--show-secrets"))
    keys = include.parent.parent / "reload.nkeys"
    keys.write_text("".join(f"{app}={entry['public_key']}\n" for app, entry in sorted(shown.items())))
    committed = include.parent.parent / "rendered"
    source = ["--stack", str(stack_file), "--out", str(committed)]

    written = render(*source, "--nkeys-file", str(keys))
    assert written.returncode == 0, written.stderr
    check = render(*source, "--nkeys-file", str(keys), "--check")
    assert check.returncode == 0 and "is up to date" in check.stdout, check.stderr

    up_wrote = read_tree(include.parent.parent / "documents")
    reviewed = {path: text for path, text in read_tree(committed).items() if path != MANIFEST}
    assert reviewed == up_wrote  # the same files, byte for byte
    assert reviewed["accounts.conf"] == include.read_bytes()  # and the include the server runs on
    assert f'"{JETSTREAM_ACCOUNT}" {{' in include.read_text() and '"JETSTREAM"' not in include.read_text()
    assert f"{PAIR['stream']}/bridges/orders.json" in reviewed

    # control: without the keys the check fails on the app users, and on nothing else
    unkeyed = render(*source, "--check")
    assert unkeyed.returncode == 1
    assert "changed  accounts.conf" in unkeyed.stderr and unkeyed.stderr.count("changed  ") == 1


async def test_a_change_runs_the_reload_command_and_the_server_applies_it(stack, server, include):
    pid_file = include.parent / "nats-server.pid"
    configure(
        stack,
        server,
        include,
        {**PAIR, "dlq": False},
        {"command": [nats_server_binary(), "--signal", f"reload={pid_file}"]},
    )
    stack.up(color="never")
    assert names.dlq_subject("orders") not in include.read_text()
    nc = await connect_app(stack, server, "orders")
    try:
        with pytest.raises((nats.errors.Error, TimeoutError)):  # no import of the DLQ subject any more
            await nc.jetstream().publish(names.dlq_subject("orders"), b"dlq", timeout=1)
        bridge = load_bridge(stack.outputs()["bridges"].value, stream=PAIR["stream"], app="orders")
        assert (await nc.jetstream().publish(bridge.publish_subject, b"still", timeout=5)).stream == PAIR[
            "stream"
        ]
    finally:
        await nc.close()
    stack.destroy(color="never")
    assert include.exists(), "destroy leaves the include the server's config needs"
