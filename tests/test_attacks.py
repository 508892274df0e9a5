"""An app tries to escape its least privilege, on a real server running the rendered account layout.

Three pairs share one server: `a-b` (apps a, b), `ab-c` (apps ab, c: `ab` collides with `a` as a
prefix) and `a-c` (a second pair of app a, and of c). App `a` is the attacker, connected with its own
credential. Every victim consumer holds unread messages and one message in flight (delivered, not yet
acked), and every victim app listens on its own inbox.

Each attack is run twice: by `a` as rendered (its account and its user's allow lists), and by `a` with
the user's subject permissions stripped (the account layout alone must hold: subject permissions are
only the second wall). After each attack the effect is checked, not the error text: every stream still
exists with the same messages, every victim consumer's delivered/ack floor/pending/redelivered counts
are unchanged, no victim inbox received anything, and no victim message reached the attacker.

A control shows the leafnode check can fail: with `allowed_connection_types` removed and the app
account's leafnode limit (0) lifted, the same leafnode attack acks away a victim's in-flight message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, pairs_server_config, provision
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.aio.msg import Msg
from operator_support import Operator, issue_layout

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.local.server import LocalNatsServer, free_port

CONSUMER = {"backoff": [], "ack_wait": "30s", "max_deliver": 5}
PAIRS = parse_pairs(
    [
        {"stream": "a-b", "apps": ["a", "b"], "consumer": CONSUMER},
        {"stream": "ab-c", "apps": ["ab", "c"], "consumer": CONSUMER},
        {"stream": "a-c", "apps": ["a", "c"], "dlq": False, "consumer": CONSUMER},
    ]
).pairs
ATTACKER = "a"
VICTIMS = ["b", "ab", "c"]
VICTIM_DURABLES = [  # every consumer but the attacker's own
    (pair.stream, names.durable_name(app)) for pair in PAIRS for app in pair.apps if app != ATTACKER
]
VICTIM_PAYLOAD = b"victim-secret"
QUIET = 0.3  # how long to wait for anything an attack might have caused to show


class World:
    """The server, the victims' listeners and what each of them received."""

    def __init__(
        self,
        server: LocalNatsServer,
        seeds: dict[str, str],
        app_options: Callable[[str], dict[str, Any]] | None = None,
        admin_options: dict[str, Any] | None = None,
    ):
        """`app_options(app)`: how an app connects (default: its NKey seed from `seeds`)."""
        self.server = server
        self.seeds = seeds
        self.url = server.url
        self.app_options = app_options or (lambda app: {"nkeys_seed_str": seeds[app]})
        self.admin_options = admin_options or {"user": ADMIN_USER, "password": ADMIN_PASSWORD}
        self.victim_inbox: dict[str, list[Msg]] = {app: [] for app in VICTIMS}
        self.victim_conns: list[NATS] = []
        self.in_flight: dict[tuple[str, str], Msg] = {}
        self.user_jwts: dict[str, str] = {}  # JWT mode: each app's user JWT
        self.signing_seeds: dict[str, str] = {}  # JWT mode: each app account's signing key
        self.account_jwts: dict[str, str] = {}  # JWT mode: each app's account JWT
        self.operator: Operator | None = None  # JWT mode: the operator that trusts them

    async def admin(self) -> NATS:
        return await nats.connect(self.url, **self.admin_options)

    async def snapshot(self) -> dict[str, Any]:
        """What must not change: streams with their messages, every victim consumer's counters."""
        nc = await self.admin()
        try:
            out: dict[str, Any] = {}
            names_reply = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"", timeout=2)).data)
            out["streams"] = sorted(names_reply.get("streams") or [])
            for pair in PAIRS:
                info = json.loads(
                    (await nc.request(f"$JS.API.STREAM.INFO.{pair.stream}", b"", timeout=2)).data
                )
                state = info.get("state", {})
                out[pair.stream] = (state.get("messages"), state.get("first_seq"), state.get("last_seq"))
            for stream, durable in VICTIM_DURABLES:
                info = json.loads(
                    (await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{durable}", b"", timeout=2)).data
                )
                out[f"{stream}/{durable}"] = (
                    info["delivered"]["stream_seq"],
                    info["ack_floor"]["stream_seq"],
                    info["num_ack_pending"],
                    info["num_redelivered"],
                    info["num_pending"],
                )
            return out
        finally:
            await nc.close()


async def _seed_victims(world: World) -> None:
    """Two unread messages for every victim consumer, one of them delivered and held (in flight)."""
    nc = await world.admin()
    try:
        js = nc.jetstream()
        for pair in PAIRS:
            for app in pair.apps:
                if app == ATTACKER:
                    continue
                for _ in range(3):
                    await js.publish(names.publish_subject(pair.destination(app), app), VICTIM_PAYLOAD)
    finally:
        await nc.close()
    for app in VICTIMS:
        nc = await nats.connect(world.url, **world.app_options(app), inbox_prefix=names.inbox_prefix(app))
        world.victim_conns.append(nc)
        inbox = world.victim_inbox[app]

        async def record(msg: Msg, inbox: list[Msg] = inbox) -> None:
            inbox.append(msg)

        for pair in PAIRS:
            if app not in pair.apps:
                continue
            sub = await nc.jetstream().pull_subscribe_bind(
                durable=names.durable_name(app), stream=pair.stream
            )
            [held] = await sub.fetch(1, timeout=2)
            world.in_flight[(pair.stream, names.durable_name(app))] = held
        # listening only from now on: what the victim legitimately fetched above is not an attack's effect
        await nc.subscribe(f"{names.inbox_prefix(app)}.attack-probe.>", cb=record)
        await nc.subscribe(f"{names.inbox_prefix(app)}.listening", cb=record)
        await nc.flush()


async def build_world(make_server: Callable[..., LocalNatsServer], strip: bool = False) -> World:
    """The three pairs provisioned on a server running their rendered layout; with `strip`, the
    attacker's user has no subject permissions at all (only its account confines it)."""
    seeds = {app: new_user_keypair()[0] for pair in PAIRS for app in pair.apps}
    config = pairs_server_config(PAIRS, seeds)
    if strip:
        config = strip_user_permissions(config, public_key_of(seeds[ATTACKER]))
    server = make_server(config)
    for pair in PAIRS:
        await provision(server.url, pair)
    world = World(server, seeds)
    await _seed_victims(world)
    return world


def strip_user_permissions(config: str, nkey: str) -> str:
    """Remove the `permissions { ... }` block of the user with this NKey from a rendered config."""
    start = config.index(f'nkey: "{nkey}"')
    begin = config.index("permissions: {", start)
    depth, i = 0, begin
    while True:
        if config[i] == "{":
            depth += 1
        elif config[i] == "}":
            depth -= 1
            if depth == 0:
                break
        i += 1
    stripped = config[:begin] + config[i + 1 :]
    assert "permissions" not in stripped[start : start + 200]
    return stripped


async def build_jwt_world(
    make_server: Callable[..., LocalNatsServer], resolver_dir: Path, extra_config: str = ""
) -> World:
    """The three pairs on a server in operator mode, their accounts and users issued as JWTs by the
    JWT-mode providers and pushed to its full resolver; every app connects with its `.creds`."""
    operator = Operator()
    server = make_server(operator.server_config(resolver_dir) + extra_config)
    issued = await asyncio.to_thread(issue_layout, server.url, operator, list(PAIRS))
    deploy = {"user_credentials": RawCredentials(operator.deploy_creds)}
    for pair in PAIRS:
        await provision(server.url, pair, deploy)
    world = World(
        server,
        {app: issued.apps[app]["user_seed"] for app in issued.apps},
        app_options=lambda app: {"user_credentials": RawCredentials(issued.creds(app))},
        admin_options=deploy,
    )
    world.user_jwts = {app: jc.parse_creds(issued.creds(app))[0] for app in issued.apps}
    world.signing_seeds = {app: issued.apps[app]["signing_seed"] for app in issued.apps}
    world.account_jwts = {app: issued.apps[app]["jwt"] for app in issued.apps}
    world.operator = operator
    await _seed_victims(world)
    return world


@pytest.fixture(params=["rendered", "account-only", "jwt"])
async def arena(
    request: pytest.FixtureRequest,
    make_server: Callable[..., LocalNatsServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """The world as rendered, with the attacker's subject permissions stripped, and in JWT mode."""
    if request.param == "jwt":
        world = await build_jwt_world(make_server, tmp_path_factory.mktemp("resolver"))
    else:
        world = await build_world(make_server, strip=request.param == "account-only")
    yield world
    for nc in world.victim_conns:
        await nc.close()


class Attacker:
    def __init__(self, nc: NATS, errors: list[str]):
        self.nc = nc
        self.errors = errors
        self.received: list[Msg] = []

    async def listen(self, subject: str) -> None:
        async def record(msg: Msg) -> None:
            self.received.append(msg)

        with contextlib.suppress(Exception):  # a denied subscription is reported through error_cb
            await self.nc.subscribe(subject, cb=record)


async def connect_attacker(world: World) -> Attacker:
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(
        world.url,
        **world.app_options(ATTACKER),
        inbox_prefix=names.inbox_prefix(ATTACKER),
        error_cb=on_error,
        allow_reconnect=False,
    )
    attacker = Attacker(nc, errors)
    await attacker.listen(f"{names.inbox_prefix(ATTACKER)}.>")
    return attacker


async def assert_untouched(world: World, before: dict[str, Any], attacker: Attacker) -> None:
    await attacker.nc.flush()
    await asyncio.sleep(QUIET)
    after = await world.snapshot()
    assert after == before, "an attack changed streams or victim consumers"
    for app, inbox in world.victim_inbox.items():
        assert not inbox, f"victim {app}'s inbox received {[(m.subject, m.data) for m in inbox]}"
    stolen = [m for m in attacker.received if VICTIM_PAYLOAD in m.data]
    assert not stolen, f"victim messages reached the attacker: {[(m.subject, m.data) for m in stolen]}"


async def stored_since(world: World, stream: str, last_seq: int) -> list[tuple[str, bytes]]:
    """(subject, data) of every message stored in `stream` after sequence `last_seq`."""
    nc = await world.admin()
    try:
        out = []
        seq = last_seq + 1
        while True:
            reply = json.loads(
                (
                    await nc.request(
                        f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=2
                    )
                ).data
            )
            if "error" in reply:
                info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)).data)
                if seq > info["state"]["last_seq"]:
                    return out
                seq += 1  # acked away (workqueue): not the attacker's doing to check here
                continue
            message = reply["message"]
            out.append((message["subject"], base64.b64decode(message.get("data", ""))))
            seq += 1
    finally:
        await nc.close()


def in_flight_acks(world: World) -> list[str]:
    """The real ack subjects of the victims' in-flight messages, which the attacker might guess."""
    return [msg.reply for msg in world.in_flight.values()]


def confused_acks(stream: str, durable: str, own_stream: str, own_durable: str) -> list[str]:
    """Ack subjects shaped to be read as another consumer's by a server or a too-broad pattern."""
    return [
        f"$JS.ACK.{stream}.{durable}.1.1.1.0.0",
        f"$JS.ACK.{stream}.{durable}.{own_stream}.{own_durable}.1.1.1",  # the old `*.*` pattern's hole
        f"$JS.ACK.{own_stream}.{own_durable}.{stream}.{durable}.1.1.1",
        f"$JS.ACK.{own_stream}.{own_durable}.{stream}.{durable}.1.1.1.1.1.x",  # twelve-token form
        f"$JS.ACK._.AAAAAAAA.{stream}.{durable}.1.1.1.1.1.x",
    ]


ACK_BODIES = [b"", b"+ACK", b'+NXT {"batch":1}', b'-NAK {"delay": 1}', b"+TERM", b"+WPI"]


async def test_crafted_ack_subjects_reach_no_other_consumer(arena):
    world = arena
    before = await world.snapshot()
    attacker = await connect_attacker(world)
    own = [(p.stream, names.durable_name(ATTACKER)) for p in PAIRS if ATTACKER in p.apps]
    subjects = list(in_flight_acks(world))
    for stream, durable in VICTIM_DURABLES:
        for own_stream, own_durable in own:
            subjects += confused_acks(stream, durable, own_stream, own_durable)
    reply = f"{names.inbox_prefix(ATTACKER)}.stolen"
    for subject in subjects:
        for body in ACK_BODIES:
            await attacker.nc.publish(subject, body, reply=reply)
    await assert_untouched(world, before, attacker)
    # the victims' in-flight messages are still theirs: each can still ack its own
    for msg in world.in_flight.values():
        await msg.ack_sync(timeout=2)
    await attacker.nc.close()


async def dlq_count(world: World, stream: str, subject: str) -> int:
    nc = await world.admin()
    try:
        body = json.dumps({"subjects_filter": subject}).encode()
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", body, timeout=2)).data)
        return int((info["state"].get("subjects") or {}).get(subject, 0))
    finally:
        await nc.close()


async def _ack_foreign_sequences(world: World, attacker: Attacker, pair: Pair) -> None:
    """The attacker acks every sequence of the stream through its own durable's ack subject, after
    moving its delivery point past them (its own message, fetched and acked): on a workqueue stream
    the server removes any acked message that no consumer is interested in."""
    durable = names.durable_name(ATTACKER)
    admin = await world.admin()
    await admin.jetstream().publish(names.publish_subject(pair.destination(ATTACKER), ATTACKER), b"own")
    await admin.close()
    sub = await attacker.nc.jetstream().pull_subscribe_bind(durable=durable, stream=pair.stream)
    [own] = await sub.fetch(1, timeout=2)
    await own.ack_sync(timeout=2)
    last = own.metadata.sequence.stream
    for seq in range(1, last + 1):
        for body in (b"", b"+ACK", b"+TERM"):
            await attacker.nc.publish(f"$JS.ACK.{pair.stream}.{durable}.1.{seq}.1.0.0", body)
    await attacker.nc.flush()
    await asyncio.sleep(QUIET)


async def test_acking_foreign_sequences_through_its_own_durable_keeps_the_peers_dead_letters(arena):
    """b's dead-lettered messages live in the pair's workqueue stream, and nothing reads them: without
    a consumer interested in them, `a` could delete them by acking their sequences through its own
    (legitimately imported) ack subject. The DLQ keeper durable holds them; a control without it shows
    the attack is real."""
    world = arena
    pair = PAIRS[0]  # a-b
    peer_dlq = names.dlq_subject(pair.destination(ATTACKER))
    admin = await world.admin()
    for _ in range(2):
        await admin.jetstream().publish(peer_dlq, VICTIM_PAYLOAD + b"-dead-lettered")
    await admin.close()
    attacker = await connect_attacker(world)
    await _ack_foreign_sequences(world, attacker, pair)
    assert await dlq_count(world, pair.stream, peer_dlq) == 2, "the peer's DLQ messages were deleted"
    before = await world.snapshot()
    await assert_untouched(world, before, attacker)

    # control: without the keeper the same acks delete them
    admin = await world.admin()
    await admin.request(f"$JS.API.CONSUMER.DELETE.{pair.stream}.{names.DLQ_KEEPER}", b"", timeout=2)
    await admin.close()
    await _ack_foreign_sequences(world, attacker, pair)
    assert await dlq_count(world, pair.stream, peer_dlq) == 0, "the control attack should have worked"
    await attacker.nc.close()


def reply_targets(world: World) -> list[str]:
    """Reply subjects an attacker would aim the server's answers at."""
    targets = []
    for pair in PAIRS:
        targets += [f"$JS.API.STREAM.DELETE.{pair.stream}", f"$JS.API.STREAM.PURGE.{pair.stream}"]
        targets += [f"$JS.API.CONSUMER.DELETE.{pair.stream}.{names.durable_name(app)}" for app in pair.apps]
        targets += [s for s in pair.subjects() if not s.startswith(f"{ATTACKER}.")]  # other apps' subjects
    targets += [f"{names.inbox_prefix(app)}.listening" for app in VICTIMS]
    targets += [f"{names.inbox_prefix(app)}.attack-probe.x" for app in VICTIMS]
    targets += in_flight_acks(world)  # an answer landing on a victim's ack subject would ack it away
    targets += ["_R_.x", "$JS.ACK.a-b.b-workers.>"]
    return targets


async def test_replies_of_allowed_requests_aimed_at_the_api_streams_and_inboxes(arena):
    world = arena
    attacker = await connect_attacker(world)
    own_pairs = [p for p in PAIRS if ATTACKER in p.apps]
    targets = reply_targets(world)
    # One message for the attacker in each own durable, so MSG.NEXT also has a delivery to redirect.
    admin = await world.admin()
    for pair in own_pairs:
        await admin.jetstream().publish(names.publish_subject(pair.destination(ATTACKER), ATTACKER), b"own")
    await admin.close()
    before = await world.snapshot()
    own_publishes: dict[str, int] = {}  # everything the attacker stored, per stream
    own_events: dict[str, int] = {}  # of those, its events for the peer (the peer's durable gets them)
    for target in targets:
        for pair in own_pairs:
            durable = names.durable_name(ATTACKER)
            next_subject = names.msg_next_subject(pair.stream, durable)
            for request in ({"batch": 1, "no_wait": True}, {"batch": 1, "expires": 50_000_000}):
                await attacker.nc.publish(next_subject, json.dumps(request).encode(), reply=target)
            publish = names.publish_subject(ATTACKER, pair.destination(ATTACKER))
            await attacker.nc.publish(publish, b"own event", reply=target)
            own_publishes[pair.stream] = own_publishes.get(pair.stream, 0) + 1
            own_events[pair.stream] = own_events.get(pair.stream, 0) + 1
            if pair.dlq:
                await attacker.nc.publish(names.dlq_subject(ATTACKER), b"own dlq", reply=target)
                own_publishes[pair.stream] += 1
    await attacker.nc.flush()
    await asyncio.sleep(0.3)  # the `expires` pulls run out
    # ack_sync-style: a real delivery of the attacker's own, acked with the reply aimed at each target
    for pair in own_pairs:
        sub = await attacker.nc.jetstream().pull_subscribe_bind(
            durable=names.durable_name(ATTACKER), stream=pair.stream
        )
        for _ in range(3):
            try:
                msgs = await sub.fetch(1, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in msgs:
                for target in targets:
                    await attacker.nc.publish(msg.reply, b"+WPI", reply=target)
                await attacker.nc.publish(msg.reply, b"", reply=targets[0])
        await sub.unsubscribe()
    await attacker.nc.flush()
    await asyncio.sleep(QUIET)
    after = await world.snapshot()
    # The attacker's own stores are legitimate (the server refuses some of them: a reply subject that
    # looks like an ack is not allowed from a client). Everything stored since is its own event, and
    # its peer's durable gained exactly those; everything else is exactly as before.
    expected = dict(before)
    for pair in own_pairs:
        stored = await stored_since(world, pair.stream, before[pair.stream][2])
        own_subjects = {
            names.publish_subject(ATTACKER, pair.destination(ATTACKER)),
            names.dlq_subject(ATTACKER),
        }
        assert all(subject in own_subjects for subject, _ in stored), stored
        assert all(data in (b"own event", b"own dlq") for _, data in stored), stored
        events = sum(1 for subject, _ in stored if not subject.endswith(".dlq"))
        messages, first, last = before[pair.stream]
        expected[pair.stream] = (messages + len(stored), first, last + len(stored))
        peer = f"{pair.stream}/{names.durable_name(pair.destination(ATTACKER))}"
        delivered, floor, ack_pending, redelivered, pending = before[peer]
        expected[peer] = (delivered, floor, ack_pending, redelivered, pending + events)
    assert after == expected
    for app, inbox in world.victim_inbox.items():
        assert not inbox, f"victim {app}'s inbox received {[(m.subject, m.data) for m in inbox]}"
    await attacker.nc.close()


async def test_management_api_is_unreachable(arena):
    world = arena
    before = await world.snapshot()
    attacker = await connect_attacker(world)
    for pair in PAIRS:
        for subject in (
            f"$JS.API.STREAM.DELETE.{pair.stream}",
            f"$JS.API.STREAM.PURGE.{pair.stream}",
            f"$JS.API.STREAM.INFO.{pair.stream}",
            *(f"$JS.API.CONSUMER.DELETE.{pair.stream}.{names.durable_name(a)}" for a in pair.apps),
        ):
            try:
                reply = await attacker.nc.request(subject, b"", timeout=0.3)
                body = json.loads(reply.data) if reply.data else {}
                # only possible without subject permissions: the app's own account has no JetStream
                assert body.get("error", {}).get("code") == 503, body
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                pass
    await assert_untouched(world, before, attacker)
    await attacker.nc.close()


async def test_subscribing_to_everything_sees_nothing_of_others(arena):
    world = arena
    before = await world.snapshot()
    attacker = await connect_attacker(world)
    for subject in (">", "_INBOX.>", "_INBOX_b.>", "_INBOX_ab.>", "_R_.>", "$JS.>", "b.sync.a", "c.sync.ab"):
        await attacker.listen(subject)
    await attacker.nc.flush()
    # the victims work as usual meanwhile: publish, pull, ack
    for pair in PAIRS:
        for app in pair.apps:
            if app == ATTACKER:
                continue
            nc = await nats.connect(world.url, **world.app_options(app), inbox_prefix=names.inbox_prefix(app))
            js = nc.jetstream()
            await js.publish(names.publish_subject(app, pair.destination(app)), VICTIM_PAYLOAD + b"-live")
            sub = await js.pull_subscribe_bind(durable=names.durable_name(app), stream=pair.stream)
            for msg in await sub.fetch(1, timeout=2):
                await msg.nak()
            await nc.close()
    await asyncio.sleep(QUIET)
    leaked = [
        m for m in attacker.received if VICTIM_PAYLOAD in m.data or m.subject.startswith(("b.", "c.", "ab."))
    ]
    assert not leaked, f"the attacker saw {[(m.subject, m.data) for m in leaked]}"
    after = await world.snapshot()
    assert after["streams"] == before["streams"]
    await attacker.nc.close()


# -- leafnode: an app's credential must not open a leafnode connection -------------------------------


def _with_leafnode_listener(config: str, port: int) -> str:
    return config + f'\nleafnodes {{ listen: "127.0.0.1:{port}" }}\n'


class RawLeafnode:
    """The attacker speaking the leafnode protocol itself with its app credential (no spoke server,
    whose own client checks would get in the way): INFO with a nonce, CONNECT signed with the NKey,
    then `LMSG <subject> <reply> <size>` frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, seed: str, user_jwt: str | None = None) -> RawLeafnode:
        """With `user_jwt` (operator mode), the CONNECT carries it instead of the NKey."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        info = json.loads((await reader.readline()).decode().split(" ", 1)[1])
        keys = nkeys.from_seed(seed.encode())
        signature = base64.urlsafe_b64encode(keys.sign(info["nonce"].encode())).decode().rstrip("=")
        identity = {"jwt": user_jwt} if user_jwt else {"nkey": keys.public_key.decode()}
        connect = {**identity, "sig": signature, "name": "attacker-leaf", "headers": True}
        writer.write(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        await writer.drain()
        return cls(reader, writer)

    async def accepted(self, within: float = 2.0) -> bool:
        """True once the hub answers the PING; False when it closes the connection (or says -ERR)."""
        try:
            while True:
                line = await asyncio.wait_for(self.reader.readline(), timeout=within)
                if not line or line.startswith(b"-ERR"):
                    return False
                if line.startswith(b"PONG"):
                    return True
                if line.startswith(b"PING"):
                    self.writer.write(b"PONG\r\n")
        except (TimeoutError, ConnectionError):
            return False

    def publish(self, subject: str, payload: bytes, reply: str) -> None:
        self.writer.write(f"LMSG {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        self.writer.close()


async def _leafnode_ack_attack(world: World, leaf_port: int) -> bool:
    """A leafnode connection with the attacker's seed aims replies at the victims' in-flight ack
    subjects (on a workqueue stream an ack deletes the message). Over a leafnode the server does not
    refuse a `$JS.ACK` reply subject as it does for a client, and a `$JS.ACK` reply crosses a service
    import without being rewritten (nats-server server/client.go, processServiceImport), so the empty
    404 status answering a pull on the attacker's own empty durable would land on the victim's ack
    subject in the JetStream account. Returns whether the hub accepted the leafnode connection."""
    leaf = await RawLeafnode.connect(leaf_port, world.seeds[ATTACKER], world.user_jwts.get(ATTACKER))
    accepted = await leaf.accepted()
    own = PAIRS[0]
    no_wait = json.dumps({"batch": 1, "no_wait": True}).encode()
    with contextlib.suppress(ConnectionError):
        for subject in in_flight_acks(world):
            leaf.publish(names.msg_next_subject(own.stream, names.durable_name(ATTACKER)), no_wait, subject)
            leaf.publish(names.publish_subject(ATTACKER, own.destination(ATTACKER)), b"x", subject)
            leaf.publish(subject, b"", f"{names.inbox_prefix(ATTACKER)}.x")
        await leaf.close()
    await asyncio.sleep(QUIET)
    return accepted


async def leafnode_world(
    make_server: Callable[..., LocalNatsServer], edit: Callable[[str], str] = lambda conf: conf
) -> tuple[World, int]:
    """The three pairs on a server that also listens for leafnodes (its config passed through `edit`)."""
    seeds = {app: new_user_keypair()[0] for pair in PAIRS for app in pair.apps}
    leaf_port = free_port()
    server = make_server(_with_leafnode_listener(edit(pairs_server_config(PAIRS, seeds)), leaf_port))
    for pair in PAIRS:
        await provision(server.url, pair)
    world = World(server, seeds)
    await _seed_victims(world)
    return world, leaf_port


async def test_app_credential_cannot_open_a_leafnode(make_server):
    world, leaf_port = await leafnode_world(make_server)
    server = world.server
    before = await world.snapshot()
    try:
        assert not await _leafnode_ack_attack(world, leaf_port), "the hub accepted the app's leafnode"
        after = await world.snapshot()
        assert after == before, "a leafnode with the app's credential reached the victims' consumers"
        log = (server.store_dir / "nats-server.log").read_text()
        assert re.search(r"Leafnode connection closed: Authentication Failure", log), log[-2000:]
    finally:
        for nc in world.victim_conns:
            await nc.close()


async def test_control_without_connection_type_restriction_the_leafnode_attack_works(make_server):
    """Proves the leafnode test can fail: the attack is real once `allowed_connection_types` is gone
    and the app account's `max_leafnodes: 0` is lifted (either wall alone refuses the leafnode)."""
    world, leaf_port = await leafnode_world(
        make_server,
        lambda conf: conf.replace('allowed_connection_types: ["STANDARD"]', "").replace(
            "max_leafnodes: 0", "max_leafnodes: -1"
        ),
    )
    before = await world.snapshot()
    try:
        assert await _leafnode_ack_attack(world, leaf_port), "the hub refused the leafnode anyway"
        after = await world.snapshot()
        acked_away = [
            f"{stream}/{durable}"
            for stream, durable in VICTIM_DURABLES
            if after[f"{stream}/{durable}"][2] < before[f"{stream}/{durable}"][2]  # num_ack_pending
        ]
        assert acked_away, "without the connection-type restriction the leafnode attack should have worked"
        assert any(after[p.stream][0] < before[p.stream][0] for p in PAIRS), (
            "no workqueue message was deleted"
        )
    finally:
        for nc in world.victim_conns:
            await nc.close()


async def test_jwt_mode_app_user_cannot_open_a_leafnode(make_server, tmp_path_factory):
    """The user JWT's `allowed_connection_types: ["STANDARD"]` holds on an operator-mode server: the
    hub refuses the leafnode, and the victims' consumers are untouched."""
    leaf_port = free_port()
    world = await build_jwt_world(
        make_server, tmp_path_factory.mktemp("resolver"), _with_leafnode_listener("", leaf_port)
    )
    before = await world.snapshot()
    try:
        assert not await _leafnode_ack_attack(world, leaf_port), "the hub accepted the app's leafnode"
        assert await world.snapshot() == before
        log = (world.server.store_dir / "nats-server.log").read_text()
        assert re.search(r"Leafnode connection closed: Authentication Failure", log), log[-2000:]
        # control: the same CONNECT with a user JWT of that account without the restriction, the
        # account's leafnode limit (0) lifted, is accepted
        assert world.operator is not None
        lifted = jc.decode(world.account_jwts[ATTACKER])
        assert lifted["nats"]["limits"]["leaf"] == 0
        lifted["nats"]["limits"]["leaf"] = -1
        await world.operator.push_account(world.url, lifted)
        issued_seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
        account_claims = jc.decode(world.user_jwts[ATTACKER])
        unrestricted = account_claims | {"sub": jc.public_key(issued_seed)}
        unrestricted["nats"] = {
            k: v for k, v in account_claims["nats"].items() if k != "allowed_connection_types"
        }
        assert unrestricted["iss"] != unrestricted["nats"]["issuer_account"]
        signer = world.signing_seeds[ATTACKER]
        control = await RawLeafnode.connect(leaf_port, issued_seed, jc.encode(unrestricted, signer))
        assert await control.accepted(), "the control leafnode was refused: the check above proves nothing"
        await control.close()
    finally:
        for nc in world.victim_conns:
            await nc.close()


def test_every_victim_durable_is_covered():
    assert {d for _, d in VICTIM_DURABLES} == {"b-workers", "ab-workers", "c-workers"}
    assert isinstance(PAIRS[0], Pair)
