"""The runtime client against raw nats-py, in one run against one local nats-server.

Three workloads, each with the same envelope body (uuid4 event id, UTC timestamp, ~150-byte payload)
and the same `Nats-Msg-Id` header on both sides, so the ratio measures the client's own overhead:
- sequential publish: `await js.publish` vs `await client.publish`
- pipelined publish: `js.publish_async` + `publish_async_completed` vs `client.publish_batch`
- consume+ack: `fetch(100)` + decode + `ack` vs the client's consumer loop with a no-op handler
Each runs in rounds that alternate which side goes first; the best round of each side is reported
(the machine may be shared, so the best round is the least disturbed one). A pipelined publish is
credited only with the publishes that got a PubAck. The client consumer's `stop()`, which lets its last
fetch run out (up to fetch_timeout) rather than drop what it brings, is teardown and is not timed.

    .venv/bin/python benchmarks/runtime.py [--seq N] [--pipe N] [--consume N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.js.api import PubAck

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jsb_infra.local_server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.outputs import bridge_outputs
from jsb_infra.runtime import BridgeClient, Consumer, ConsumerStats, Delivery, Event
from jsb_infra.spec import parse_pairs
from jsb_infra.topology import consumer_configs, stream_config

PAIR = parse_pairs([{"stream": "bench-sync", "apps": ["pub", "sub"]}]).pairs[0]
NOTE = "x" * 130


def payload(i: int) -> dict[str, object]:
    return {"n": i, "note": NOTE}  # ~150 bytes of JSON


def raw_envelope(i: int) -> tuple[bytes, dict[str, str]]:
    """What an app on raw nats-py would send: the same envelope, built the obvious way."""
    event_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "event_id": event_id,
            "schema_version": 1,
            "event_type": "bench.event",
            "producer": "pub",
            "resource_type": "bench",
            "resource_id": str(i),
            "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "trace_id": None,
            "payload": payload(i),
        },
        separators=(",", ":"),
    ).encode()
    return body, {"Nats-Msg-Id": event_id}


async def timed(fn: Callable[[], Awaitable[int | None]], n: int) -> float:
    """Messages per second; a workload that returns a count is credited only with that many (PubAcks)."""
    start = time.perf_counter()
    done = await fn()
    elapsed = time.perf_counter() - start
    if done is not None and done != n:
        print(f"  warning: {fn.__name__}: only {done} of {n} publishes got a PubAck", file=sys.stderr)
    return (n if done is None else done) / elapsed


async def main(args: argparse.Namespace) -> None:
    store = Path(tempfile.mkdtemp(prefix="jsb-bench-"))
    with LocalNatsServer(store_dir=store) as server:
        nc = await nats.connect(server.url)
        admin = JetStreamAdmin(nc)
        await admin.create_stream(stream_config(PAIR))
        for config in consumer_configs(PAIR).values():
            await admin.create_consumer(PAIR.stream, config)
        js = nc.jetstream()
        raw_nc = await nats.connect(server.url)
        raw_js = raw_nc.jetstream(publish_async_max_pending=args.in_flight)
        pub = await BridgeClient(bridge_outputs(PAIR, "pub", [server.url])).connect()
        sub = await BridgeClient(bridge_outputs(PAIR, "sub", [server.url])).connect()
        subject = pub.bridge.publish_subject

        async def purge() -> None:
            await nc.request(f"$JS.API.STREAM.PURGE.{PAIR.stream}", b"", timeout=10)

        async def raw_seq() -> None:
            for i in range(args.seq):
                body, headers = raw_envelope(i)
                await raw_js.publish(subject, body, headers=headers)

        async def client_seq() -> None:
            for i in range(args.seq):
                await pub.publish("bench.event", "bench", i, payload(i))

        async def raw_pipe() -> int:
            futures = []
            for i in range(args.pipe):
                body, headers = raw_envelope(i)
                futures.append(await raw_js.publish_async(subject, body, headers=headers))
            await raw_js.publish_async_completed()
            return sum(1 for f in futures if not f.cancelled() and f.exception() is None)

        async def client_pipe() -> int:
            events = (pub.event("bench.event", "bench", i, payload(i)) for i in range(args.pipe))
            results = await pub.publish_batch(events, max_in_flight=args.in_flight)
            assert len(results) == args.pipe
            return sum(1 for r in results if isinstance(r, PubAck))

        async def prefill() -> None:
            await purge()
            for start in range(0, args.consume, 5000):
                for i in range(start, min(start + 5000, args.consume)):
                    body, headers = raw_envelope(i)
                    await js.publish_async(subject, body, headers=headers)
                await js.publish_async_completed()

        async def raw_consume() -> None:
            psub = await raw_js.pull_subscribe_bind(durable=sub.bridge.durable, stream=PAIR.stream)
            got = 0
            while got < args.consume:
                for msg in await psub.fetch(100, timeout=2):
                    json.loads(msg.data)
                    await msg.ack()
                    got += 1
            await raw_nc.flush()
            await psub.unsubscribe()

        stopping: list[asyncio.Task[None]] = []  # client consumers being stopped, outside the timing

        async def stop(consumer: Consumer, task: asyncio.Task[ConsumerStats]) -> None:
            await consumer.stop()  # lets the last (empty) fetch run out: up to fetch_timeout
            await task

        async def client_consume() -> None:
            got = 0
            done = asyncio.Event()

            async def handle(event: Event, delivery: Delivery) -> None:
                nonlocal got
                got += 1
                if got == args.consume:
                    done.set()

            consumer = sub.consumer(handle, batch=100, fetch_timeout=2)
            task = asyncio.create_task(consumer.run())
            await done.wait()
            await sub.nc.flush()
            stopping.append(asyncio.create_task(stop(consumer, task)))

        workloads = [
            ("sequential publish", args.seq, raw_seq, client_seq, purge),
            ("pipelined publish", args.pipe, raw_pipe, client_pipe, purge),
            ("consume+ack", args.consume, raw_consume, client_consume, prefill),
        ]
        print(f"nats-server {server.url}, file storage; best of {args.rounds} alternating rounds")
        print(f"{'workload':<20}{'msgs':>8}{'raw msg/s':>12}{'client msg/s':>14}{'ratio':>8}")
        rates: dict[str, tuple[float, float]] = {}
        for name, n, raw, client, before in workloads:
            best_raw = best_client = 0.0
            for round_no in range(args.rounds):
                for side in ("raw", "client") if round_no % 2 == 0 else ("client", "raw"):
                    while stopping:  # no consumer may still be pulling when the next round starts
                        await stopping.pop()
                    await before()
                    if side == "raw":
                        best_raw = max(best_raw, await timed(raw, n))
                    else:
                        best_client = max(best_client, await timed(client, n))
            rates[name] = (best_raw, best_client)
            print(f"{name:<20}{n:>8}{best_raw:>12,.0f}{best_client:>14,.0f}{best_client / best_raw:>8.2f}")
        while stopping:
            await stopping.pop()
        speedup = rates["pipelined publish"][1] / rates["sequential publish"][1]
        print(f"client pipelined / sequential publish: {speedup:.1f}x")
        await pub.close()
        await sub.close()
        await raw_nc.close()
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=5000)
    parser.add_argument("--pipe", type=int, default=20000)
    parser.add_argument("--consume", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
