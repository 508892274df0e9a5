"""Config mode on a multi-host cluster: `python -m jsb_infra.ops.ship_include` (the reload command of such a
deployment) puts the include on every host and reloads them one at a time, each checked on its /varz.

Three nats-server nodes on loopback stand in for three hosts: each reads its OWN copy of the include
(`<node dir>/accounts.conf`, beside its config), so a host that was not shipped to keeps the old one.
They start on the bootstrap include (the JetStream account and its deploy user, no app user). Shipping
the include with the apps' users reaches every node, in the order listed, and the app connects to each
(it could connect to none before: the control). An include the servers refuse stops the rollout at the
first host, which keeps running its previous config; the hosts after it are not touched. And the whole
chain with the real Pulumi CLI: `up` writes the include to a staging path and its reload hook is the
rollout, after which the app publishes into its stream through every node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV
from e2e_support import local_stack, run_cli, set_admin, set_plain_config

from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.accounts_include import run_reload
from jsb_infra.deploy.providers.base import ProviderError
from jsb_infra.local.cluster import LocalNatsCluster
from jsb_infra.local.server import nats_server_binary
from jsb_infra.ops.ship_include import config_load_time
from jsb_infra.runtime import load_bridge

PAIR = {
    "stream": "ship-orders-billing",
    "apps": ["orders", "billing"],
    "protect": False,
    "allow_destroy_with_messages": True,
}
LAYOUT = account_layout(parse_pairs([PAIR]).pairs)
SEED, PUBLIC = new_user_keypair()
BOOTSTRAP = render_accounts_conf(LAYOUT, {}, DEPLOY)
WITH_USERS = render_accounts_conf(LAYOUT, {"orders": PUBLIC}, DEPLOY)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsCluster]:
    base = tmp_path_factory.mktemp("ship-include")
    nodes = LocalNatsCluster(base_dir=base, size=3, accounts='include "accounts.conf"')
    for node in nodes.nodes:
        node.server.store_dir.mkdir(parents=True, exist_ok=True)
        (node.server.store_dir / "accounts.conf").write_text(BOOTSTRAP)
        node.server.env = {DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD}
    nodes.start()
    yield nodes
    nodes.stop()


def include_of(cluster: LocalNatsCluster, name: str) -> Path:
    return cluster.node(name).server.store_dir / "accounts.conf"


def hosts(cluster: LocalNatsCluster) -> list[dict[str, object]]:
    """n1 written here (`path`); n2 and n3 by commands, as scp + ssh mv would on real hosts."""
    listed: list[dict[str, object]] = []
    for node in cluster.nodes:
        target = include_of(cluster, node.name)
        assert node.server.process is not None
        host: dict[str, object] = {
            "name": node.name,
            "reload": [nats_server_binary(), "--signal", f"reload={node.server.process.pid}"],
            "varz": f"http://127.0.0.1:{node.http_port}/varz",
        }
        if node.name == "n1":
            host["path"] = str(target)
        else:
            host["copy"] = [["cp", "{include}", f"{target}.new"], ["mv", "-f", f"{target}.new", str(target)]]
        listed.append(host)
    return listed


def ship(tmp_path: Path, listed: object, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m jsb_infra.ops.ship_include` of `text` to the hosts `listed` (hosts.json's content)."""
    include, hosts_file = tmp_path / "accounts.conf", tmp_path / "hosts.json"
    include.write_text(text)
    hosts_file.write_text(json.dumps(listed))
    command = [sys.executable, "-m", "jsb_infra.ops.ship_include", "--include", str(include)]
    return subprocess.run([*command, "--hosts", str(hosts_file), *extra], capture_output=True, text=True)


def loaded_at(http_port: int) -> str:
    """`config_load_time` made comparable as text (RFC 3339 with the nanoseconds' trailing zeros put back)."""
    stamp = config_load_time(f"http://127.0.0.1:{http_port}/varz") or ""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction.ljust(9, '0')}"


async def connects(url: str) -> bool:
    try:
        nc = await nats.connect(
            url,
            nkeys_seed_str=SEED,
            inbox_prefix=names.inbox_prefix("orders"),
            allow_reconnect=False,
            connect_timeout=2,
        )
    except Exception:
        return False
    await nc.close()
    return True


async def test_every_host_gets_the_include_and_is_reloaded_in_order(cluster, tmp_path):
    assert not [n.name for n in cluster.nodes if await connects(n.url)], "no app user before the rollout"
    shipped = ship(tmp_path, hosts(cluster), WITH_USERS)
    assert shipped.returncode == 0, shipped.stderr
    assert [line.split(":")[0] for line in shipped.stdout.splitlines()] == ["n1", "n2", "n3"]
    for node in cluster.nodes:
        assert include_of(cluster, node.name).read_text() == WITH_USERS
        assert await connects(node.url), f"{node.name} did not apply the include"
    loaded = [loaded_at(n.http_port) for n in cluster.nodes]
    assert loaded == sorted(loaded), "reloaded one after the other, in the order listed"


async def test_an_include_the_servers_refuse_stops_the_rollout_at_the_first_host(cluster, tmp_path):
    before = {n.name: include_of(cluster, n.name).read_text() for n in cluster.nodes}
    refused = WITH_USERS.replace(PUBLIC, "UNOTAKEY")  # nats-server: not a valid public nkey
    shipped = ship(tmp_path, hosts(cluster), refused, "--apply-timeout", "2")
    assert shipped.returncode == 1
    assert "n1: the server did not apply the new include within 2s" in shipped.stderr
    assert "applied on: none; not touched: n2, n3" in shipped.stderr
    assert include_of(cluster, "n1").read_text() == refused  # the file is new, the running config is not
    for name in ("n2", "n3"):
        assert include_of(cluster, name).read_text() == before[name]
    for node in cluster.nodes:
        assert await connects(node.url), f"{node.name} lost the config it ran"
    # control: the reload command alone reports success on that refused include; only /varz tells
    n1 = cluster.node("n1")
    loaded = loaded_at(n1.http_port)
    assert n1.server.process is not None
    signal = subprocess.run(
        [nats_server_binary(), "--signal", f"reload={n1.server.process.pid}"], capture_output=True
    )
    assert signal.returncode == 0
    time.sleep(0.5)
    assert loaded_at(n1.http_port) == loaded
    # put the good include back everywhere: the rollout is idempotent
    assert ship(tmp_path, hosts(cluster), WITH_USERS).returncode == 0


def test_a_bad_hosts_file_names_each_problem_before_touching_any_host(tmp_path):
    bad = [{"name": "a", "reload": "nats-server --signal reload", "path": "/x", "copy": [["cp"]]}]
    done = ship(tmp_path, bad, WITH_USERS)
    assert done.returncode == 1
    for problem in (
        "[0].reload: required, a non-empty list",
        "[0].varz: required",
        "[0]: give exactly one of copy",
    ):
        assert problem in done.stderr
    assert not Path("/x").exists()


def test_a_reload_command_that_fails_is_named_with_its_status_and_stderr(tmp_path):
    """The same runner serves the single-host hook (`jsb:auth.reload.command`) and the rollout."""
    with pytest.raises(ProviderError, match=r"reload command 'sh' exited with 3: no pid file"):
        run_reload({"command": ["sh", "-c", "echo no pid file >&2; exit 3"]})
    with pytest.raises(ProviderError, match=r"reload command '/nonexistent/reload' failed to run"):
        run_reload({"command": ["/nonexistent/reload"]})
    listed = [
        {"name": "h1", "path": str(tmp_path / "h1.conf"), "reload": ["false"], "varz": "http://127.0.0.1:1/"}
    ]
    done = ship(tmp_path, listed, WITH_USERS)
    assert (
        done.returncode == 1
        and "h1: its monitoring endpoint http://127.0.0.1:1/ does not answer" in done.stderr
    )
    assert not (tmp_path / "h1.conf").exists(), "nothing is placed on a host whose state cannot be read"


@pytest.mark.e2e
async def test_pulumi_up_ships_its_include_to_every_host_and_the_apps_work_on_each(cluster, tmp_path):
    """The whole chain: `up` writes the include to its staging path, its reload hook is the rollout, and
    the app publishes into its stream through every node with the key that `up` generated."""
    stack = local_stack(tmp_path, "ship", "e2e-ship")
    set_admin(stack, ADMIN_USER, ADMIN_PASSWORD)
    staging, hosts_file = tmp_path / "staging" / "accounts.conf", tmp_path / "hosts.json"
    hosts_file.write_text(json.dumps(hosts(cluster)))
    rollout = [sys.executable, "-m", "jsb_infra.ops.ship_include", "--include", str(staging)]
    set_plain_config(
        stack,
        {
            "jsb:servers": cluster.urls,
            "jsb:pairs": [PAIR],
            "jsb:deployUser": {"user": ADMIN_USER, "password_env": DEPLOY_PASSWORD_ENV},
            "jsb:auth": {
                "mode": "config",
                "accounts_file": str(staging),
                "reload": {"command": [*rollout, "--hosts", str(hosts_file)]},
            },
        },
    )
    stack.up(color="never")  # the cluster goes with the module: no destroy needed
    shown = json.loads(run_cli(stack, "stack", "output", "credentials", "--json", "--show-secrets"))
    assert shown["orders"]["public_key"] in staging.read_text()
    bridge = load_bridge(stack.outputs()["bridges"].value, stream=PAIR["stream"], app="orders")
    for node in cluster.nodes:
        assert include_of(cluster, node.name).read_text() == staging.read_text()
        nc = await nats.connect(
            node.url,
            nkeys_seed_str=shown["orders"]["seed"],
            inbox_prefix=names.inbox_prefix("orders"),
            allow_reconnect=False,
        )
        try:
            ack = await nc.jetstream().publish(bridge.publish_subject, node.name.encode(), timeout=5)
            assert ack.stream == PAIR["stream"]
        finally:
            await nc.close()
