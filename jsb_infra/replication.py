"""Changes of replicas and placement, applied the way the server accepts them and waited for until real.

A stream update that changes `num_replicas` or `placement` returns at once; the server then adds or
removes peers (or moves the stream to other servers) in the background, and the stream's consumers
that follow its replica count are scaled after it. Measured on a 3-node cluster: a 1 -> 3 scale-up
reports success 10-11 s before the new stream peers are current, the consumers' a second or more
later. So after such a change the provider polls `STREAM.INFO` / `CONSUMER.INFO` until the leader and
exactly R-1 current followers are reported and no reconfiguration (`cluster.desired`) is pending.
A create waits for a majority only: the server creates an R3 stream while one node is down (its
replica catches up when the node returns), and the new stream works as soon as a majority is current.

The server refuses to move and scale a stream in one update (nats-server server/jetstream_cluster.go,
`jsClusteredStreamUpdateRequest`: err_code 10123); `update_stream` does that as two updates, each
waited for. Measured on a 3-node cluster: moving an R1 stream and its consumer to another server
takes about 2.5 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jsb_infra.nats_admin import JetStreamAdmin

POLL_INTERVAL = 0.25
PLACEMENT_FIELDS = ("num_replicas", "placement")


class NotSettled(RuntimeError):
    """The cluster did not report the new peers current within the settle timeout."""


def settle_problem(info: dict[str, Any], replicas: int, quorum_only: bool = False) -> str | None:
    """Why `info` (a STREAM.INFO or CONSUMER.INFO answer) does not yet show `replicas` current peers;
    None when it does. A single server (no cluster section) is settled at one replica.

    With `quorum_only` a majority of current peers is enough (leader included): what a new object
    needs to work while a node is down, which the server allows (it places the offline node's replica
    and lets it catch up when the node returns)."""
    cluster = info.get("cluster") or {}
    if cluster.get("desired"):
        return "a reconfiguration (scale or move) is still in progress"
    followers = cluster.get("replicas") or []
    if replicas > 1 and not cluster.get("leader"):
        return "no leader"
    if len(followers) != replicas - 1:
        return f"{len(followers) + (1 if cluster.get('leader') else 0)} of {replicas} peers"
    behind = sorted(str(r.get("name")) for r in followers if not r.get("current") or r.get("offline"))
    needed_followers = replicas // 2 if quorum_only else replicas - 1
    if len(followers) - len(behind) < needed_followers:
        return f"peer(s) {', '.join(behind)} not current yet"
    return None


def consumer_replicas(consumer_info: dict[str, Any], stream_replicas: int) -> int:
    """The replicas the server runs a durable with: its own count if set and not above the stream's,
    else the stream's (nats-server server/consumer.go `ConsumerConfig.replicas`)."""
    own = int(consumer_info.get("config", {}).get("num_replicas") or 0)
    return own if 0 < own <= stream_replicas else stream_replicas


def placement_changes(live: dict[str, Any], desired: dict[str, Any]) -> set[str]:
    """Which of num_replicas / placement differ between a live and a desired stream config."""
    return {f for f in PLACEMENT_FIELDS if (live.get(f) or None) != (desired.get(f) or None)}


async def update_stream(
    js: JetStreamAdmin, live: dict[str, Any], config: dict[str, Any], settle_timeout: float
) -> None:
    """Send the whole `config`; when replicas and/or placement change, wait for the stream and all its
    consumers to settle. A change of both goes as two updates, each waited for: when scaling up, the
    move first (the new placement may be what offers enough servers), when scaling down, the scale
    first (the old placement surely holds fewer replicas)."""
    changed = placement_changes(live, config)
    if changed == set(PLACEMENT_FIELDS):
        await js.update_stream(first_step(live, config))
        await wait_for_stream(js, config["name"], settle_timeout)
    await js.update_stream(config)
    if changed:
        await wait_for_stream(js, config["name"], settle_timeout)


def first_step(live: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The intermediate config of a change of both replicas and placement (see `update_stream`)."""
    step = {k: v for k, v in config.items() if k not in PLACEMENT_FIELDS}
    scaling_up = int(config.get("num_replicas") or 1) > int(live.get("num_replicas") or 1)
    source = (config, live) if scaling_up else (live, config)  # (placement from, replicas from)
    if source[0].get("placement"):
        step["placement"] = source[0]["placement"]
    step["num_replicas"] = source[1].get("num_replicas") or 1
    return step


async def wait_for_stream(
    js: JetStreamAdmin, stream: str, timeout: float, consumers: bool = True, quorum_only: bool = False
) -> None:
    """Until `stream` (and, with `consumers`, every consumer on it) reports all its peers current (a
    majority with `quorum_only`, enough for a new stream while a node is down)."""
    deadline = time.monotonic() + timeout
    info = await _settled(js, stream, None, deadline, timeout, quorum_only=quorum_only)
    if not consumers:
        return
    replicas = int(info["config"].get("num_replicas") or 1)
    for name in await js.consumer_names(stream):
        await _settled(js, stream, name, deadline, timeout, replicas, quorum_only)


async def wait_for_consumer(
    js: JetStreamAdmin, stream: str, durable: str, timeout: float, quorum_only: bool = False
) -> None:
    """Until the consumer reports all its peers current (its replica count follows the stream's)."""
    deadline = time.monotonic() + timeout
    stream_info = await js.stream_info(stream)
    replicas = int((stream_info or {}).get("config", {}).get("num_replicas") or 1)
    await _settled(js, stream, durable, deadline, timeout, replicas, quorum_only)


async def _settled(
    js: JetStreamAdmin,
    stream: str,
    consumer: str | None,
    deadline: float,
    timeout: float,
    stream_replicas: int = 1,
    quorum_only: bool = False,
) -> dict[str, Any]:
    what = f"stream {stream!r}" if consumer is None else f"consumer {stream}/{consumer}"
    while True:
        info = await (js.stream_info(stream) if consumer is None else js.consumer_info(stream, consumer))
        if info is None:
            raise NotSettled(f"{what} disappeared while waiting for its replicas")
        if consumer is None:
            replicas = int(info["config"].get("num_replicas") or 1)
        else:
            replicas = consumer_replicas(info, stream_replicas)
        problem = settle_problem(info, replicas, quorum_only)
        if problem is None:
            return info
        if time.monotonic() > deadline:
            raise NotSettled(
                f"{what}: the server accepted the change, but after {timeout:g}s its replicas are not all "
                f"current ({problem}). The cluster goes on converging by itself; re-running is safe "
                "(raise jsb:settleTimeout to wait longer)"
            )
        await asyncio.sleep(POLL_INTERVAL)
