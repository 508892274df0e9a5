"""End-to-end, config mode: `pulumi up` next to the server writes the accounts include the server runs
on and runs the reload hook, so the apps work at once, with the same server process.

The server starts on a bootstrap include (the JetStream account and its deploy user, no app users
yet), as an operator would before the first deploy. The first `up` reloads it with a signal to its
pid file; the second (DLQ off) with a command (`nats-server --signal reload=<pid file>`), confirmed
on the server's /varz. Between them, an include the server refuses fails the `up` (with `varz`) and
the previous file is put back.

The stack names its own JetStream account (`jsb:jetstreamAccount: STREAMS`), a deploy user and
`jsb:auth`, and writes its documents to `jsb:outputDir`: `jsb-infra render --stack` of its stack file
(as the real CLI wrote it) must be byte for byte what that `up` wrote, file by file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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

from jsb_infra.config_load import config_load_time
from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.accounts_include import apply_and_reload
from jsb_infra.local.server import LocalNatsServer, free_port, nats_server_binary
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
OPS_USER = "ops"  # a user the server's own config defines, outside the include
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
        extra_config=(
            f"pid_file: {json.dumps(str(pid_file))}\nhttp: {json.dumps(f'127.0.0.1:{free_port()}')}\n"
            f"authorization {{ users: [{{user: {OPS_USER}, password: {OPS_USER}-password}}] }}\n"
            f"include {json.dumps(relative)}\n"
        ),
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
    stack: auto.Stack,
    server: LocalNatsServer,
    include: Path,
    pair: dict[str, Any],
    reload: Any,
    deploy_user: str = ADMIN_USER,
) -> None:
    set_plain_config(
        stack,
        {
            "jsb:servers": [server.url],
            "jsb:pairs": [pair],
            "jsb:deployUser": {"user": deploy_user, "password_env": DEPLOY_PASSWORD_ENV},
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


def varz_of(server: LocalNatsServer) -> str:
    port = re.search(r"^http: \"127.0.0.1:(\d+)\"$", server.extra_config, re.M)
    assert port is not None
    return f"http://127.0.0.1:{port.group(1)}/varz"


def starts_on(server: LocalNatsServer) -> bool:
    """Whether nats-server accepts its config file as it now is (`-t`: what a restart would read)."""
    env = {**os.environ, **server.env}
    test = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(server.config_file)], capture_output=True, env=env
    )
    return test.returncode == 0


async def test_an_include_the_server_refuses_fails_up_and_the_server_keeps_a_file_it_can_start_on(
    stack, server, include
):
    """An operator picks a deploy user name the server's own config already has: the server refuses the
    include (`Duplicate user`) and keeps running the previous one. `nats-server --signal reload` and
    SIGHUP succeed all the same, so only the server's /varz can tell: with `varz` the `up` fails naming
    the refusal, the previous file is back (a restart would refuse to start on the new one) and the
    apps still work. Control: the same hook without `varz` reports success on the refused include."""
    varz, pid_file = varz_of(server), include.parent / "nats-server.pid"
    running, loaded = include.read_bytes(), config_load_time(varz)
    assert loaded is not None
    hook = {"signal": "HUP", "pid_file": str(pid_file), "varz": varz, "apply_timeout": 2}
    configure(stack, server, include, PAIR, hook, deploy_user=OPS_USER)
    with pytest.raises(auto.CommandError) as failed:
        stack.up(color="never")
    assert "did not apply the new include within 2s" in str(failed.value)
    assert "the previous include again" in str(failed.value)
    assert include.read_bytes() == running, "the file is what the server runs on"
    assert config_load_time(varz) == loaded
    log = (server.store_dir / "nats-server.log").read_text()
    assert f'Duplicate user "{OPS_USER}"' in log
    assert starts_on(server), "a restart would start on it"
    nc = await connect_app(stack, server, "orders")
    await nc.close()

    # control: without varz the hook "succeeds" on the include the server refuses
    refused = running.decode().replace(
        f'{{user: "{ADMIN_USER}", password:', f'{{user: "{OPS_USER}", password:'
    )
    assert refused != running.decode()
    try:
        said = apply_and_reload(str(include), refused, {"signal": "HUP", "pid_file": str(pid_file)})
        assert said.startswith("sent SIGHUP") and "not confirmed" in said
        time.sleep(0.5)
        assert config_load_time(varz) == loaded, "the server did not apply it"
        assert not starts_on(server), "and a restart would not start on the file left behind"
    finally:
        include.write_bytes(running)


async def test_a_capacity_above_the_servers_store_fails_up_and_nothing_is_written(stack, server, include):
    """`jsb:capacity` is the JetStream account's limit; above the server's store, a reload keeps the
    previous limit while config_load_time moves (the varz check alone would say "applied") and the next
    start exits. The include's resource reads the store from the same /varz and refuses first."""
    varz, pid_file = varz_of(server), include.parent / "nats-server.pid"
    running, loaded = include.read_bytes(), config_load_time(varz)
    configure(stack, server, include, PAIR, {"signal": "HUP", "pid_file": str(pid_file), "varz": varz})
    set_plain_config(stack, {"jsb:capacity": {"file": 2**50}})
    try:
        with pytest.raises(auto.CommandError) as failed:
            stack.up(color="never")
    finally:
        stack.remove_config("jsb:capacity")
    assert f"capacity.file: {2**50} bytes is more than server" in str(failed.value), str(failed.value)[-2000:]
    assert "nothing written" in str(failed.value)
    assert include.read_bytes() == running and config_load_time(varz) == loaded
    nc = await connect_app(stack, server, "orders")
    await nc.close()


async def test_a_change_runs_the_reload_command_and_the_server_applies_it(stack, server, include):
    pid_file = include.parent / "nats-server.pid"
    varz = varz_of(server)
    loaded = config_load_time(varz)
    configure(
        stack,
        server,
        include,
        {**PAIR, "dlq": False},
        {"command": [nats_server_binary(), "--signal", f"reload={pid_file}"], "varz": varz},
    )
    stack.up(color="never")
    assert config_load_time(varz) not in (None, loaded), "up returned once the server applied it"
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
