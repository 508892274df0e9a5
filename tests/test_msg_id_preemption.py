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
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time

import nats
import nkeys
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import PubAck

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core import names
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

PAIR = {
    "stream": "preempt-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 2, "backoff": ["1s", "1s"]},
}
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


def victim_client(pp, ids: MsgIds | None = None) -> BridgeClient:
    client = BridgeClient(
        pp.bridges[VICTIM], Credentials(nkey_seed=pp.seeds[VICTIM]), reconnect_time_wait=0.2
    )
    if ids is not None:
        client._msg_ids = ids  # the control: the former scheme put back
    return client


async def connect_attacker(pp) -> NATS:
    return await nats.connect(
        pp.url, nkeys_seed_str=pp.seeds[ATTACKER], inbox_prefix=names.inbox_prefix(ATTACKER)
    )


def derivable_ids(pp, stream: str, sequences: range, seen: list[str]) -> list[str]:
    """Every id the attacker can build: the former formats, the bare numbers, what it saw, and today's
    scheme keyed by its own credential and by what it knows of billing (its public key)."""
    own = MsgIds.for_credentials(Credentials(nkey_seed=pp.seeds[ATTACKER]))
    public = nkeys.from_seed(pp.seeds[VICTIM].encode()).public_key
    by_public = MsgIds(hmac.digest(b"nkey\0" + public, KEY_CONTEXT, "sha256"))
    ids = list(seen)
    for seq in sequences:
        ids += [
            f"dlq:{stream}:{seq}",
            str(seq),
            own.dead_letter(stream, seq),
            by_public.dead_letter(stream, seq),
        ]
    for event_id in seen:
        ids += [own.event(event_id), by_public.event(event_id)]
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


async def dead_letters(pp) -> list:
    admin = await pp.admin()
    try:
        return [m async for m in JetStreamAdmin(admin).messages(pp.pair.stream, names.dlq_subject(VICTIM))]
    finally:
        await admin.close()


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached within the timeout"
        await asyncio.sleep(0.02)


async def attack_dead_letter(pp, ids: MsgIds | None) -> tuple[int, list]:
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


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_dead_letter_lands_whatever_ids_the_peer_publishes_first(provisioned_pair):
    seq, letters = await attack_dead_letter(provisioned_pair, None)
    assert [m.data for m in letters] == [MALFORMED], "the dead letter was suppressed"
    [letter] = letters
    # stored under its own keyed id at the first attempt, not rescued by the one-off fallback
    assert letter.headers[MSG_ID_HEADER].startswith(DEAD_LETTER_PREFIX)
    assert letter.headers[MSG_ID_HEADER] == victim_client(provisioned_pair).msg_ids.dead_letter(
        provisioned_pair.pair.stream, seq
    )


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_control_former_ids_and_trusted_duplicates_lose_the_dead_letter(provisioned_pair):
    """The former scheme (`dlq:<stream>:<seq>`, a duplicate PubAck taken as stored): the attack works:
    the original is acked and no dead letter of it is in the stream."""
    _, letters = await attack_dead_letter(provisioned_pair, PredictableIds(private=True))
    assert letters == []


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_a_duplicate_of_an_id_others_can_write_is_not_taken_as_stored(provisioned_pair):
    """The duplicate handling on its own: with the former, predictable ids the attacker's copy takes the
    id, the PubAck says duplicate, and the dead letter goes out again under a one-off id."""
    _, letters = await attack_dead_letter(provisioned_pair, PredictableIds(private=False))
    assert [m.data for m in letters] == [MALFORMED]
    assert letters[0].headers[MSG_ID_HEADER].startswith(ONE_OFF_PREFIX)


async def attack_events(pp, ids: MsgIds | None) -> list[PubAck | BaseException]:
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


async def delivered_event_ids(pp) -> list[str]:
    admin = await pp.admin()
    try:
        subject = names.publish_subject(VICTIM, ATTACKER)
        return [
            decode(m.data).event_id async for m in JetStreamAdmin(admin).messages(pp.pair.stream, subject)
        ]
    finally:
        await admin.close()


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_events_land_whatever_ids_the_peer_publishes_first(provisioned_pair):
    acks = await attack_events(provisioned_pair, None)
    assert all(isinstance(a, PubAck) and not a.duplicate for a in acks), acks
    assert await delivered_event_ids(provisioned_pair) == ["invoice-1", "invoice-2", "invoice-3"]


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_control_event_ids_as_msg_ids_lose_the_events(provisioned_pair):
    acks = await attack_events(provisioned_pair, PredictableIds(private=True))
    assert all(isinstance(a, PubAck) and a.duplicate for a in acks), acks
    assert await delivered_event_ids(provisioned_pair) == []


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


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_expected_last_subject_sequence_names_the_peers_last_sequence(provisioned_pair):
    """Measured, not closed (docs/permissions.md): a publish to the app's own subject with
    `Nats-Expected-Last-Subject-Sequence-Subject: <peer subject>` is refused, and the refusal names that
    subject's last sequence. No subject permission or stream setting filters a header. Within the
    pair's stream only: the subject of another stream is not seen."""
    pp = provisioned_pair
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


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
@pytest.mark.parametrize("scheme", ["hashed", "control-former"])
async def test_dlq_replay_lands_whatever_ids_the_peer_publishes_first(provisioned_pair, monkeypatch, scheme):
    """`jsb-infra dlq replay` republishes a dead letter of billing to orders.sync.billing: a subject
    orders publishes to, in the stream whose dedupe window orders shares. orders pre-publishes every
    replay id it can build; the replay is still stored. Control: the former `replay:<stream>:<seq>`
    comes back duplicate, and the dead letter is removed without its event being replayed."""
    pp = provisioned_pair
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
