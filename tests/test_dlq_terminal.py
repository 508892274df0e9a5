"""What the peer app writes cannot drive the operator's terminal through `jsb-infra dlq`.

orders publishes to billing a JSON body that is not a valid envelope, its `event_type` and `event_id`
carrying terminal escape sequences (a window-title rewrite, a screen clear), a forged line and a bidi
override; billing's runtime dead-letters it as is. The operator lists and shows billing's dead
letters, and replays (dry run) and purges them, each naming the event: every such character is printed
as an escape (`\\x1b`), never raw. The controls print the same letters with the escaping taken out and
find the raw sequences.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata

import nats
import pytest
from test_dlq_status import cli
from test_msg_id_preemption import wait_for

from jsb_infra.ops import dlq
from jsb_infra.runtime import BridgeClient

PAIR = {"stream": "term-sync", "apps": ["orders", "billing"]}
HOSTILE = "\x1b]0;owned\x07\x1b[2J\n      1  2099-01-01 forged line\u202e"


def raw_controls(text: str) -> set[str]:
    """The control and format characters in `text`, other than the line breaks of the listing itself."""
    return {ch for line in text.splitlines() for ch in line if unicodedata.category(ch) in ("Cc", "Cf")}


async def dead_letter_the_hostile_body(open_pair) -> None:
    peer = await nats.connect(open_pair.url)
    body = json.dumps({"event_type": HOSTILE, "event_id": HOSTILE, "payload": HOSTILE}).encode()
    await peer.jetstream().publish("orders.sync.billing", body)  # no producer etc.: malformed
    await peer.close()
    async with BridgeClient(open_pair.bridges["billing"]) as billing:

        async def handler(event, delivery) -> None:
            raise AssertionError("a malformed body never reaches the handler")

        consumer = billing.consumer(handler, fetch_timeout=0.2)
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.stats.dead_lettered == 1)
        task.cancel()


async def listings(url: str) -> str:
    where = ("--stream", PAIR["stream"], "--app", "billing")
    code, listed, _ = await cli(url, "dlq", "list", *where)
    assert code == 0
    seq = json.loads((await cli(url, "dlq", "list", *where, "--json"))[1])[0]["seq"]
    code, shown, _ = await cli(url, "dlq", "show", *where, "--seq", str(seq))
    assert code == 0
    return listed + shown


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_dlq_list_and_show_print_the_peers_control_characters_escaped(open_pair, monkeypatch):
    await dead_letter_the_hostile_body(open_pair)
    text = await listings(open_pair.url)
    assert raw_controls(text) == set(), sorted(raw_controls(text))
    assert "\\x1b]0;owned\\x07" in text and "\\u202e" in text
    assert "\n      1  2099-01-01 forged line" not in text
    # control: the same letters printed raw
    monkeypatch.setattr(dlq, "shown", lambda text: text)
    raw = await listings(open_pair.url)
    assert {"\x1b", "\x07", "\u202e"} <= raw_controls(raw)


async def operations(url: str) -> str:
    """`replay --dry-run`, `purge --dry-run` and `purge` of every dead letter: each names the event."""
    where = ("--stream", PAIR["stream"], "--app", "billing", "--all")
    text = ""
    for argv in (("replay", "--dry-run"), ("purge", "--dry-run"), ("purge",)):
        code, out, _ = await cli(url, "dlq", *argv, *where)
        assert code == 0, (argv, out)
        text += out
    assert "would replay seq" in text and "would remove seq" in text and "removed seq" in text
    return text


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_dlq_replay_and_purge_print_the_peers_event_id_escaped(open_pair, monkeypatch):
    await dead_letter_the_hostile_body(open_pair)
    text = await operations(open_pair.url)
    assert raw_controls(text) == set(), sorted(raw_controls(text))
    assert text.count("(event \\x1b]0;owned\\x07\\x1b[2J\\n      1  2099-01-01 forged line\\u202e") == 3
    assert "\n      1  2099-01-01 forged line" not in text
    # control: a new dead letter, the same commands with the escaping taken out
    await dead_letter_the_hostile_body(open_pair)
    monkeypatch.setattr(dlq, "shown", lambda text: text)
    raw = await operations(open_pair.url)
    assert {"\x1b", "\x07", "\u202e"} <= raw_controls(raw)
