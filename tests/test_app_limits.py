"""One app's key cannot take what the server gives every app: connections, subscriptions, payload.

The rendered layout is loaded as is (config mode: `accounts.conf`; JWT mode: the account and user JWTs
the providers issue, pushed to a full resolver). Two pairs share the server: `a-b` and `c-d`; app `a`
attacks with its own credential. Each attack is also run against the same layout rendered with every
limit off (the control), where it must succeed: so each test is known to be able to fail.

The attacker speaks the client protocol itself (`RawClient`) to count exactly what the server took:
nats-py closes its own connection on the first `-ERR`, which would hide how many subscriptions the
server refused and how many it kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from conftest import ADMIN_PASSWORD, DEPLOY, provision
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from operator_support import IssuedLayout, Operator, issue_layout, provider_settings
from test_attacks import RawLeafnode

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.documents import render_documents
from jsb_infra.core.spec import AppLimits, ConfigError, Pair, parse_config, parse_pairs
from jsb_infra.deploy.app_accounts import AppAccountsArgs
from jsb_infra.deploy.providers.jwt_accounts import AppAccountJwtProvider
from jsb_infra.deploy.stack_settings import parse_stack_settings
from jsb_infra.local.server import LocalNatsServer, free_port

PAIRS = parse_pairs([{"stream": "a-b", "apps": ["a", "b"]}, {"stream": "c-d", "apps": ["c", "d"]}]).pairs
ATTACKER = "a"
PAYLOAD_LIMIT = 4096  # small, so the control's oversized message stays under the server's max_payload
OVERRIDE_CONNECTIONS = 5
# The spec's defaults for connections and subscriptions; a small payload; app c overridden.
LIMITED = AppLimits(payload=PAYLOAD_LIMIT, overrides={"c": {"connections": OVERRIDE_CONNECTIONS}})
OFF = AppLimits(connections=-1, subscriptions=-1, payload=-1, data=-1)
CONNECTIONS_TRIED = 300
SUBSCRIPTIONS_TRIED = 20_000
TOO_MANY_CONNECTIONS = b"maximum account active connections exceeded"
TOO_MANY_SUBS = b"maximum subscriptions exceeded"


# -- the attacker's own client: the protocol, counted ------------------------------------------------
@dataclass
class RawClient:
    """A client connection spoken by hand: CONNECT signed with the app's NKey (and its user JWT in
    operator mode), then whatever the test writes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    errors: list[bytes] = field(default_factory=list)

    @classmethod
    async def open(cls, port: int, seed: str, user_jwt: str | None) -> RawClient:
        client, connect = await cls.dial(port, seed, user_jwt)
        client.writer.write(connect)
        return client

    @classmethod
    async def dial(cls, port: int, seed: str, user_jwt: str | None) -> tuple[RawClient, bytes]:
        """The socket, past the server's INFO, and the signed CONNECT it is waiting for (not sent)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        info = json.loads((await reader.readline()).decode().split(" ", 1)[1])
        keys = nkeys.from_seed(seed.encode())
        signature = base64.urlsafe_b64encode(keys.sign(info["nonce"].encode())).decode().rstrip("=")
        identity = {"jwt": user_jwt} if user_jwt else {"nkey": keys.public_key.decode()}
        connect = {**identity, "sig": signature, "verbose": False, "protocol": 1, "headers": True}
        return cls(reader, writer), f"CONNECT {json.dumps(connect)}\r\n".encode()

    async def ping(self, within: float = 10.0) -> bool:
        """True when the server answers PONG; False when it closes the connection. Every `-ERR` on
        the way is kept in `errors`."""
        self.writer.write(b"PING\r\n")
        return await self.answer(within)

    async def answer(self, within: float = 10.0) -> bool:
        """Reads up to the server's PONG to a PING already written: `ping`'s answer."""
        try:
            while True:
                line = await asyncio.wait_for(self.reader.readline(), timeout=within)
                if not line:
                    return False
                if line.startswith(b"PONG"):
                    return True
                if line.startswith(b"-ERR"):
                    self.errors.append(line.strip())
                elif line.startswith(b"PING"):
                    self.writer.write(b"PONG\r\n")
        except (TimeoutError, ConnectionError):
            return False

    def subscribe(self, count: int) -> None:
        """`count` subscriptions on subjects of the app's own inbox prefix (which it may subscribe to)."""
        prefix = names.inbox_prefix(ATTACKER)
        self.writer.write(b"".join(f"SUB {prefix}.s{i} {i}\r\n".encode() for i in range(count)))

    def close(self) -> None:
        self.writer.close()


# -- a server running the rendered layout -------------------------------------------------------------
@dataclass
class Deployment:
    """The server, how each app connects, and where its monitoring answers."""

    server: LocalNatsServer
    http_port: int
    seeds: dict[str, str]
    user_jwts: dict[str, str]  # empty in config mode
    accounts: dict[str, str]  # app -> the account name the server reports (JWT mode: its public key)
    admin_options: dict[str, Any]
    issued: IssuedLayout | None = None  # JWT mode: the providers' state
    operator: Operator | None = None  # JWT mode

    @property
    def port(self) -> int:
        return self.server.port

    def nats_options(self, app: str) -> dict[str, Any]:
        if self.user_jwts:
            return {
                "user_credentials": RawCredentials(jc.creds_document(self.user_jwts[app], self.seeds[app]))
            }
        return {"nkeys_seed_str": self.seeds[app]}

    async def raw(self, app: str) -> RawClient:
        return await RawClient.open(self.port, self.seeds[app], self.user_jwts.get(app))

    def connz(self, app: str) -> dict[str, Any]:
        """The server's own view of the app's connections (monitoring `/connz`, with subscriptions)."""
        url = f"http://127.0.0.1:{self.http_port}/connz?acc={self.accounts[app]}&subs=1&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return dict(json.loads(reply.read()))

    async def stream_messages(self, stream: str) -> int:
        nc = await nats.connect(self.server.url, **self.admin_options)
        try:
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)).data)
            return int(info["state"]["messages"])
        finally:
            await nc.close()


def _monitored(http_port: int) -> str:
    return f'http: "127.0.0.1:{http_port}"\n'


def _server_config(
    http_port: int, seeds: dict[str, str], limits: AppLimits, pairs: Sequence[Pair] = PAIRS
) -> str:
    """The rendered `accounts.conf` of `pairs` with `limits`, every app with its NKey user; monitored."""
    layout = account_layout(pairs, app_limits=limits)
    keys = {app: public_key_of(seed) for app, seed in seeds.items()}
    return _monitored(http_port) + render_accounts_conf(layout, keys, DEPLOY)


async def config_deployment(make_server: Callable[..., LocalNatsServer], limits: AppLimits) -> Deployment:
    """Config mode: the rendered layout of PAIRS with `limits` (`_server_config`)."""
    seeds = {app: new_user_keypair()[0] for pair in PAIRS for app in pair.apps}
    http_port = free_port()
    server = make_server(_server_config(http_port, seeds, limits))
    for pair in PAIRS:
        await provision(server.url, pair)
    accounts = {a.app: a.account for a in account_layout(PAIRS).apps}
    admin = {"user": DEPLOY.user, "password": ADMIN_PASSWORD}
    return Deployment(server, http_port, seeds, {}, accounts, admin)


async def jwt_deployment(
    make_server: Callable[..., LocalNatsServer], limits: AppLimits, resolver_dir: Path
) -> Deployment:
    """JWT mode: an operator-mode server with a full resolver; the JWT-mode providers issue every app's
    account and user with `limits` and push the accounts."""
    operator = Operator()
    http_port = free_port()
    server = make_server(operator.server_config(resolver_dir) + _monitored(http_port))
    issued = await asyncio.to_thread(issue_layout, server.url, operator, list(PAIRS), limits)
    deploy = {"user_credentials": RawCredentials(operator.deploy_creds)}
    for pair in PAIRS:
        await provision(server.url, pair, deploy)
    seeds = {app: state["user_seed"] for app, state in issued.apps.items()}
    user_jwts = {app: jc.parse_creds(issued.creds(app))[0] for app in issued.apps}
    accounts = {app: state["account_key"] for app, state in issued.apps.items()}
    return Deployment(server, http_port, seeds, user_jwts, accounts, deploy, issued, operator)


@pytest.fixture(params=["config", "jwt"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def deploy(
    mode: str, make_server: Callable[..., LocalNatsServer], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[AppLimits], Any]:
    """`await deploy(limits)`: PAIRS on a fresh server in this test's mode."""

    async def build(limits: AppLimits) -> Deployment:
        if mode == "jwt":
            return await jwt_deployment(make_server, limits, tmp_path_factory.mktemp("resolver"))
        return await config_deployment(make_server, limits)

    return build


# -- connections ---------------------------------------------------------------------------------------
async def _flood_connections(world: Deployment, app: str, tries: int) -> tuple[list[RawClient], list[bytes]]:
    """Open `tries` connections with `app`'s key, 50 at a time; returns those the server answered
    (kept open) and the errors of those it closed."""
    kept: list[RawClient] = []
    refused: list[bytes] = []

    async def one() -> None:
        client = await world.raw(app)
        if await client.ping():
            kept.append(client)
        else:
            refused.extend(client.errors or [b"closed without -ERR"])
            client.close()

    for start in range(0, tries, 50):
        await asyncio.gather(*(one() for _ in range(min(50, tries - start))))
    return kept, refused


async def _burst(world: Deployment, app: str, tries: int) -> tuple[list[RawClient], list[bytes]]:
    """`tries` connections with `app`'s key arriving together: every socket is opened and past the
    server's INFO first, then all their CONNECTs (each with a PING) are written at once. Returns
    those the server answered (kept open) and the errors of those it closed."""
    dialed = await asyncio.gather(
        *(RawClient.dial(world.port, world.seeds[app], world.user_jwts.get(app)) for _ in range(tries))
    )
    for client, connect in dialed:
        client.writer.write(connect + b"PING\r\n")
    clients = [client for client, _ in dialed]
    answered = await asyncio.gather(*(client.answer() for client in clients))
    refused: list[bytes] = []
    for client, ok in zip(clients, answered, strict=True):
        if not ok:
            refused.extend(client.errors or [b"closed without -ERR"])
            client.close()
    return [client for client, ok in zip(clients, answered, strict=True) if ok], refused


async def _still_open(clients: list[RawClient]) -> tuple[list[RawClient], list[bytes]]:
    """After a second: those of `clients` the server still answers, and the errors it sent the
    ones it has closed since it admitted them."""
    await asyncio.sleep(1.0)
    answered = await asyncio.gather(*(client.ping(within=5.0) for client in clients))
    closed = [
        error for client, ok in zip(clients, answered, strict=True) if not ok for error in client.errors
    ]
    return [client for client, ok in zip(clients, answered, strict=True) if ok], closed


async def _publish_and_count(world: Deployment, app: str, stream: str) -> int:
    """`app` connects with the ordinary client and publishes one message to its own subject; returns
    how many messages its stream then holds."""
    pair = next(p for p in PAIRS if p.stream == stream)
    nc = await nats.connect(world.server.url, allow_reconnect=False, **world.nats_options(app))
    try:
        await nc.publish(names.publish_subject(app, pair.destination(app)), b"still here")
        await nc.flush()
    finally:
        await nc.close()
    await asyncio.sleep(0.1)
    return await world.stream_messages(stream)


# nats-server (v2.15.1) checks an account's connection limit and counts the new connection in two
# steps (server/client.go `registerWithAccount`: `MaxTotalConnectionsReached`, then `addClient`), so
# CONNECTs processed together can all pass the check: a burst can get past the limit. Measured here:
# at most 3 over (8 of 5 admitted). In JWT mode, connections that arrive while the server loads the
# account (before its limits are set) are admitted too, and the loader then closes the newest over the
# limit; the excess of the plain race is kept (on one server nothing prunes it). Either way the account
# refuses every new connection once it is at its limit.
MEASURED_OVERSHOOT = 3


async def _assert_at_limit(
    world: Deployment, app: str, limit: int, tried: int, kept: list[RawClient], refused: list[bytes]
) -> list[RawClient]:
    """What the server enforces on `tried` concurrent connections of `app`: about `limit` in (at
    most MEASURED_OVERSHOOT over), the rest refused with the limit's error; a second later the
    server holds what still answers, and refuses any new connection. Returns those still open."""
    assert limit <= len(kept) <= limit + MEASURED_OVERSHOOT, f"{len(kept)} of {tried} got in; limit {limit}"
    assert len(kept) + len(refused) == tried
    assert all(TOO_MANY_CONNECTIONS in error for error in refused), set(refused)
    still, closed = await _still_open(kept)
    assert all(TOO_MANY_CONNECTIONS in error for error in closed), set(closed)
    assert len(still) >= limit, "the server closed connections within the limit"
    assert world.connz(app)["num_connections"] == len(still), "the server holds what no client has"
    more, refused_more = await _flood_connections(world, app, 2)
    assert (more, len(refused_more)) == ([], 2), "a connection got in over the limit after the burst"
    return still


async def test_connections_of_one_app_stop_at_its_limit_and_other_apps_still_connect(deploy):
    world = await deploy(LIMITED)
    kept, refused = await _flood_connections(world, ATTACKER, CONNECTIONS_TRIED)
    try:
        kept = await _assert_at_limit(world, ATTACKER, LIMITED.connections, CONNECTIONS_TRIED, kept, refused)
        # every other app still connects and publishes, the attacker's peer included
        assert await _publish_and_count(world, "b", "a-b") == 1
        assert await _publish_and_count(world, "d", "c-d") == 1
        # an override: app c gets its own limit (its first connections: in JWT mode the server loads
        # c's account during this burst)
        tried = OVERRIDE_CONNECTIONS + 3
        c_kept, c_refused = await _flood_connections(world, "c", tried)
        for client in await _assert_at_limit(world, "c", OVERRIDE_CONNECTIONS, tried, c_kept, c_refused):
            client.close()
    finally:
        for client in kept:
            client.close()


BURST_PAIRS = parse_pairs([{"stream": f"s{i}", "apps": [f"x{i}", f"y{i}"]} for i in range(10)]).pairs
BURST_LIMIT = 5
BURST_TRIES = 8
BURST_RESTARTS = 100


async def test_a_burst_on_a_fresh_server_can_get_past_the_limit_and_the_server_keeps_the_excess(make_server):
    """Pins a nats-server race (v2.15.1): server/client.go `registerWithAccount` checks
    `MaxTotalConnectionsReached` under the account's read lock, lets go of it, and only then
    `addClient` counts the connection; CONNECTs processed together can all pass the check. On one
    server nothing closes the excess afterwards (the account prunes connections over its limit only
    when its limits are updated, or in a cluster when another server reports its count).

    20 apps, each limited to 5, each sent a burst of 8 at once, on a freshly started server running
    16 Go threads (where it was measured most often: about one start in five has an app over its
    limit), restarting until one app holds more than 5. When no burst in BURST_RESTARTS starts gets
    past, nats-server has fixed the race: then tighten the connection tests (`_assert_at_limit`) and
    the limits section of docs/permissions.md."""
    seeds = {app: new_user_keypair()[0] for pair in BURST_PAIRS for app in pair.apps}
    http_port = free_port()
    limits = AppLimits(connections=BURST_LIMIT)
    server = make_server(_server_config(http_port, seeds, limits, BURST_PAIRS))
    accounts = {a.app: a.account for a in account_layout(BURST_PAIRS).apps}
    world = Deployment(server, http_port, seeds, {}, accounts, {})
    over: dict[str, list[RawClient]] = {}
    # as on a 16-core host (Go runs one thread per core): more CONNECTs processed in parallel
    server.env["GOMAXPROCS"] = "16"
    starts = 0
    while not over and starts < BURST_RESTARTS:
        starts += 1
        server.stop()
        server.start()
        bursts = await asyncio.gather(*(_burst(world, app, BURST_TRIES) for app in seeds))
        for app, (kept, refused) in zip(seeds, bursts, strict=True):
            assert len(kept) + len(refused) == BURST_TRIES
            assert all(TOO_MANY_CONNECTIONS in error for error in refused), set(refused)
            if len(kept) > BURST_LIMIT:
                over[app] = kept
            else:
                for client in kept:
                    client.close()
    assert over, f"no burst got past the limit in {starts} fresh starts: has nats-server fixed the race?"
    try:
        for app, kept in over.items():
            still, closed = await _still_open(kept)
            assert (len(still), closed) == (len(kept), []), "the server closed the excess"
            assert world.connz(app)["num_connections"] == len(kept) > BURST_LIMIT
            # over the limit, the account refuses every new connection
            more, refused = await _flood_connections(world, app, 2)
            assert (more, len(refused)) == ([], 2)
    finally:
        for kept in over.values():
            for client in kept:
                client.close()


async def test_control_without_limits_one_app_takes_every_connection_it_asks_for(deploy):
    world = await deploy(OFF)
    kept, refused = await _flood_connections(world, ATTACKER, CONNECTIONS_TRIED)
    try:
        assert (len(kept), refused) == (CONNECTIONS_TRIED, []), "without limits the flood should get in"
        assert world.connz(ATTACKER)["num_connections"] == CONNECTIONS_TRIED
    finally:
        for client in kept:
            client.close()


async def test_a_reload_puts_the_limits_in_force_and_closes_what_is_over_them(make_server):
    """Upgrading a running server: the accounts.conf with limits, shipped and reloaded, applies at once.
    The app's connections over the new limit are closed, and new ones are refused."""
    world = await config_deployment(make_server, OFF)
    kept, _ = await _flood_connections(world, ATTACKER, 8)
    try:
        assert world.connz(ATTACKER)["num_connections"] == 8
        world.server.extra_config = _server_config(world.http_port, world.seeds, AppLimits(connections=5))
        world.server.reload()
        for _ in range(50):
            if world.connz(ATTACKER)["num_connections"] == 5:
                break
            await asyncio.sleep(0.1)
        assert world.connz(ATTACKER)["num_connections"] == 5, "the reload left the app over its limit"
        more, refused = await _flood_connections(world, ATTACKER, 2)
        assert (more, len(refused)) == ([], 2)
    finally:
        for client in kept:
            client.close()


async def test_the_extreme_values_the_spec_accepts_load_and_hold(make_server):
    """1 and 2^31-1 everywhere: the server loads the rendered file as is and enforces what it says."""
    tiny = await config_deployment(make_server, AppLimits(connections=1, subscriptions=1, payload=1))
    first = await tiny.raw(ATTACKER)
    try:
        assert await first.ping()
        first.subscribe(3)
        assert await first.ping()
        assert len(first.errors) == 2 and all(TOO_MANY_SUBS in e for e in first.errors), first.errors
        kept, refused = await _flood_connections(tiny, ATTACKER, 1)
        assert (kept, len(refused)) == ([], 1)
    finally:
        first.close()
    for _ in range(50):  # the server notices the close
        if tiny.connz(ATTACKER)["num_connections"] == 0:
            break
        await asyncio.sleep(0.05)
    held, nc = await _publish_sizes(tiny, [1, 2])
    assert held == 1 and nc.is_closed
    most = 2**31 - 1
    huge = await config_deployment(make_server, AppLimits(connections=most, subscriptions=most, payload=most))
    assert await _flood_subscriptions(huge) == (0, SUBSCRIPTIONS_TRIED)


# -- subscriptions -------------------------------------------------------------------------------------
async def _flood_subscriptions(world: Deployment) -> tuple[int, int]:
    """SUBSCRIPTIONS_TRIED subscriptions on one connection of the attacker: (refused by the server,
    held by the server on that connection)."""
    client = await world.raw(ATTACKER)
    try:
        assert await client.ping(), client.errors
        client.subscribe(SUBSCRIPTIONS_TRIED)
        assert await client.ping(within=30), "the server closed the connection"
        refused = [e for e in client.errors if TOO_MANY_SUBS in e]
        assert len(refused) == len(client.errors), set(client.errors)
        (connection,) = world.connz(ATTACKER)["connections"]
        return len(refused), int(connection["subscriptions"])
    finally:
        client.close()


async def test_subscriptions_of_one_connection_stop_at_the_limit(deploy):
    world = await deploy(LIMITED)
    refused, held = await _flood_subscriptions(world)
    limit = LIMITED.subscriptions
    assert held == limit, f"the server holds {held} subscriptions; limit {limit}"
    assert refused == SUBSCRIPTIONS_TRIED - limit


async def test_control_without_limits_one_connection_holds_every_subscription(deploy):
    world = await deploy(OFF)
    assert await _flood_subscriptions(world) == (0, SUBSCRIPTIONS_TRIED)


# -- payload -------------------------------------------------------------------------------------------
async def _publish_sizes(world: Deployment, sizes: list[int]) -> tuple[int, NATS]:
    """The attacker publishes one message of each size to its own subject, on one connection; returns
    how many the stream then holds, and the (possibly closed) connection."""
    errors: list[Exception] = []

    async def on_error(err: Exception) -> None:
        errors.append(err)

    nc = await nats.connect(
        world.server.url, allow_reconnect=False, error_cb=on_error, **world.nats_options(ATTACKER)
    )
    subject = names.publish_subject(ATTACKER, PAIRS[0].destination(ATTACKER))
    for size in sizes:
        with contextlib.suppress(Exception):
            await nc.publish(subject, b"x" * size)
            await nc.flush(timeout=2)
    await asyncio.sleep(0.2)
    return await world.stream_messages(PAIRS[0].stream), nc


async def test_a_payload_over_the_limit_is_refused_and_closes_the_connection(deploy):
    world = await deploy(LIMITED)
    held, nc = await _publish_sizes(world, [PAYLOAD_LIMIT, PAYLOAD_LIMIT + 1])
    assert held == 1, "only the message at the limit may be stored"
    assert nc.is_closed, "the server keeps a connection that sent an oversized message"
    assert "maximum payload violation" in str(nc.last_error)
    # a message at the limit, on a new connection, is still stored: the limit is not below the spec
    held, nc = await _publish_sizes(world, [PAYLOAD_LIMIT])
    assert held == 2 and nc.is_connected
    await nc.close()


async def test_control_without_limits_the_oversized_payload_is_stored(deploy):
    world = await deploy(OFF)
    held, nc = await _publish_sizes(world, [PAYLOAD_LIMIT, PAYLOAD_LIMIT + 1])
    assert held == 2 and nc.is_connected
    await nc.close()


# -- leafnodes (both walls: connection types, max_leafnodes 0) ------------------------------------------
async def _leafnode_accepted(make_server: Callable[..., LocalNatsServer], edit: Callable[[str], str]) -> bool:
    """Config mode: can the attacker's key open a leafnode to a server running the rendered layout
    passed through `edit`?"""
    seeds = {app: new_user_keypair()[0] for pair in PAIRS for app in pair.apps}
    conf = render_accounts_conf(
        account_layout(PAIRS), {app: public_key_of(s) for app, s in seeds.items()}, DEPLOY
    )
    leaf_port = free_port()
    make_server(edit(conf) + f'\nleafnodes {{ listen: "127.0.0.1:{leaf_port}" }}\n')
    leaf = await RawLeafnode.connect(leaf_port, seeds[ATTACKER])
    try:
        return await leaf.accepted()
    finally:
        await leaf.close()


def _without_connection_types(conf: str) -> str:
    return conf.replace('allowed_connection_types: ["STANDARD"]', "")


async def test_the_leafnode_limit_alone_refuses_an_app_leafnode(make_server):
    """With the connection-type restriction gone, `max_leafnodes: 0` still refuses the leafnode; the
    control lifts the limit too and the leafnode is accepted."""
    assert not await _leafnode_accepted(make_server, _without_connection_types)
    lifted = await _leafnode_accepted(
        make_server,
        lambda conf: _without_connection_types(conf).replace("max_leafnodes: 0", "max_leafnodes: -1"),
    )
    assert lifted, "the control leafnode was refused: the check above proves nothing"


# -- data (JWT mode): written, and measured as not enforced --------------------------------------------
async def test_jwt_data_limit_is_in_the_claims_but_the_server_does_not_enforce_it(
    make_server, tmp_path_factory
):
    """nats-server 2.15 reads no `data` limit (server/accounts.go takes conn, leaf, subs and payload
    from the account claims; server/client.go subs and payload from the user's). This pins what the
    docs say: an app with a 10 kB data limit moves 100 kB and keeps its connection."""
    limits = AppLimits(data=10_000)
    world = await jwt_deployment(make_server, limits, tmp_path_factory.mktemp("resolver"))
    claims = jc.decode(world.user_jwts[ATTACKER])
    assert claims["nats"]["data"] == 10_000
    held, nc = await _publish_sizes(world, [1000] * 100)
    assert held == 100 and nc.is_connected, "the server enforces data now: update docs/permissions.md"
    await nc.close()


# -- JWT mode: the server holds the limits as issued, and a change re-issues them in place --------------


async def test_jwt_limits_are_held_as_issued_and_a_change_is_an_update_the_server_enforces(
    make_server, tmp_path_factory
):
    world = await jwt_deployment(make_server, LIMITED, tmp_path_factory.mktemp("resolver"))
    assert world.issued is not None and world.operator is not None
    state = world.issued.apps[ATTACKER]
    account = state["account_key"]
    async with resolver.system_session([world.server.url], world.operator.system_creds) as nc:
        live = jc.decode(await resolver.lookup(nc, account) or "")
    expected = jc.app_account_limits(LIMITED.for_app(ATTACKER), len(state["imports"]))
    assert live["nats"]["limits"] == expected, "the resolver holds other limits than issued"

    lowered = {**LIMITED.for_app(ATTACKER).model_dump(), "connections": 3}
    news = {**state, "limits": lowered}  # the inputs as before, outputs ignored by diff and update
    provider = AppAccountJwtProvider()

    def update() -> tuple[bool | None, bool | None, dict[str, Any]]:
        with provider_settings(world.server.url, world.operator):
            unchanged = provider.diff(account, state, {**news, "limits": state["limits"]}).changes
            changed = provider.diff(account, state, news).changes
            return unchanged, changed, provider.update(account, state, news).outs

    unchanged, changed, outs = await asyncio.to_thread(update)
    assert (unchanged, changed) == (False, True)
    assert jc.decode(outs["user_jwt"])["nats"]["subs"] == LIMITED.subscriptions
    # one at a time: a concurrent burst can pass the limit by a few (see _assert_at_limit), which is
    # not what this test is about
    kept, refused = [], []
    for _ in range(6):
        more, errors = await _flood_connections(world, ATTACKER, 1)
        kept += more
        refused += errors
    try:
        assert (len(kept), len(refused)) == (3, 3), "the lowered connection limit is not in force"
    finally:
        for client in kept:
            client.close()


# -- what is rendered ----------------------------------------------------------------------------------
DEFAULT_CONF_LIMITS = (
    "limits: {max_connections: 100, max_subscriptions: 1000, max_payload: 1048576, max_leafnodes: 0}"
)


def test_defaults_are_rendered_into_every_app_account_in_both_modes():
    documents = render_documents(PAIRS)
    conf = documents[Path("accounts.conf")]
    app_blocks = re.findall(r'"APP_(\w+)" \{(.*?)\n  \}', conf, re.S)
    assert [app for app, _ in app_blocks] == ["a", "b", "c", "d"]
    for _, block in app_blocks:
        assert DEFAULT_CONF_LIMITS in block
    assert "limits" not in conf.split('"APP_')[0], "the JetStream account's limits are not the apps'"
    shown = json.loads(documents[Path("apps/a.json")])["limits"]
    assert shown == {
        "connections": 100,
        "subscriptions": 1000,
        "payload": 1048576,
        "data": -1,
        "leafnodes": 0,
    }
    # JWT mode: the app account and its user
    account = account_layout(PAIRS).app(ATTACKER)
    imports = [(s.subject, "") for s in account.services]
    claims = jc.app_account_claims(account.account, "A" * 56, imports, "A" * 56, limits=account.limits)
    assert claims["nats"]["limits"] == {
        "conn": 100,
        "subs": 1000,
        "payload": 1048576,
        "data": -1,
        "leaf": 0,
        "imports": len(imports),
        "exports": 0,
        "wildcards": False,
    }
    user = jc.user_claims("a", "U" * 56, [], [], limits=account.limits)["nats"]
    assert (user["subs"], user["payload"], user["data"]) == (1000, 1048576, -1)


def test_overrides_change_only_their_app():
    limits = parse_config(
        {
            "pairs": [p.model_dump(mode="json") for p in PAIRS],
            "app_limits": {"payload": 2048, "overrides": {"c": {"subscriptions": 7}}},
        }
    ).app_limits
    layout = account_layout(PAIRS, app_limits=limits)
    assert layout.app("c").limits.model_dump() == {
        "connections": 100,
        "subscriptions": 7,
        "payload": 2048,
        "data": -1,
    }
    assert layout.app("d").limits.subscriptions == 1000


# -- bad input, named before anything touches a server ---------------------------------------------------
BAD_LIMITS = [
    ({"connections": 0}, "app_limits.connections: connections must be -1 (no limit) or positive, got 0"),
    (
        {"subscriptions": -2},
        "app_limits.subscriptions: subscriptions must be -1 (no limit) or positive, got -2",
    ),
    (
        {"payload": 2**31},
        "app_limits.payload: payload must be at most 2147483647 (the server holds it in 32 bits)",
    ),
    ({"payload": "1MB"}, "app_limits.payload: must be a whole number written in decimal"),
    (
        {"overrides": {"a": {"data": 0}}},
        "app_limits.overrides.a.data: data must be -1 (no limit) or positive",
    ),
    ({"overrides": {"x": {}}}, "app_limits.overrides.x: 'x' is not an app of any pair (a, b, c, d)"),
    ({"leafnodes": 1}, "app_limits.leafnodes: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("given", "problem"), BAD_LIMITS)
def test_bad_limits_are_named_in_the_spec_the_stack_config_and_the_module_args(given, problem):
    pairs = [p.model_dump(mode="json") for p in PAIRS]
    with pytest.raises(ConfigError) as spec_err:
        parse_config({"pairs": pairs, "app_limits": given})
    assert any(p.startswith(problem) for p in spec_err.value.problems), spec_err.value.problems
    with pytest.raises(ConfigError) as stack_err:
        parse_stack_settings(pairs, ["nats://127.0.0.1:4222"], app_limits=given)
    stack_problem = problem.replace("app_limits", "jsb:appLimits", 1)
    assert any(p.startswith(stack_problem) for p in stack_err.value.problems), stack_err.value.problems
    args = AppAccountsArgs(pairs=list(PAIRS), app_limits=given)
    with pytest.raises(ConfigError) as args_err:
        args.specs()
        args.limits()
    module_problem = "AppAccountsArgs." + problem
    assert any(p.startswith(module_problem) for p in args_err.value.problems), args_err.value.problems


def test_stack_setting_reaches_the_settings():
    pairs = [p.model_dump(mode="json") for p in PAIRS]
    settings = parse_stack_settings(pairs, ["nats://127.0.0.1:4222"], app_limits={"connections": 12})
    assert settings.app_limits.for_app("a").connections == 12
    assert parse_stack_settings(pairs, ["nats://127.0.0.1:4222"]).app_limits == AppLimits()


def test_render_writes_the_config_files_limits_and_refuses_a_bad_one(tmp_path, capsys):
    """`jsb-infra render CONFIG`: the example's override reaches billing's account and no other; a bad
    limit exits 2 naming the field, writing nothing."""
    from jsb_infra.cli import main

    example = Path(__file__).resolve().parent.parent / "examples" / "pairs.yaml"
    assert main(["render", str(example), "--out", str(tmp_path / "out")]) == 0
    conf = (tmp_path / "out" / "accounts.conf").read_text()
    blocks = dict(re.findall(r'"APP_(\w+)" \{(.*?)\n  \}', conf, re.S))
    assert "max_connections: 200," in blocks["billing"]
    assert all("max_connections: 100," in blocks[app] for app in blocks if app != "billing")
    bad = tmp_path / "bad.yaml"
    bad.write_text(example.read_text().replace("subscriptions: 1000", "subscriptions: 0"))
    assert main(["render", str(bad), "--out", str(tmp_path / "bad-out")]) == 2
    assert (
        "app_limits.subscriptions: subscriptions must be -1 (no limit) or positive, got 0"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "bad-out").exists()
