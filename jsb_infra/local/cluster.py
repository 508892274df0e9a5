"""A local JetStream cluster: N nats-server processes on loopback, routed to each other.

Each node is a `LocalNatsServer` with its own server name, client, route and monitoring ports and its
own store directory, so one node can be stopped, SIGKILLed and restarted with its data while the
others keep quorum. The accounts config is text (`accounts`), so any account layout can be plugged
in; the default is one JetStream account with an admin user.

Who leads what is read two ways: the meta leader from each node's monitoring endpoint (`/jsz`,
which needs no credentials), stream and consumer leaders from the JetStream API as the admin
(`STREAM.INFO` / `CONSUMER.INFO` carry `cluster.leader` and the replicas' `current` flags).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS

from jsb_infra.local.server import LocalNatsServer, accounts_config, free_port
from jsb_infra.nats_admin import JetStreamAdmin

T = TypeVar("T")

DEFAULT_ADMIN_USER = "admin"
DEFAULT_ADMIN_PASSWORD = "admin-secret-for-tests"


@dataclass
class ClusterNode:
    """One member: its name, ports and server process (None while it is down)."""

    name: str
    server: LocalNatsServer
    cluster_port: int
    http_port: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def running(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def monitor(self, path: str, timeout: float = 1.0) -> dict[str, Any] | None:
        """GET a monitoring endpoint (`/jsz`, `/healthz`, ...) as JSON; None when the node does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as reply:
                body: dict[str, Any] = json.loads(reply.read())
                return body
        except urllib.error.HTTPError as err:  # /healthz answers 503 with a JSON body while not ready
            try:
                body = json.loads(err.read())
                return body
            except ValueError:
                return None
        except (OSError, ValueError):
            return None


@dataclass
class ReplicaState:
    """What STREAM.INFO or CONSUMER.INFO says about one object's raft group."""

    leader: str | None
    peers: dict[str, bool]  # follower name -> current

    @property
    def size(self) -> int:
        return (1 if self.leader else 0) + len(self.peers)

    def all_current(self, replicas: int) -> bool:
        """A leader and `replicas - 1` followers, every one current."""
        return self.leader is not None and len(self.peers) == replicas - 1 and all(self.peers.values())


def replica_state(info: dict[str, Any]) -> ReplicaState:
    cluster = info.get("cluster") or {}
    peers = {str(r["name"]): bool(r.get("current")) for r in cluster.get("replicas") or []}
    leader = cluster.get("leader") or None
    return ReplicaState(leader=str(leader) if leader else None, peers=peers)


@dataclass
class LocalNatsCluster:
    """`start()` (or use as a context manager) returns once every node answers and a meta leader exists.

    `accounts` is the accounts config text every node gets (the same on all nodes, as a cluster
    needs); by default one JetStream account `APP` with `admin_user`/`admin_password`. `extra_config`
    is appended after it (more settings, a `system_account`, ...). `tags` gives nodes `server_tags`
    (by node name, `n1`...), for placement by tags.
    """

    base_dir: Path
    size: int = 3
    cluster_name: str = "jsb"
    admin_user: str = DEFAULT_ADMIN_USER
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    accounts: str | None = None
    extra_config: str = ""
    tags: dict[str, list[str]] = field(default_factory=dict)  # node name -> its server_tags
    nodes: list[ClusterNode] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("size must be at least 1")
        if self.accounts is None:
            self.accounts = accounts_config([], self.admin_user, self.admin_password)
        cluster_ports = [free_port() for _ in range(self.size)]
        for index in range(self.size):
            name = f"n{index + 1}"
            http_port = free_port()
            server = LocalNatsServer(store_dir=self.base_dir / name)
            self.nodes.append(ClusterNode(name, server, cluster_ports[index], http_port))
        self._write_node_configs()

    def _write_node_configs(self) -> None:
        for node in self.nodes:
            others = [other for other in self.nodes if other is not node]
            routes = ", ".join(json.dumps(f"nats://127.0.0.1:{other.cluster_port}") for other in others)
            tags = self.tags.get(node.name)
            server_tags = f"server_tags: {json.dumps(tags)}\n" if tags else ""
            node.server.extra_config = (
                f"server_name: {json.dumps(node.name)}\n{server_tags}"
                f"http: {json.dumps(f'127.0.0.1:{node.http_port}')}\n"
                f"cluster {{\n  name: {json.dumps(self.cluster_name)}\n"
                f"  listen: {json.dumps(f'127.0.0.1:{node.cluster_port}')}\n"
                f"  routes: [{routes}]\n}}\n"
                f"{self.accounts}\n{self.extra_config}"
            )

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """Every node's client URL, down ones included (a client skips those and reconnects later)."""
        return [node.url for node in self.nodes]

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in {[n.name for n in self.nodes]}")

    def node_of_url(self, url: str) -> ClusterNode:
        """The node that serves `url` (such as a client's `connected_url`)."""
        for node in self.nodes:
            if url.rstrip("/").endswith(f":{node.server.port}"):
                return node
        raise KeyError(f"no node serves {url}")

    def running_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> LocalNatsCluster:
        try:
            for node in self.nodes:
                node.server.start()
            self.wait_for_meta_leader(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()

    def stop_node(self, name: str, kill: bool = False) -> None:
        """Stop one node (SIGKILL with `kill`: no goodbye to its peers); its store stays."""
        self.node(name).server.stop(kill=kill)

    def start_node(self, name: str, wait_healthy: float | None = 30.0) -> None:
        """Start a stopped node again with its store; with `wait_healthy`, until its /healthz says ok."""
        node = self.node(name)
        node.server.start()
        if wait_healthy:
            self.wait_healthy(name, timeout=wait_healthy)

    def restart_node(self, name: str, kill: bool = True, wait_healthy: float | None = 30.0) -> None:
        self.stop_node(name, kill=kill)
        self.start_node(name, wait_healthy=wait_healthy)

    def reload(self, accounts: str | None = None, extra_config: str | None = None) -> None:
        """Rewrite every running node's config (new accounts text, say) and SIGHUP it."""
        if accounts is not None:
            self.accounts = accounts
        if extra_config is not None:
            self.extra_config = extra_config
        self._write_node_configs()
        for node in self.running_nodes():
            node.server.reload()

    def __enter__(self) -> LocalNatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the meta group (monitoring endpoint) ---------------------------------------------------------
    def meta_leader(self) -> str | None:
        """The meta leader as the running nodes see it; None while they have none or disagree."""
        seen = set()
        for node in self.running_nodes():
            jsz = node.monitor("/jsz") or {}
            seen.add((jsz.get("meta_cluster") or {}).get("leader") or None)
        if len(seen) == 1:
            (leader,) = seen
            return str(leader) if leader else None
        return None

    def wait_for_meta_leader(self, timeout: float = 30.0, not_on: str | None = None) -> str:
        """Until the running nodes agree on a meta leader (other than `not_on`, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.meta_leader()
            if leader is not None and leader != not_on:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no meta leader within {timeout}s (saw {leader!r})")
            time.sleep(0.05)

    def wait_healthy(self, name: str, timeout: float = 30.0) -> None:
        """Until the node's /healthz is ok: JetStream up, meta and its streams and consumers current."""
        node = self.node(name)
        deadline = time.monotonic() + timeout
        while True:
            health = node.monitor("/healthz") or {}
            if health.get("status") == "ok":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {name} not healthy within {timeout}s: {health}")
            time.sleep(0.05)

    # -- streams and consumers (JetStream API, as the admin) -------------------------------------------
    async def connect_admin(self, **options: Any) -> NATS:
        """An admin connection to the running nodes that reconnects for ever (for harness use)."""
        defaults: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.1}
        return await nats.connect(
            servers=[n.url for n in self.running_nodes()],
            user=self.admin_user,
            password=self.admin_password,
            **{**defaults, **options},
        )

    async def admin_call(self, fn: Callable[[JetStreamAdmin], Awaitable[T]]) -> T:
        """Run `fn` with a JetStreamAdmin on a fresh admin connection, closed afterwards."""
        nc = await self.connect_admin()
        try:
            return await fn(JetStreamAdmin(nc, timeout=2.0))
        finally:
            await nc.close()

    async def stream_state(self, stream: str) -> ReplicaState | None:
        """Leader and followers of `stream`; None when the API does not answer (no leader, say)."""
        try:
            info = await self.admin_call(lambda admin: admin.stream_info(stream))
        except Exception:
            return None
        return replica_state(info) if info else None

    async def consumer_state(self, stream: str, consumer: str) -> ReplicaState | None:
        try:
            info = await self.admin_call(lambda admin: admin.consumer_info(stream, consumer))
        except Exception:
            return None
        return replica_state(info) if info else None

    async def stream_leader(self, stream: str) -> str | None:
        state = await self.stream_state(stream)
        return state.leader if state else None

    async def consumer_leader(self, stream: str, consumer: str) -> str | None:
        state = await self.consumer_state(stream, consumer)
        return state.leader if state else None

    async def wait_for_stream_leader(
        self, stream: str, timeout: float = 30.0, not_on: str | None = None
    ) -> str:
        """Until `stream` has a leader (other than `not_on`, if given)."""
        leader = await _poll(
            lambda: self.stream_leader(stream),
            lambda leader: leader is not None and leader != not_on,
            timeout,
            f"stream {stream} leader (not {not_on})",
        )
        assert leader is not None
        return leader

    async def wait_for_current(
        self, stream: str, replicas: int, consumers: tuple[str, ...] = (), timeout: float = 60.0
    ) -> None:
        """Until `stream` and each of `consumers` have `replicas` peers, all current."""
        for name in (None, *consumers):

            async def state(name: str | None = name) -> ReplicaState | None:
                if name is None:
                    return await self.stream_state(stream)
                return await self.consumer_state(stream, name)

            await _poll(
                state,
                lambda s: s is not None and s.all_current(replicas),
                timeout,
                f"{stream}/{name or '(stream)'} at {replicas} current replicas",
            )


async def _poll(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.1)
