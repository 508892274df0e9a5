"""Fixtures: a real nats-server per test (or module), with whatever config the test needs.

- `nats_server`: a plain JetStream server: the `NATS_URL` server when that is set; a testcontainers
  NATS container when the test is marked `container` and a Docker engine answers (or for every plain
  test with `JSB_NATS_BACKEND=container`, which then requires Docker); else the embedded binary.
- `make_server`: a factory for servers with accounts, users and permissions; stopped at teardown
  (always the embedded binary: their config is a file).
- `server` and `host`: a server with only the deploy's admin user, and the real dynamic-provider host
  configured for it, which must never send the admin password back (the provider tests; a module
  that needs another server or host defines its own).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy
from nats.aio.client import Client as NATS
from provider_host import ProviderHost, admin_server_config, assert_no_secret, stack_config

from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import consumer_configs, dlq_keeper_config, stream_config
from jsb_infra.local.cluster import LocalNatsCluster
from jsb_infra.local.postgres import LocalPostgres
from jsb_infra.local.server import LocalNatsServer, env_nats_url
from jsb_infra.nats_admin import JetStreamAdmin

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret-for-tests"
DEPLOY_PASSWORD_ENV = "JSB_DEPLOY_PASSWORD"  # the rendered accounts read the deploy password from here
DEPLOY = DeployUser(user=ADMIN_USER, password_env=DEPLOY_PASSWORD_ENV)


class ServerHandle:
    """What a test needs to know about a running server."""

    def __init__(self, url: str, server: LocalNatsServer | None = None):
        self.url = url
        self.server = server


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalNatsServer]]:
    started: list[LocalNatsServer] = []

    def factory(extra_config: str = "") -> LocalNatsServer:
        server = LocalNatsServer(
            store_dir=tmp_path_factory.mktemp("nats"),
            extra_config=extra_config,
            env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD},
        )
        started.append(server.start())
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., LocalNatsServer]) -> LocalNatsServer:
    return make_server(admin_server_config())


@pytest.fixture
def host(server: LocalNatsServer) -> Iterator[ProviderHost]:
    with ProviderHost() as h:
        h.configure(stack_config(server.url))
        yield h
        assert_no_secret(h)


def _container_url() -> Iterator[str]:
    from testcontainers.nats import NatsContainer  # imported only where asked for

    with NatsContainer().with_command("-js") as container:
        yield container.nats_uri()


@functools.cache
def docker_answers() -> bool:
    """True when a Docker engine answers a ping within two seconds."""
    try:
        import docker  # testcontainers' own client

        return bool(docker.from_env(timeout=2).ping())
    except Exception:
        return False


def wants_container(request: pytest.FixtureRequest) -> bool:
    if os.environ.get("JSB_NATS_BACKEND") == "container":
        if not docker_answers():
            pytest.fail("JSB_NATS_BACKEND=container, but no Docker engine answers")
        return True
    return request.node.get_closest_marker("container") is not None and docker_answers()


@pytest.fixture
def nats_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerHandle]:
    url = env_nats_url()
    if url:
        yield ServerHandle(url)
        return
    if wants_container(request):
        yield from (ServerHandle(u) for u in _container_url())
        return
    with LocalNatsServer(store_dir=tmp_path / "nats") as server:
        yield ServerHandle(server.url, server)


# -- a pair provisioned on a server that enforces the generated permissions -----------------------


class ProvisionedPair:
    """A server whose users are an admin and each app of `pair` with its rendered permissions.

    The stream and both consumers exist (created by the admin from the rendered topology); each app
    has an NKey user (`seeds[app]`) and a bridge config (`bridges[app]`) as the stack would export.
    """

    def __init__(self, server: LocalNatsServer, pair: Pair, seeds: dict[str, str]):
        self.server = server
        self.pair = pair
        self.seeds = seeds
        self.url = server.url
        self.bridges = {app: bridge_outputs(pair, app, [server.url]) for app in pair.apps}

    async def admin(self) -> NATS:
        return await nats.connect(self.url, user=ADMIN_USER, password=ADMIN_PASSWORD)


async def provision(
    url: str, pair: Pair, options: dict[str, Any] | None = None, open_server: bool = False, **connect: Any
) -> None:
    """Create the rendered stream and consumers (the DLQ keeper too, as the Stream provider does) as the
    admin: with no credentials on an open server, `options` for how else it connects, `connect` for
    more nats.connect options."""
    auth = {} if open_server else (options or {"user": ADMIN_USER, "password": ADMIN_PASSWORD})
    nc = await nats.connect(url, **auth, **connect)
    try:
        admin = JetStreamAdmin(nc)
        await admin.create_stream(stream_config(pair))
        keeper = dlq_keeper_config(pair)
        for config in [*consumer_configs(pair).values(), *([keeper] if keeper else [])]:
            await admin.create_consumer(pair.stream, config)
    finally:
        await nc.close()


def pairs_server_config(pairs: list[Pair], seeds: dict[str, str]) -> str:
    """The rendered account layout of `pairs`: the admin as deploy user, each app with its NKey."""
    nkeys = {app: public_key_of(seed) for app, seed in seeds.items()}
    return render_accounts_conf(account_layout(pairs), nkeys, DEPLOY)


def pair_server_config(pair: Pair, seeds: dict[str, str]) -> str:
    return pairs_server_config([pair], seeds)


DEFAULT_PAIR = {"stream": "orders-billing-sync", "apps": ["orders", "billing"]}


@pytest.fixture
async def provisioned_pair(
    request: pytest.FixtureRequest, make_server: Callable[..., LocalNatsServer]
) -> ProvisionedPair:
    """The default orders/billing pair; another with `@pytest.mark.parametrize("provisioned_pair",
    [{"stream": ..., "apps": [...], ...}], indirect=True)`."""
    spec = getattr(request, "param", None) or DEFAULT_PAIR
    pair = parse_pairs([spec]).pairs[0]
    seeds = {app: new_user_keypair()[0] for app in pair.apps}
    server = make_server(pair_server_config(pair, seeds))
    await provision(server.url, pair)
    return ProvisionedPair(server, pair, seeds)


# -- a real multi-process JetStream cluster -------------------------------------------------------


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalNatsCluster]]:
    """A factory for started `LocalNatsCluster`s (3 nodes unless `size=`); all stopped at teardown.

    Accounts default to one JetStream account with ADMIN_USER/ADMIN_PASSWORD; pass `accounts=` text
    for another layout.
    """
    started: list[LocalNatsCluster] = []

    def factory(size: int = 3, accounts: str | None = None, extra_config: str = "") -> LocalNatsCluster:
        cluster = LocalNatsCluster(
            base_dir=tmp_path_factory.mktemp("cluster"),
            size=size,
            admin_user=ADMIN_USER,
            admin_password=ADMIN_PASSWORD,
            accounts=accounts,
            extra_config=extra_config,
        )
        started.append(cluster)
        return cluster.start()

    yield factory
    for cluster in started:
        cluster.stop()


@pytest.fixture
def nats_cluster(make_cluster: Callable[..., LocalNatsCluster]) -> LocalNatsCluster:
    """A started 3-node cluster with the default admin account."""
    return make_cluster()


# -- databases for the outbox and inbox: SQLite files and a throwaway PostgreSQL cluster -----------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalPostgres]:
    """One PostgreSQL cluster for the session (initdb takes seconds); each test gets its own database."""
    with LocalPostgres() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    cluster: LocalPostgres = request.getfixturevalue("postgres_cluster")
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(cluster.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return cluster.url.replace(f"/{cluster.database}?", f"/{name}?")


class OpenPair:
    """A pair provisioned on an open server (no auth): for tests where permissions are not the point."""

    def __init__(self, server: LocalNatsServer, pair: Pair):
        self.server = server
        self.url = server.url
        self.pair = pair
        self.bridges = {app: bridge_outputs(pair, app, [self.url]) for app in pair.apps}

    async def admin(self) -> NATS:
        return await nats.connect(self.url)


@pytest.fixture
async def open_pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenPair]:
    """The default pair (or `indirect=True` param) on its own open embedded nats-server."""
    spec = getattr(request, "param", None) or DEFAULT_PAIR
    pair = parse_pairs([spec]).pairs[0]
    with LocalNatsServer(store_dir=tmp_path / "nats") as server:
        await provision(server.url, pair, open_server=True)
        yield OpenPair(server, pair)
