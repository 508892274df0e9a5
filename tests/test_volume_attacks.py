"""An app floods its own subject, on a real server running the rendered layout as is (config and JWT
mode): no pair can starve another, and inside its pair the flood never evicts the peer's unread
messages or either app's dead letters.

Three pairs (`a-b` with the flooder `a`, `c-d`, `e-f`) with small bounds so the flood is quick; the
server's JetStream store is exactly the declared capacity. Before the flood, `b` has unread events for
`a` and both DLQ subjects of `a-b` hold dead letters. Then `a` publishes to its own subject until the
server refuses, and the test counts what is left and checks that every other pair still publishes and
consumes.

Controls (the same flood, the old settings put back): unbounded streams with discard old fill the
server's store and every other pair's publish fails (starvation); a stream bounded only by `max_msgs`
with discard old (the bound docs/permissions.md used to recommend) evicts the peer's unread events and
the dead letters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV, provision
from nats.aio.client import RawCredentials
from nats.js.errors import APIError
from operator_support import Operator, issue_layout

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.capacity import JetStreamLimits, capacity_report, derived_max_bytes
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.spec import Capacity, Pair, parse_config
from jsb_infra.deploy.providers.base import ProviderError
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin, JetStreamApiError

MSG_SIZE = 1024
PER_SUBJECT = 20
PAYLOAD = b"f" * (MSG_SIZE - 64)  # leaves room for the runtime's headers; what the flooder sends
PEER_UNREAD = 5
DEAD_LETTERS = 3
BOUNDED = {"max_msg_size": MSG_SIZE, "max_msgs_per_subject": PER_SUBJECT}
UNBOUNDED = {"max_msg_size": -1, "max_msgs_per_subject": -1, "max_bytes": -1, "discard": "old"}
MSGS_DISCARD_OLD = {**UNBOUNDED, "max_msgs": 30}  # the old recommendation: a stream-wide count, discard old
CONSUMER = {"backoff": [], "ack_wait": "30s"}
FLOOD_LIMIT = 2000  # attempts; a bounded flood is refused after PER_SUBJECT


def layout(stream_options: dict[str, Any]) -> tuple[list[Pair], Capacity | None]:
    """The three pairs with `stream_options`; bounded ones declare exactly their reservations."""
    raw = [
        {"stream": s, "apps": list(apps), "consumer": CONSUMER, "stream_options": stream_options}
        for s, apps in (("a-b", ("a", "b")), ("c-d", ("c", "d")), ("e-f", ("e", "f")))
    ]
    pairs = parse_config({"pairs": raw}).pairs
    reserved = capacity_report(pairs, None).reserved("file")
    if not reserved:
        return pairs, None
    capacity = Capacity(file=reserved)
    parse_config({"pairs": raw, "capacity": capacity.model_dump()})  # the layout fits, as render checks
    return pairs, capacity


def store_size(capacity: Capacity | None) -> int:
    """The server's store: the declared capacity (a server must have at least that), else 1 MiB."""
    return capacity.file if capacity and capacity.file else 2**20


@dataclass
class Arena:
    url: str
    pairs: list[Pair]
    app_options: dict[str, dict[str, Any]]
    admin_options: dict[str, Any]
    servers: list[LocalNatsServer] = field(default_factory=list)

    async def app(self, app: str) -> nats.NATS:
        return await nats.connect(self.url, **self.app_options[app], inbox_prefix=names.inbox_prefix(app))

    async def admin(self) -> nats.NATS:
        return await nats.connect(self.url, **self.admin_options)

    async def subject_counts(self, stream: str) -> dict[str, int]:
        nc = await self.admin()
        try:
            info = await JetStreamAdmin(nc).stream_info_subjects(stream, ">")
            assert info is not None
            return {k: int(v) for k, v in (info["state"].get("subjects") or {}).items()}
        finally:
            await nc.close()


def config_mode_arena(tmp: Path, stream_options: dict[str, Any]) -> Arena:
    pairs, capacity = layout(stream_options)
    seeds = {app: new_user_keypair()[0] for p in pairs for app in p.apps}
    keys = {app: public_key_of(seed) for app, seed in seeds.items()}
    server = LocalNatsServer(
        store_dir=tmp,
        extra_config=render_accounts_conf(account_layout(pairs, capacity=capacity), keys, DEPLOY),
        env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD},
        max_file_store=store_size(capacity),
    ).start()
    return Arena(
        server.url,
        pairs,
        {app: {"nkeys_seed_str": seed} for app, seed in seeds.items()},
        {"user": ADMIN_USER, "password": ADMIN_PASSWORD},
        [server],
    )


async def jwt_mode_arena(tmp: Path, stream_options: dict[str, Any]) -> Arena:
    pairs, capacity = layout(stream_options)
    operator = Operator()
    server = LocalNatsServer(
        store_dir=tmp / "nats",
        extra_config=operator.server_config(tmp / "resolver"),
        max_file_store=store_size(capacity),
    ).start()
    issued = await asyncio.to_thread(issue_layout, server.url, operator, pairs, capacity=capacity)
    return Arena(
        server.url,
        pairs,
        {app: {"user_credentials": RawCredentials(issued.creds(app))} for app in issued.apps},
        {"user_credentials": RawCredentials(operator.deploy_creds)},
        [server],
    )


async def start(mode: str, tmp: Path, stream_options: dict[str, Any]) -> Arena:
    arena = (
        config_mode_arena(tmp, stream_options)
        if mode == "config"
        else await jwt_mode_arena(tmp, stream_options)
    )
    for pair in arena.pairs:
        await provision(arena.url, pair, arena.admin_options)
    return arena


async def seed_pair(arena: Arena) -> None:
    """`b` sends `a` PEER_UNREAD events; each app of `a-b` dead-letters DEAD_LETTERS messages (as the
    runtime does: a publish to its own DLQ subject through its own import)."""
    for app, subjects in (
        ("b", [names.publish_subject("b", "a")] * PEER_UNREAD + [names.dlq_subject("b")] * DEAD_LETTERS),
        ("a", [names.dlq_subject("a")] * DEAD_LETTERS),
    ):
        nc = await arena.app(app)
        try:
            js = nc.jetstream()
            for i, subject in enumerate(subjects):
                await js.publish(subject, f"{app}-{i}".encode())
        finally:
            await nc.close()


async def flood(arena: Arena) -> tuple[int, int | None]:
    """`a` publishes to its own subject until refused: (messages accepted, the refusal's err_code)."""
    nc = await arena.app("a")
    try:
        js = nc.jetstream()
        for accepted in range(FLOOD_LIMIT):
            try:
                await js.publish(names.publish_subject("a", "b"), PAYLOAD, timeout=5)
            except APIError as err:
                return accepted, err.err_code
        return FLOOD_LIMIT, None
    finally:
        await nc.close()


async def deliver(arena: Arena, stream: str, sender: str, receiver: str) -> str | None:
    """`sender` publishes one event to `receiver`, which fetches and acks it; what failed, or None."""
    nc_s, nc_r = await arena.app(sender), await arena.app(receiver)
    try:
        try:
            await nc_s.jetstream().publish(names.publish_subject(sender, receiver), b"still-here", timeout=3)
        except (APIError, TimeoutError) as err:
            return f"{sender} -> {receiver}: publish refused: {err}"
        sub = await nc_r.jetstream().pull_subscribe_bind(durable=names.durable_name(receiver), stream=stream)
        got = await sub.fetch(1, timeout=3)
        for m in got:
            await m.ack_sync()
        return None if [m.data for m in got] == [b"still-here"] else f"{sender} -> {receiver}: {got}"
    finally:
        await nc_s.close()
        await nc_r.close()


async def round_trip(arena: Arena, pair: Pair) -> list[str]:
    """Each app of `pair` sends the other one event, which is fetched and acked: the failures."""
    failures = []
    for sender in pair.apps:
        failure = await deliver(arena, pair.stream, sender, pair.destination(sender))
        if failure:
            failures.append(failure)
    return failures


@dataclass
class Outcome:
    accepted: int
    refusal: int | None
    counts: dict[str, int]
    other_pairs: list[str]


async def attack(arena: Arena) -> Outcome:
    await seed_pair(arena)
    accepted, refusal = await flood(arena)
    counts = await arena.subject_counts("a-b")
    failures = []
    for pair in arena.pairs[1:]:
        failures += await round_trip(arena, pair)
    return Outcome(accepted, refusal, counts, failures)


Launch = Callable[[str, dict[str, Any]], Awaitable[Arena]]


@pytest.fixture
def launch(tmp_path: Path) -> Any:
    """`await launch(mode, stream_options)`: a provisioned arena, its server stopped at teardown."""
    started: list[Arena] = []

    async def go(mode: str, stream_options: dict[str, Any]) -> Arena:
        arena = await start(mode, tmp_path / f"arena{len(started)}", stream_options)
        started.append(arena)
        return arena

    yield go
    for arena in started:
        for server in arena.servers:
            server.stop()


@pytest.mark.parametrize("mode", ["config", "jwt"])
async def test_a_flood_of_ones_own_subject_is_refused_and_harms_no_one(mode: str, launch: Launch) -> None:
    arena = await launch(mode, BOUNDED)
    outcome = await attack(arena)
    assert outcome.refusal == 10077 and outcome.accepted == PER_SUBJECT, (
        "refused by the subject's own bound (maximum messages per subject exceeded)"
    )
    assert outcome.counts == {
        "a.sync.b": PER_SUBJECT,
        "b.sync.a": PEER_UNREAD,
        "a.sync.dlq": DEAD_LETTERS,
        "b.sync.dlq": DEAD_LETTERS,
    }, "the peer's unread events and both apps' dead letters are all still there"
    assert outcome.other_pairs == [], "every other pair keeps publishing and consuming"
    # inside the flooder's pair the other direction and both DLQs still take messages, and the peer's
    # events arrive whole and in order
    nc_b, nc_a = await arena.app("b"), await arena.app("a")
    try:
        js = nc_b.jetstream()
        await js.publish(names.publish_subject("b", "a"), b"more")
        await js.publish(names.dlq_subject("b"), b"dead")
        with pytest.raises(APIError) as too_big:
            await js.publish(names.publish_subject("b", "a"), b"x" * (MSG_SIZE + 1))
        assert too_big.value.err_code == 10054, "a message over max_msg_size is refused"
        sub = await nc_a.jetstream().pull_subscribe_bind(durable=names.durable_name("a"), stream="a-b")
        got = await sub.fetch(PEER_UNREAD + 1, timeout=3)
        assert [m.data for m in got] == [f"b-{i}".encode() for i in range(PEER_UNREAD)] + [b"more"]
        for m in got:
            await m.ack_sync()
    finally:
        await nc_b.close()
        await nc_a.close()
    counts = await arena.subject_counts("a-b")
    assert (counts.get("b.sync.a", 0), counts["b.sync.dlq"]) == (0, DEAD_LETTERS + 1)


@pytest.mark.parametrize("mode", ["config", "jwt"])
async def test_the_account_requires_and_caps_reservations(mode: str, launch: Launch) -> None:
    """The rendered layout, loaded as is: a stream without max_bytes, or one beyond the declared
    capacity, is refused by the server; the pairs' own streams hold exactly the rendered bounds."""
    arena = await launch(mode, BOUNDED)
    pair = arena.pairs[0]
    nc = await arena.admin()
    try:
        js = JetStreamAdmin(nc)
        base = {"subjects": ["x.>"], "retention": "limits", "storage": "file"}
        with pytest.raises(JetStreamApiError) as unreserved:
            await js.create_stream({"name": "x", **base})
        assert unreserved.value.err_code == 10113, "max_bytes_required: no stream without a reservation"
        with pytest.raises(JetStreamApiError) as beyond:
            await js.create_stream({"name": "x", **base, "max_bytes": 1024})
        assert beyond.value.err_code == 10047, "the capacity is fully reserved by the three pairs"
        assert await js.stream_info("x") is None
        live = (await js.stream_info(pair.stream))["config"]
        expected = derived_max_bytes(pair.stream_options, pair.subjects())
        assert (live["max_bytes"], live["max_msgs_per_subject"], live["max_msg_size"]) == (
            expected,
            PER_SUBJECT,
            MSG_SIZE,
        )
        assert (live["discard"], live.get("discard_new_per_subject")) == ("new", True)
        account = json.loads((await nc.request("$JS.API.INFO", b"", timeout=2)).data)
        assert account["reserved_storage"] == 3 * expected
        assert account["limits"]["max_storage"] == 3 * expected
        assert account["limits"]["max_bytes_required"] is True
    finally:
        await nc.close()


@pytest.mark.parametrize("mode", ["config", "jwt"])
async def test_control_unbounded_streams_let_one_app_starve_every_pair(mode: str, launch: Launch) -> None:
    outcome = await attack(await launch(mode, UNBOUNDED))
    assert outcome.refusal in (10023, 10047), "the flood ran until the server's store was full"
    assert outcome.accepted > PER_SUBJECT
    assert len(outcome.other_pairs) >= 2 and all("publish refused" in f for f in outcome.other_pairs), (
        f"every other pair starves: {outcome.other_pairs}"
    )


async def test_control_discard_old_evicts_the_peers_unread_events_and_dead_letters(launch: Launch) -> None:
    arena = await launch("config", MSGS_DISCARD_OLD)
    await seed_pair(arena)
    nc = await arena.app("a")
    try:
        js = nc.jetstream()
        for _ in range(60):
            await js.publish(names.publish_subject("a", "b"), b"flood")
    finally:
        await nc.close()
    counts = await arena.subject_counts("a-b")
    assert counts == {"a.sync.b": 30}, "the flood evicted the peer's events and every dead letter"


async def js_info(url: str, operator: Operator) -> dict[str, Any] | str:
    nc = await nats.connect(url, user_credentials=RawCredentials(operator.deploy_creds))
    try:
        return dict(json.loads((await nc.request("$JS.API.INFO", b"", timeout=2)).data))
    except nats.errors.NoRespondersError:
        return "no responders: JetStream is off for the account"
    finally:
        await nc.close()


async def test_jwt_a_capacity_beyond_the_servers_store_is_refused_before_the_push(tmp_path: Path) -> None:
    """A server does not enable JetStream for an account whose storage limit exceeds its store
    ("Error configuring jetstream for account ...": no responders, every pair stopped; a server that
    already runs the account logs it and keeps the old limits): the provider refuses such a JWT before
    pushing it. Control: the same JWT pushed anyway to a server that loads the account afterwards."""
    pairs, capacity = layout(BOUNDED)
    assert capacity is not None and capacity.file is not None
    too_big = Capacity(file=capacity.file + 1)

    def operator_server(operator: Operator, name: str) -> LocalNatsServer:
        return LocalNatsServer(
            store_dir=tmp_path / name,
            extra_config=operator.server_config(tmp_path / f"{name}-resolver"),
            max_file_store=capacity.file,
        ).start()

    defended, control = Operator(), Operator()
    servers = [operator_server(defended, "defended"), operator_server(control, "control")]
    try:
        with pytest.raises(ProviderError) as err:
            await asyncio.to_thread(issue_layout, servers[0].url, defended, pairs, capacity=too_big)
        assert f"capacity.file: {capacity.file + 1} bytes is more than server" in str(err.value)
        info = await js_info(servers[0].url, defended)
        assert isinstance(info, dict) and "error" not in info, "JetStream still on for the account"

        claims = jc.reissued_jetstream_account(jc.decode(control.jetstream_jwt), [], set(), None, set())
        claims["nats"]["limits"].update(JetStreamLimits(max_file=too_big.file or 0).claims())
        async with resolver.system_session([servers[1].url], control.system_creds) as nc:
            await resolver.push(nc, jc.encode(claims, control.signing_seed))
        assert await js_info(servers[1].url, control) == "no responders: JetStream is off for the account"
    finally:
        for server in servers:
            server.stop()
