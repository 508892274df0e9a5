"""Outbox relay and inbox throughput against the plain client, in one run against one local nats-server.

- publish: the client's pipelined `publish_batch` (in batches of `--batch`, building the events as it
  goes, like benchmarks/runtime.py) vs an `OutboxRelay.run()`
  draining the same number of pending outbox rows (recorded beforehand, not timed) into the stream,
  marking each sent after its PubAck. The relay pays for reading the rows, decoding them, and the
  mark-sent transactions (claiming ahead and marking behind run on its DB thread meanwhile).
- consume: the client's consumer with a no-op handler vs the same consumer with an `Inbox` handler
  (one transaction per event: the inbox row, then commit). SQLite with `synchronous=NORMAL` and with
  the default `FULL` (an fsync per commit: far fewer events, see the count), and PostgreSQL when its
  binaries are found (a throwaway cluster with fsync off: it measures the round trips, not the disk).
Each pair runs in rounds alternating which side goes first; the best round of each side is reported.

    .venv/bin/python benchmarks/reliability.py [--publish N] [--consume N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js.api import PubAck
from sqlalchemy import Engine
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.local.postgres import LocalPostgres, postgres_bin_dir
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, Delivery, Event
from jsb_infra.runtime.inbox import Inbox
from jsb_infra.runtime.outbox import Outbox, OutboxRelay
from jsb_infra.runtime.storage import create_schema, engine_for_url, inbox_table, outbox_table

# bounded as by default, with room for a whole round's publishes (--publish) on one subject
PAIR = parse_pairs(
    [
        {
            "stream": "bench-sync",
            "apps": ["pub", "sub"],
            "stream_options": {"max_msgs_per_subject": 100_000, "max_msg_size": 4096},
        }
    ]
).pairs[0]
NOTE = "x" * 130


def payload(i: int) -> dict[str, object]:
    return {"n": i, "note": NOTE}  # ~150 bytes of JSON


async def best_of(
    rounds: int,
    n: int,
    sides: dict[str, tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[float]]]],
) -> dict[str, tuple[float, float]]:
    """Per side: (prepare, run -> msg/s); alternate the order each round; keep each side's best round
    as (msg/s, this process's CPU microseconds per message in that round)."""
    best = dict.fromkeys(sides, (0.0, 0.0))
    names = list(sides)
    for round_no in range(rounds):
        for name in names if round_no % 2 == 0 else list(reversed(names)):
            prepare, run = sides[name]
            await prepare()
            cpu = time.process_time()
            rate = await run()
            cpu_us = (time.process_time() - cpu) * 1e6 / n
            if rate > best[name][0]:
                best[name] = (rate, cpu_us)
    return best


def row(label: str, n: int, side: tuple[float, float], client: tuple[float, float]) -> str:
    return (
        f"{label:<38}{n:>8}{side[0]:>10,.0f}{side[0] / client[0]:>11.2f}{side[1]:>10.1f}"
        f"{client[1] / side[1]:>12.2f}"
    )


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())
        conn.execute(inbox_table.delete())


async def main(args: argparse.Namespace) -> None:
    store = Path(tempfile.mkdtemp(prefix="jsb-bench-"))
    postgres: LocalPostgres | None = None
    try:
        postgres_bin_dir()
        postgres = LocalPostgres().start()
    except (FileNotFoundError, RuntimeError) as err:
        print(f"(no PostgreSQL rows: {err})")
    databases = {
        "sqlite NORMAL": f"sqlite:///{store / 'normal.db'}?synchronous=NORMAL",
        "sqlite FULL": f"sqlite:///{store / 'full.db'}",
    }
    if postgres is not None:
        databases["postgresql"] = postgres.url
    engines = {name: engine_for_url(url) for name, url in databases.items()}
    for engine in engines.values():
        create_schema(engine)
    try:
        with LocalNatsServer(store_dir=store / "nats") as server:
            nc = await nats.connect(server.url)
            admin = JetStreamAdmin(nc)
            await admin.create_stream(stream_config(PAIR))
            for config in consumer_configs(PAIR).values():
                await admin.create_consumer(PAIR.stream, config)
            pub = await BridgeClient(bridge_outputs(PAIR, "pub", [server.url])).connect()
            sub = await BridgeClient(bridge_outputs(PAIR, "sub", [server.url])).connect()
            outbox = Outbox(pub.bridge)

            async def purge() -> None:
                await nc.request(f"$JS.API.STREAM.PURGE.{PAIR.stream}", b"", timeout=30)

            async def client_publish() -> float:
                # Building the events is timed, as in benchmarks/runtime.py: an app without an outbox
                # makes them as it publishes; the relay's counterpart is decoding the stored rows.
                start = time.perf_counter()
                results: list[PubAck | BaseException] = []
                for at in range(0, args.publish, args.batch):
                    events = (
                        pub.event("bench.event", "bench", i, payload(i)) for i in range(at, at + args.batch)
                    )
                    results += await pub.publish_batch(events, max_in_flight=512)
                elapsed = time.perf_counter() - start
                return sum(1 for r in results if isinstance(r, PubAck)) / elapsed

            def relay_sides(
                engine: Engine,
            ) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[float]]]:
                async def prepare() -> None:
                    await purge()
                    clear(engine)
                    with Session(engine) as session, session.begin():
                        outbox.record_many(
                            session,
                            (
                                outbox.event("bench.event", "bench", i, payload(i))
                                for i in range(args.publish)
                            ),
                        )

                async def run() -> float:
                    relay = OutboxRelay(pub, engine, batch=args.batch)
                    start = time.perf_counter()
                    task = asyncio.create_task(relay.run())
                    while relay.stats.published < args.publish:
                        assert relay.stats.failed == 0 and not task.done()
                        await asyncio.sleep(0.002)
                    elapsed = time.perf_counter() - start
                    await relay.stop()
                    await task
                    return relay.stats.published / elapsed

                return prepare, run

            print(f"nats-server {server.url}, file storage; best of {args.rounds} alternating rounds")
            print("(cpu: this process's CPU time per message; cpu ratio: client cpu / this row's cpu)")
            print(f"{'workload':<38}{'msgs':>8}{'msg/s':>10}{'vs client':>11}{'cpu us':>10}{'cpu ratio':>12}")
            for name, engine in engines.items():
                if name == "sqlite FULL":
                    continue  # the relay commits once per batch: FULL costs one fsync per batch
                best = await best_of(
                    args.rounds,
                    args.publish,
                    {"relay": relay_sides(engine), "client": (purge, client_publish)},
                )
                print(row("publish: client publish_batch", args.publish, best["client"], best["client"]))
                print(row(f"publish: outbox relay ({name})", args.publish, best["relay"], best["client"]))

            async def prefill(n: int) -> None:
                await purge()
                for at in range(0, n, 2000):
                    events = [
                        pub.event("bench.event", "bench", i, payload(i)) for i in range(at, min(at + 2000, n))
                    ]
                    await pub.publish_batch(events, max_in_flight=512)

            async def consume(
                n: int, handler: Callable[[Event, Delivery], Awaitable[None]], count: Callable[[], int]
            ) -> float:
                consumer = sub.consumer(handler, batch=100, fetch_timeout=1)
                start = time.perf_counter()
                task = asyncio.create_task(consumer.run())
                while count() < n:
                    await asyncio.sleep(0.001)
                elapsed = time.perf_counter() - start
                await consumer.stop()
                await task
                return n / elapsed

            def plain_sides(n: int) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[float]]]:
                got = [0]

                async def handle(event: Event, delivery: Delivery) -> None:
                    got[0] += 1

                async def prepare() -> None:
                    got[0] = 0
                    await prefill(n)

                return prepare, lambda: consume(n, handle, lambda: got[0])

            def inbox_sides(
                engine: Engine, n: int
            ) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[float]]]:
                inbox = Inbox(engine, sub.bridge)

                async def apply(event: Event, delivery: Delivery, session: Session) -> None:
                    return None

                async def prepare() -> None:
                    clear(engine)
                    inbox.stats.handled = 0
                    await prefill(n)

                return prepare, lambda: consume(n, inbox.handler(apply), lambda: inbox.stats.handled)

            for name, engine in engines.items():
                n = args.consume if name != "sqlite FULL" else max(args.consume // 20, 100)
                best = await best_of(
                    args.rounds, n, {"inbox": inbox_sides(engine, n), "client": plain_sides(n)}
                )
                print(row("consume: client, no-op handler", n, best["client"], best["client"]))
                print(row(f"consume: inbox ({name})", n, best["inbox"], best["client"]))
            await pub.close()
            await sub.close()
            await nc.close()
    finally:
        for engine in engines.values():
            engine.dispose()
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publish", type=int, default=20000)
    parser.add_argument("--consume", type=int, default=5000)
    parser.add_argument(
        "--batch", type=int, default=500, help="relay batch, and the client's publish_batch size"
    )
    parser.add_argument("--rounds", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
