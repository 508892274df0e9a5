"""A deployment made from `jsb-infra render`'s files alone keeps the peer's dead letters.

The whole tree is rendered by the CLI (`accounts.conf` with the apps' NKeys and the deploy user, the
stream and every file under `consumers/`), the server runs that `accounts.conf` as is, and the admin
creates the stream and each rendered consumer from the files, as docs/spec.md says (`nats stream add
--config`, `nats consumer add --config`: the same JSON through the same API). The attacker `a` then acks
every sequence of the stream through its own, legitimately imported ack subject. With the rendered
DLQ keeper the dead letters of `b` stay; the control leaves the keeper's file out (what a deployment
from an older render had) and the same acks delete them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest
import yaml
from conftest import ADMIN_PASSWORD, ADMIN_USER

from jsb_infra.cli import main
from jsb_infra.core import names
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.spec import parse_pairs
from jsb_infra.nats_admin import JetStreamAdmin

PAIRS = [{"stream": "kept-sync", "apps": ["a", "b"], "consumer": {"backoff": [], "ack_wait": "30s"}}]
ATTACKER, VICTIM = "a", "b"


def render(tmp_path: Path, seeds: dict[str, str]) -> Path:
    config = tmp_path / "pairs.yaml"
    config.write_text(yaml.safe_dump({"pairs": PAIRS}))
    out = tmp_path / "rendered"
    nkeys = [arg for app, seed in seeds.items() for arg in ("--nkey", f"{app}={public_key_of(seed)}")]
    assert main(["render", str(config), "--out", str(out), "--deploy-user", ADMIN_USER, *nkeys]) == 0
    return out


async def create_from_files(url: str, root: Path, skip: set[str]) -> list[str]:
    """The stream and every rendered consumer file (but those in `skip`), created as the admin."""
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        admin = JetStreamAdmin(nc)
        await admin.create_stream(json.loads((root / "stream.json").read_text()))
        created = []
        for path in sorted((root / "consumers").glob("*.json")):
            if path.stem not in skip:
                await admin.create_consumer(root.name, json.loads(path.read_text()))
                created.append(path.stem)
        return created
    finally:
        await nc.close()


async def dead_letters_after_the_ack_attack(url: str, seeds: dict[str, str], stream: str) -> int:
    """Two dead letters of the victim, then the attacker acks every sequence through its own durable
    (after moving its delivery point past them); returns how many dead letters are left."""
    victim = await nats.connect(url, nkeys_seed_str=seeds[VICTIM], inbox_prefix=names.inbox_prefix(VICTIM))
    for _ in range(2):
        await victim.jetstream().publish(names.dlq_subject(VICTIM), b"dead letter of b")
    await victim.jetstream().publish(names.publish_subject(VICTIM, ATTACKER), b"for a")
    await victim.close()
    attacker = await nats.connect(
        url, nkeys_seed_str=seeds[ATTACKER], inbox_prefix=names.inbox_prefix(ATTACKER)
    )
    durable = names.durable_name(ATTACKER)
    sub = await attacker.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
    [own] = await sub.fetch(1, timeout=2)
    await own.ack_sync(timeout=2)
    for seq in range(1, own.metadata.sequence.stream + 1):
        for body in (b"", b"+ACK", b"+TERM"):
            await attacker.publish(f"$JS.ACK.{stream}.{durable}.1.{seq}.1.0.0", body)
    await attacker.flush()
    await asyncio.sleep(0.3)
    await attacker.close()
    admin = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    info = await admin.jetstream().stream_info(stream, subjects_filter=names.dlq_subject(VICTIM))
    await admin.close()
    return (info.state.subjects or {}).get(names.dlq_subject(VICTIM), 0)


@pytest.mark.parametrize("with_keeper", [True, False], ids=["rendered", "control-without-keeper"])
async def test_rendered_keeper_keeps_the_peers_dead_letters(make_server, tmp_path, with_keeper):
    seeds = {app: new_user_keypair()[0] for app in (ATTACKER, VICTIM)}
    out = render(tmp_path, seeds)
    pair = parse_pairs(PAIRS).pairs[0]
    root = out / pair.stream
    assert (root / "consumers" / f"{names.DLQ_KEEPER}.json").is_file()
    server = make_server((out / "accounts.conf").read_text())
    skip = set() if with_keeper else {names.DLQ_KEEPER}
    created = await create_from_files(server.url, root, skip)
    assert (names.DLQ_KEEPER in created) is with_keeper
    left = await dead_letters_after_the_ack_attack(server.url, seeds, pair.stream)
    assert left == (2 if with_keeper else 0), "with the keeper both stay; without it the attack works"
