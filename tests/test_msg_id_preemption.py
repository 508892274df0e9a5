"""The peer cannot pre-empt an app's `Nats-Msg-Id`s: its dead letters and its events still land.

Both apps of a pair publish into one stream and share its dedupe window: a publish whose id is already
there is dropped and answered `duplicate`. The attacker is app `orders` with its real rendered
permissions and its own NKey; the victim is `billing` on the runtime client. The attacker publishes
every id it can observe or derive to its own DLQ subject first (the former formats `dlq:<stream>:<seq>`
and the bare event id, every sequence it has seen and the next ones, every header and event id of the
messages it received from billing, and the new scheme computed with its own key and with billing's
public key), then billing dead-letters a malformed message of orders through the runtime's own path,
and publishes events with ids orders could guess. Controls put the former scheme back and show the
same attack drops the dead letter and the event. The operator's `dlq replay` (to a subject orders
publishes to) gets the same attack and control. Last, the `Nats-Expected-Last-Subject-Sequence` leak,
measured and pinned (it cannot be closed by permissions or stream settings).

Each attack runs in both modes, on the layout as deployed: config mode (the rendered `accounts.conf`
loaded as is, apps with NKeys) and JWT mode (an operator-mode server with a full resolver, the accounts
and users issued and pushed by the JWT-mode providers, apps connecting with their `.creds`; there the
attacker also knows billing's user and account public keys and JWTs, and tries ids keyed by each).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, pair_server_config, provision
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.js.api import PubAck
from operator_support import Operator, issue_layout
from reliability_support import wait_for

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.ops import dlq
from jsb_infra.runtime import BridgeClient, Credentials
from jsb_infra.runtime.config import TlsOptions
from jsb_infra.runtime.consumer import DLQ_STREAM_SEQUENCE
from jsb_infra.runtime.envelope import MSG_ID_HEADER, decode
from jsb_infra.runtime.msg_ids import (
    DEAD_LETTER_PREFIX,
    EVENT_PREFIX,
    KEY_CONTEXT,
    ONE_OFF_PREFIX,
    MsgIds,
    credential_secret,
)

PAIR = parse_pairs(
    [
        {
            "stream": "preempt-sync",
            "apps": ["orders", "billing"],
            "consumer": {"max_deliver": 2, "backoff": ["1s", "1s"]},
        }
    ]
).pairs[0]
ATTACKER, VICTIM = "orders", "billing"
MALFORMED = b"not an envelope"
LOOKAHEAD = 40  # sequences past the last one seen, pre-empted as well


class PredictableIds(MsgIds):
    """The former scheme: an event's id is its event id, a dead letter's `dlq:<stream>:<seq>`.

    `private=True` also puts back the former duplicate handling (a duplicate DLQ PubAck is success);
    `private=False` keeps today's (a duplicate of an id others can write is not trusted)."""

    def __init__(self, private: bool):
        super().__init__(bytes(32), private=private)

    def event(self, event_id: str) -> str:
        return event_id

    def dead_letter(self, stream: str, sequence: int) -> str:
        return f"dlq:{stream}:{sequence}"


@dataclass
class Deployed:
    """The pair as deployed in one mode: each app's credentials as the deployment hands them to it, how
    the admin connects, and what of billing's identity is public (what the attacker may know)."""

    server: LocalNatsServer
    pair: Pair
    credentials: dict[str, Credentials]
    admin_options: dict[str, Any]
    public: list[bytes]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def bridges(self) -> dict[str, BridgeOutputs]:
        return {app: bridge_outputs(self.pair, app, [self.url]) for app in self.pair.apps}

    async def admin(self) -> NATS:
        return await nats.connect(self.url, **self.admin_options)


def config_mode(make_server: Callable[..., LocalNatsServer]) -> Deployed:
    """The rendered `accounts.conf` loaded as is; each app an NKey user (public: its public key)."""
    seeds = {app: new_user_keypair()[0] for app in PAIR.apps}
    return Deployed(
        make_server(pair_server_config(PAIR, seeds)),
        PAIR,
        {app: Credentials(nkey_seed=seed) for app, seed in seeds.items()},
        {"user": ADMIN_USER, "password": ADMIN_PASSWORD},
        [public_key_of(seeds[VICTIM]).encode()],
    )


async def jwt_mode(make_server: Callable[..., LocalNatsServer], resolver_dir: Path) -> Deployed:
    """An operator-mode server with a full resolver; the JWT-mode providers issue and push the layout;
    each app gets its `.creds` (public: its user and account keys and JWTs)."""
    operator = Operator()
    server = make_server(operator.server_config(resolver_dir))
    issued = await asyncio.to_thread(issue_layout, server.url, operator, [PAIR])
    victim = issued.apps[VICTIM]
    return Deployed(
        server,
        PAIR,
        {app: Credentials(creds=issued.creds(app)) for app in PAIR.apps},
        {"user_credentials": RawCredentials(operator.deploy_creds)},
        [victim[key].encode() for key in ("user_key", "account_key", "user_jwt", "jwt")],
    )


@pytest.fixture(params=["config", "jwt"])
async def deployed(
    request: pytest.FixtureRequest,
    make_server: Callable[..., LocalNatsServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Deployed:
    """The pair with its stream and consumers, in config mode or JWT mode."""
    if request.param == "jwt":
        world = await jwt_mode(make_server, tmp_path_factory.mktemp("resolver"))
    else:
        world = config_mode(make_server)
    await provision(world.url, PAIR, world.admin_options)
    return world


def victim_client(pp: Deployed, ids: MsgIds | None = None) -> BridgeClient:
    client = BridgeClient(pp.bridges[VICTIM], pp.credentials[VICTIM], reconnect_time_wait=0.2)
    if ids is not None:
        client._msg_ids = ids  # the control: the former scheme put back
    return client


async def connect_attacker(pp: Deployed) -> NATS:
    return await nats.connect(
        pp.url, **pp.credentials[ATTACKER].connect_options(), inbox_prefix=names.inbox_prefix(ATTACKER)
    )


def derivable_ids(pp: Deployed, stream: str, sequences: range, seen: list[str]) -> list[str]:
    """Every id the attacker can build: the former formats, the bare numbers, what it saw, and today's
    scheme keyed by its own credential and by whatever it knows of billing (public keys, JWTs), taken
    as the secret bare and the way a seed is."""
    own = MsgIds.for_credentials(pp.credentials[ATTACKER])
    by_public = [
        MsgIds(hmac.digest(secret, KEY_CONTEXT, "sha256"))
        for value in pp.public
        for secret in (value, b"nkey\0" + value)
    ]
    guesses = [own, *by_public]
    ids = list(seen)
    for seq in sequences:
        ids += [f"dlq:{stream}:{seq}", str(seq), *(g.dead_letter(stream, seq) for g in guesses)]
    for event_id in seen:
        ids += [g.event(event_id) for g in guesses]
    return list(dict.fromkeys(ids))


async def pre_publish(attacker: NATS, ids: list[str]) -> None:
    """Put every id into the dedupe window, on the attacker's own DLQ subject (an id already there,
    such as a header it observed, is answered duplicate: it holds the window all the same)."""
    js = attacker.jetstream()
    for msg_id in ids:
        await js.publish(names.dlq_subject(ATTACKER), b"pre-empted", headers={MSG_ID_HEADER: msg_id})


async def observe(attacker: NATS, stream: str) -> list[str]:
    """Every header value and event id of what billing sent the attacker (through its own durable)."""
    sub = await attacker.jetstream().pull_subscribe_bind(durable=names.durable_name(ATTACKER), stream=stream)
    seen: list[str] = []
    for msg in await sub.fetch(10, timeout=2):
        seen += list((msg.headers or {}).values())
        seen.append(decode(msg.data).event_id)
        await msg.ack_sync(timeout=2)
    await sub.unsubscribe()
    assert seen, "the attacker received nothing to observe"
    return seen


async def dead_letters(pp: Deployed) -> list:
    admin = await pp.admin()
    try:
        return [m async for m in JetStreamAdmin(admin).messages(pp.pair.stream, names.dlq_subject(VICTIM))]
    finally:
        await admin.close()


async def attack_dead_letter(pp: Deployed, ids: MsgIds | None) -> tuple[int, list]:
    """Run the whole attack against billing's dead-letter path; returns (the malformed message's seq,
    billing's dead letters for it)."""
    stream = pp.pair.stream
    billing = await victim_client(pp, ids).connect()
    attacker = await connect_attacker(pp)
    try:
        for n in range(2):  # events the attacker receives: their headers and ids are what it observes
            await billing.publish("invoice.created", "invoice", n, {"n": n})
        seen = await observe(attacker, stream)
        ack = await attacker.jetstream().publish(names.publish_subject(ATTACKER, VICTIM), MALFORMED)
        await pre_publish(attacker, derivable_ids(pp, stream, range(1, ack.seq + LOOKAHEAD), seen))
        consumer = billing.consumer(None, fetch_timeout=0.5)
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.stats.dead_lettered + consumer.stats.acked >= 1)
        await consumer.stop()
        await task
    finally:
        await attacker.close()
        await billing.close()
    letters = [m for m in await dead_letters(pp) if m.headers.get(DLQ_STREAM_SEQUENCE) == str(ack.seq)]
    admin = await pp.admin()
    info = await admin.jetstream().consumer_info(stream, names.durable_name(VICTIM))
    await admin.close()
    assert info.num_ack_pending == 0 and info.num_pending == 0  # the original was answered (acked)
    return ack.seq, letters


async def test_dead_letter_lands_whatever_ids_the_peer_publishes_first(deployed):
    seq, letters = await attack_dead_letter(deployed, None)
    assert [m.data for m in letters] == [MALFORMED], "the dead letter was suppressed"
    [letter] = letters
    # stored under its own keyed id at the first attempt, not rescued by the one-off fallback
    assert letter.headers[MSG_ID_HEADER].startswith(DEAD_LETTER_PREFIX)
    assert letter.headers[MSG_ID_HEADER] == victim_client(deployed).msg_ids.dead_letter(
        deployed.pair.stream, seq
    )


async def test_control_former_ids_and_trusted_duplicates_lose_the_dead_letter(deployed):
    """The former scheme (`dlq:<stream>:<seq>`, a duplicate PubAck taken as stored): the attack works:
    the original is acked and no dead letter of it is in the stream."""
    _, letters = await attack_dead_letter(deployed, PredictableIds(private=True))
    assert letters == []


async def test_a_duplicate_of_an_id_others_can_write_is_not_taken_as_stored(deployed):
    """The duplicate handling on its own: with the former, predictable ids the attacker's copy takes the
    id, the PubAck says duplicate, and the dead letter goes out again under a one-off id."""
    _, letters = await attack_dead_letter(deployed, PredictableIds(private=False))
    assert [m.data for m in letters] == [MALFORMED]
    assert letters[0].headers[MSG_ID_HEADER].startswith(ONE_OFF_PREFIX)


async def attack_events(pp: Deployed, ids: MsgIds | None) -> list[PubAck | BaseException]:
    """The attacker pre-publishes the ids of billing's next events (guessable event ids); billing then
    publishes them, one alone and two in a batch (the outbox relay's path)."""
    stream = pp.pair.stream
    billing = await victim_client(pp, ids).connect()
    attacker = await connect_attacker(pp)
    try:
        await billing.publish("invoice.created", "invoice", 0, None, event_id="invoice-0")
        seen = await observe(attacker, stream)
        guessed = [f"invoice-{n}" for n in range(1, 4)]
        await pre_publish(attacker, derivable_ids(pp, stream, range(0), seen + guessed))
        single = await billing.publish("invoice.created", "invoice", 1, None, event_id="invoice-1")
        batch = await billing.publish_batch(
            [billing.event("invoice.created", "invoice", n, None, event_id=f"invoice-{n}") for n in (2, 3)]
        )
    finally:
        await attacker.close()
        await billing.close()
    return [single, *batch]


async def delivered_event_ids(pp: Deployed) -> list[str]:
    admin = await pp.admin()
    try:
        subject = names.publish_subject(VICTIM, ATTACKER)
        return [
            decode(m.data).event_id async for m in JetStreamAdmin(admin).messages(pp.pair.stream, subject)
        ]
    finally:
        await admin.close()


async def test_events_land_whatever_ids_the_peer_publishes_first(deployed):
    acks = await attack_events(deployed, None)
    assert all(isinstance(a, PubAck) and not a.duplicate for a in acks), acks
    assert await delivered_event_ids(deployed) == ["invoice-1", "invoice-2", "invoice-3"]


async def test_control_event_ids_as_msg_ids_lose_the_events(deployed):
    acks = await attack_events(deployed, PredictableIds(private=True))
    assert all(isinstance(a, PubAck) and a.duplicate for a in acks), acks
    assert await delivered_event_ids(deployed) == []


def test_ids_are_stable_per_app_and_differ_between_apps_and_kinds():
    """Same secret, same ids (another instance of the app dedupes a retry); another app's secret or
    another kind of id, different ids."""
    seed_a, seed_b = (
        nkeys.encode_seed(bytes(range(i, i + 32)), nkeys.PREFIX_BYTE_USER).decode() for i in (0, 1)
    )
    a1 = MsgIds.for_credentials(Credentials(nkey_seed=seed_a))
    a2 = MsgIds.for_credentials(Credentials(nkey_seed=seed_a))
    b = MsgIds.for_credentials(Credentials(nkey_seed=seed_b))
    assert a1.event("e-1") == a2.event("e-1") and a1.dead_letter("s", 7) == a2.dead_letter("s", 7)
    assert a1.event("e-1") != b.event("e-1") and a1.dead_letter("s", 7) != b.dead_letter("s", 7)
    assert a1.dead_letter("s", 7) != a1.dead_letter("s", 8) != a1.dead_letter("t", 7)
    assert a1.event("s\x007")[len(EVENT_PREFIX) :] != a1.dead_letter("s", 7)[len(DEAD_LETTER_PREFIX) :]
    # no credential (an open server): a public key, so retries from any process still dedupe, but the
    # ids are not private (a duplicate dead-letter PubAck is then not taken as our own write)
    assert credential_secret(Credentials()) is None
    anon = MsgIds.for_credentials(Credentials())
    assert not anon.private
    assert anon.event("e-1") == MsgIds.for_credentials(Credentials()).event("e-1") != a1.event("e-1")
    assert MsgIds.one_off() != MsgIds.one_off()
    # headers stay small and ASCII whatever the event id
    assert len(a1.event("é" * 200)) == len(a1.event("x")) == 36 and a1.event("é").isascii()
    # the user/password and token methods key by their secret, not by the public user name
    by_user = MsgIds.for_credentials(Credentials(user="u", password="p1"))
    assert by_user.private and by_user.event("x") != MsgIds.for_credentials(
        Credentials(user="u", password="p2")
    ).event("x")
    assert json.dumps(a1.event("x"))  # a plain string header value


def test_a_client_certificate_key_is_a_secret_too(tmp_path):
    """Mutual TLS mapped to a user: no password or seed, the certificate's private key is the secret."""
    keys = []
    for name in ("one", "two"):
        key = tmp_path / f"{name}.key"
        key.write_bytes(os.urandom(64))
        keys.append(MsgIds.for_credentials(Credentials(tls=TlsOptions(cert_file="c.pem", key_file=str(key)))))
    assert all(ids.private for ids in keys)
    assert keys[0].event("e") != keys[1].event("e") != MsgIds.for_credentials(Credentials()).event("e")


async def last_sequence_probe(attacker: NATS, subject: str) -> str:
    """Publish to the attacker's own DLQ subject, expecting `subject` to have no message yet: the answer
    names the last sequence of `subject` when it has one."""
    reply = await attacker.request(
        names.dlq_subject(ATTACKER),
        b"probe",
        headers={
            "Nats-Expected-Last-Subject-Sequence": "0",
            "Nats-Expected-Last-Subject-Sequence-Subject": subject,
        },
        timeout=2,
    )
    return json.loads(reply.data).get("error", {}).get("description", "stored")


async def test_expected_last_subject_sequence_names_the_peers_last_sequence(deployed):
    """Measured, not closed (docs/permissions.md): a publish to the app's own subject with
    `Nats-Expected-Last-Subject-Sequence-Subject: <peer subject>` is refused, and the refusal names that
    subject's last sequence. No subject permission or stream setting filters a header. Within the
    pair's stream only: the subject of another stream is not seen."""
    pp = deployed
    billing = await victim_client(pp).connect()
    event = await billing.publish("invoice.created", "invoice", 1, None)
    letter = await billing.publish_raw(names.dlq_subject(VICTIM), b"dead", {MSG_ID_HEADER: "x"})
    await billing.close()
    attacker = await connect_attacker(pp)
    try:
        assert await last_sequence_probe(attacker, names.publish_subject(VICTIM, ATTACKER)) == (
            f"wrong last sequence: {event.seq}"
        )
        assert (
            await last_sequence_probe(attacker, names.dlq_subject(VICTIM))
            == f"wrong last sequence: {letter.seq}"
        )
        assert await last_sequence_probe(attacker, ">") == f"wrong last sequence: {letter.seq}"
        assert await last_sequence_probe(attacker, "other.sync.pair") == "stored"
    finally:
        await attacker.close()


def former_replay_id(stream: str, letter: dlq.DeadLetter) -> str:
    return f"replay:{stream}:{letter.seq}"


@pytest.mark.parametrize("scheme", ["hashed", "control-former"])
async def test_dlq_replay_lands_whatever_ids_the_peer_publishes_first(deployed, monkeypatch, scheme):
    """`jsb-infra dlq replay` republishes a dead letter of billing to orders.sync.billing: a subject
    orders publishes to, in the stream whose dedupe window orders shares. orders pre-publishes every
    replay id it can build; the replay is still stored. Control: the former `replay:<stream>:<seq>`
    comes back duplicate, and the dead letter is removed without its event being replayed."""
    pp = deployed
    stream = pp.pair.stream
    if scheme == "control-former":
        monkeypatch.setattr(dlq, "replay_msg_id", former_replay_id)
    _, [stored] = await attack_dead_letter(pp, None)
    attacker = await connect_attacker(pp)
    try:
        letter = dlq.DeadLetter.from_message(stored)
        guesses = [former_replay_id(stream, letter)]  # and what it can hash: all but the secret parts
        for seq in range(1, stored.seq + LOOKAHEAD):
            fake = dlq.DeadLetter(seq, "", "", "", "", "", "", "", "", "", b"")
            guesses += [former_replay_id(stream, fake), dlq.replay_msg_id(stream, fake)]
        await pre_publish(attacker, guesses)
    finally:
        await attacker.close()
    nc = await pp.admin()
    try:
        admin = JetStreamAdmin(nc)
        outcome = await dlq.replay_one(admin, stream, letter)
        assert await admin.get_message(stream, letter.seq) is None  # removed from the DLQ either way
        replayed = [
            m
            async for m in admin.messages(stream, names.publish_subject(ATTACKER, VICTIM))
            if m.data == MALFORMED
        ]
    finally:
        await nc.close()
    if scheme == "hashed":
        assert "stored; removed" in outcome and len(replayed) == 1
    else:
        assert "already stored (duplicate)" in outcome and replayed == []


def test_jwt_mode_creds_key_like_the_nkey_seed_inside_them(tmp_path):
    """JWT mode connects with a `.creds` (text or file); the key comes from the seed inside, so an app
    keeps its ids (and its dedupe of retries) whichever way its credential is handed to it."""
    seed = nkeys.encode_seed(bytes(range(7, 39)), nkeys.PREFIX_BYTE_USER).decode()
    creds = jc.creds_document("eyJ0eXAiOiJKV1QifQ.e30.sig", seed)
    path = tmp_path / "app.creds"
    path.write_text(creds)
    by_seed = MsgIds.for_credentials(Credentials(nkey_seed=seed)).dead_letter("s", 1)
    assert MsgIds.for_credentials(Credentials(creds=creds)).dead_letter("s", 1) == by_seed
    assert MsgIds.for_credentials(Credentials(creds_file=str(path))).dead_letter("s", 1) == by_seed
    path.write_text("not a creds document")
    with pytest.raises(ValueError, match=r"creds: not a \.creds document"):
        MsgIds.for_credentials(Credentials(creds_file=str(path)))
