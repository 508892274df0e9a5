"""The runtime client against raw nats-py (and Go's `nats bench`), in one run against one local nats-server.

Three workloads, each with the same envelope body (uuid4 event id, UTC timestamp, ~150-byte payload)
and the same `Nats-Msg-Id` header on both sides, so the ratio measures the client's own overhead:
- sequential publish: `await js.publish` vs `await client.publish`
- pipelined publish: `js.publish_async` + `publish_async_completed` vs `client.publish_batch`
- consume+ack: `fetch(100)` + decode + `ack` vs the client's consumer loop with a no-op handler
Each runs in rounds that alternate which side goes first; the best round of each side is reported
(the machine may be shared, so the best round is the least disturbed one), with this process's CPU
time per message (lowest round), which other load on the machine disturbs far less than the rate.
A pipelined publish is credited only with the publishes that got a PubAck. The client consumer's
`stop()`, which lets its open pull requests run out (up to fetch_timeout) rather than drop what they
bring, is teardown and not timed.

When the NATS CLI is there (`scripts/ensure-natscli`, else `nats` on PATH), `nats bench js pub sync`,
`pub async` and `fetch` run against the same stream, subject and durable with bodies of the same size
and a msg id per message (`--dedup`), best of the same number of rounds, and the client/Go ratio is printed.

`bench_layout` takes where the apps connect (a `Layout`: server URL, each app's bridge and credentials, the
admin's connect options). The same workloads then run on a second server with the rendered account layout
(each app its own account and NKey user, reaching the stream through service imports), and the cost of
isolation is printed: the client there against the client, and against raw nats-py, on the shared account.

    .venv/bin/python benchmarks/runtime.py [--seq N] [--pipe N] [--consume N] [--rounds R] [--no-go]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.capacity import stream_max_bytes
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import Capacity, Pair, parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event

ROOT = Path(__file__).resolve().parent.parent
BOUNDS = {"max_msgs_per_subject": 100_000, "max_msg_size": 4096}
"""The bench's stream bounds: the defaults' discard new and per-subject refusal, sized so that a
workload's messages (up to 100,000 of ~300 bytes on one subject) fit."""
UNBOUNDED = {"max_bytes": -1, "max_msgs_per_subject": -1, "max_msg_size": -1, "discard": "old"}
"""Every earlier version's stream: no bound, discard old."""
PAIR = parse_pairs([{"stream": "bench-sync", "apps": ["pub", "sub"], "stream_options": BOUNDS}]).pairs[0]
UNBOUNDED_PAIR = parse_pairs(
    [{"stream": "bench-sync", "apps": ["pub", "sub"], "stream_options": UNBOUNDED}]
).pairs[0]
NOTE = "x" * 130
SEQ, PIPE, CONSUME = "sequential publish", "pipelined publish", "consume+ack"


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


@dataclass
class Rate:
    """The best round of one side: messages per second, and this process's CPU microseconds per message
    (the client's own cost, steadier than the rate on a shared machine; the server's CPU not included)."""

    per_s: float = 0.0
    cpu_us: float = float("inf")
    server_us: float = float("inf")  # the server's CPU per message, where its process is known

    def add(self, per_s: float, cpu_us: float, server_us: float | None = None) -> None:
        self.per_s = max(self.per_s, per_s)
        self.cpu_us = min(self.cpu_us, cpu_us)
        if server_us is not None:
            self.server_us = min(self.server_us, server_us)


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a local process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(fn: Callable[[], Awaitable[int | None]], n: int) -> tuple[float, float]:
    """Messages per second and CPU us per message; a workload that returns a count is credited only
    with that many (PubAcks)."""
    start, cpu = time.perf_counter(), time.process_time()
    done = await fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if done is not None and done != n:
        print(f"  warning: {fn.__name__}: only {done} of {n} publishes got a PubAck", file=sys.stderr)
    count = n if done is None else done
    return count / elapsed, cpu / max(count, 1) * 1e6


@dataclass
class Layout:
    """Where the apps connect, as they would in production: the publishing app `pub` and the consuming app
    `sub`, each with its bridge (subjects, durable, inbox prefix) and credentials; raw nats-py connects with
    the same options. The admin (stream purge, prefill, `nats bench`) uses `admin_options`."""

    name: str
    url: str
    bridges: dict[str, BridgeOutputs]
    credentials: dict[str, Credentials] = field(default_factory=dict)
    admin_options: dict[str, Any] = field(default_factory=dict)
    server_pid: int | None = None  # a local server's process: its CPU per message is reported

    def app_options(self, app: str) -> dict[str, Any]:
        creds = self.credentials.get(app, Credentials())
        return {"inbox_prefix": self.bridges[app].inbox_prefix, **creds.connect_options()}

    def client(self, app: str) -> BridgeClient:
        return BridgeClient(self.bridges[app], self.credentials.get(app))


Rates = dict[str, tuple[Rate, Rate]]  # workload -> (raw, client)


class Workloads:
    """The three workloads on one layout, each as raw nats-py and as the client: `side(name, "raw")` is
    (run, prepare) for that workload. Open with `await Workloads.open(layout, args)`, then `close()`."""

    nc: NATS
    js: JetStreamContext
    raw_pub_nc: NATS
    raw_sub_nc: NATS
    raw_js: JetStreamContext
    raw_sub_js: JetStreamContext
    pub: BridgeClient
    sub: BridgeClient
    subject: str
    stream: str

    def __init__(self, layout: Layout, args: argparse.Namespace):
        self.layout, self.args = layout, args
        self.stopping: list[asyncio.Task[None]] = []  # client consumers being stopped, outside the timing

    @classmethod
    async def open(cls, layout: Layout, args: argparse.Namespace) -> Workloads:
        self = cls(layout, args)
        self.nc = await nats.connect(layout.url, **layout.admin_options)
        self.js = self.nc.jetstream()
        self.raw_pub_nc = await nats.connect(layout.url, **layout.app_options("pub"))
        self.raw_sub_nc = await nats.connect(layout.url, **layout.app_options("sub"))
        self.raw_js = self.raw_pub_nc.jetstream(publish_async_max_pending=args.in_flight)
        self.raw_sub_js = self.raw_sub_nc.jetstream()
        self.pub = await layout.client("pub").connect()
        self.sub = await layout.client("sub").connect()
        self.subject = self.pub.bridge.publish_subject
        self.stream = self.pub.bridge.stream
        return self

    def counts(self) -> dict[str, int]:
        return {SEQ: self.args.seq, PIPE: self.args.pipe, CONSUME: self.args.consume}

    def side(
        self, name: str, side: str
    ) -> tuple[Callable[[], Awaitable[int | None]], Callable[[], Awaitable[None]]]:
        runs = {
            SEQ: (self.raw_seq, self.client_seq, self.purge),
            PIPE: (self.raw_pipe, self.client_pipe, self.purge),
            CONSUME: (self.raw_consume, self.client_consume, self.prefill),
        }
        raw, client, before = runs[name]
        return (raw if side == "raw" else client), before

    async def settle(self) -> None:
        """No consumer may still be pulling when the next round starts."""
        while self.stopping:
            await self.stopping.pop()

    async def purge(self) -> None:
        await self.nc.request(f"$JS.API.STREAM.PURGE.{self.stream}", b"", timeout=10)

    async def raw_seq(self) -> None:
        for i in range(self.args.seq):
            body, headers = raw_envelope(i)
            await self.raw_js.publish(self.subject, body, headers=headers)

    async def client_seq(self) -> None:
        for i in range(self.args.seq):
            await self.pub.publish("bench.event", "bench", i, payload(i))

    async def raw_pipe(self) -> int:
        futures = []
        for i in range(self.args.pipe):
            body, headers = raw_envelope(i)
            futures.append(await self.raw_js.publish_async(self.subject, body, headers=headers))
        await self.raw_js.publish_async_completed()
        return sum(1 for f in futures if not f.cancelled() and f.exception() is None)

    async def client_pipe(self) -> int:
        events = (self.pub.event("bench.event", "bench", i, payload(i)) for i in range(self.args.pipe))
        results = await self.pub.publish_batch(events, max_in_flight=self.args.in_flight)
        assert len(results) == self.args.pipe
        return sum(1 for r in results if isinstance(r, PubAck))

    async def prefill(self) -> None:
        await self.purge()
        await fill(self.js, self.subject, self.args.consume)

    async def raw_consume(self) -> None:
        psub = await self.raw_sub_js.pull_subscribe_bind(durable=self.sub.bridge.durable, stream=self.stream)
        got = 0
        while got < self.args.consume:
            for msg in await psub.fetch(100, timeout=2):
                json.loads(msg.data)
                await msg.ack()
                got += 1
        await self.raw_sub_nc.flush()
        await psub.unsubscribe()

    async def client_consume(self) -> None:
        got = 0
        done = asyncio.Event()

        async def handle(event: Event, delivery: Delivery) -> None:
            nonlocal got
            got += 1
            if got == self.args.consume:
                done.set()

        consumer = self.sub.consumer(handle, batch=100, fetch_timeout=2)
        task = asyncio.create_task(consumer.run())
        await done.wait()
        await self.sub.nc.flush()

        async def stop() -> None:
            await consumer.stop()  # lets the open pull requests run out: up to fetch_timeout
            await task

        self.stopping.append(asyncio.create_task(stop()))

    async def close(self) -> None:
        await self.settle()
        await self.purge()
        for conn in (self.pub, self.sub):
            await conn.close()
        for raw_conn in (self.raw_pub_nc, self.raw_sub_nc, self.nc):
            await raw_conn.close()


async def alternate(first: tuple[Workloads, str], second: tuple[Workloads, str], rounds: int) -> Rates:
    """Each workload in `rounds` rounds that alternate which of the two sides goes first; best rates."""
    rates: Rates = {}
    for name in (SEQ, PIPE, CONSUME):
        best = (Rate(), Rate())
        n = first[0].counts()[name]
        for round_no in range(rounds):
            order = (0, 1) if round_no % 2 == 0 else (1, 0)
            for index in order:
                workloads, side = (first, second)[index]
                await first[0].settle()
                await second[0].settle()
                run, before = workloads.side(name, side)
                await before()
                server_cpu = process_cpu_s(workloads.layout.server_pid)
                per_s, cpu_us = await timed(run, n)
                after = process_cpu_s(workloads.layout.server_pid)
                server_us = None if server_cpu is None or after is None else (after - server_cpu) / n * 1e6
                best[index].add(per_s, cpu_us, server_us)
        rates[name] = best
    return rates


async def bench_layout(layout: Layout, args: argparse.Namespace) -> Rates:
    """Raw nats-py and the client, alternating rounds, on one layout; returns the best rates."""
    workloads = await Workloads.open(layout, args)
    try:
        return await alternate((workloads, "raw"), (workloads, "client"), args.rounds)
    finally:
        await workloads.close()


async def fill(js: JetStreamContext, subject: str, n: int) -> None:
    for start in range(0, n, 5000):
        for i in range(start, min(start + 5000, n)):
            body, headers = raw_envelope(i)
            await js.publish_async(subject, body, headers=headers)
        await js.publish_async_completed()


# -- Go: `nats bench` -------------------------------------------------------------------------------
def find_nats_cli() -> str | None:
    """`nats` from scripts/ensure-natscli when that script is there (it may build it), else from PATH."""
    script = ROOT / "scripts" / "ensure-natscli"
    if script.exists():
        found = subprocess.run([str(script)], capture_output=True, text=True)
        candidate = Path(found.stdout.strip()) / "nats"
        if found.returncode == 0 and candidate.exists():
            return str(candidate)
        print(f"  ensure-natscli failed: {found.stderr.strip()[-300:]}", file=sys.stderr)
    return shutil.which("nats")


def nats_bench(cli: str, layout: Layout, args: list[str]) -> float:
    """One `nats bench` run; its msgs/sec."""
    options = layout.admin_options
    auth = ["--user", options["user"], "--password", options["password"]] if "user" in options else []
    out = subprocess.run(
        [cli, "bench", "-s", layout.url, *auth, *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = re.search(r"stats: ([\d,]+) msgs/sec", out.stdout)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"nats bench {' '.join(args)} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    return float(found.group(1).replace(",", ""))


async def bench_go(cli: str, layout: Layout, args: argparse.Namespace) -> dict[str, float]:
    """`nats bench` on the same stream, subject and durable, bodies of the same size, best of the rounds."""
    bridge = layout.bridges["pub"]
    stream, subject = bridge.stream, bridge.publish_subject
    durable = layout.bridges["sub"].durable
    size = f"{len(raw_envelope(0)[0])}B"
    nc = await nats.connect(layout.url, **layout.admin_options)
    js = nc.jetstream()
    common = ["--stream", stream, "--size", size]
    runs = {
        SEQ: (["js", "pub", "sync", subject, "--msgs", str(args.seq), "--dedup", *common], None),
        PIPE: (
            [
                "js",
                "pub",
                "async",
                subject,
                "--msgs",
                str(args.pipe),
                "--batch",
                str(args.in_flight),
                "--dedup",
                *common,
            ],
            None,
        ),
        CONSUME: (
            ["js", "fetch", "--consumer", durable, "--msgs", str(args.consume), "--batch", "100", *common],
            args.consume,
        ),
    }
    rates: dict[str, float] = {}
    for name, (command, prefill) in runs.items():
        best = 0.0
        for _ in range(args.rounds):
            await nc.request(f"$JS.API.STREAM.PURGE.{stream}", b"", timeout=10)
            if prefill:
                await fill(js, subject, prefill)
            best = max(best, await asyncio.to_thread(nats_bench, cli, layout, command))
        rates[name] = best
    await nc.request(f"$JS.API.STREAM.PURGE.{stream}", b"", timeout=10)
    await nc.close()
    return rates


def print_rates(layout: Layout, n: dict[str, int], rates: Rates, go: dict[str, float] | None) -> None:
    print(f"layout: {layout.name}")
    head = f"{'workload':<20}{'msgs':>7}{'raw msg/s':>11}{'client msg/s':>13}{'client/raw':>11}"
    print(f"{head}{'Go msg/s':>10}{'client/Go':>10}{'CPU us/msg raw':>16}{'client':>8}")
    for name, (raw, client) in rates.items():
        go_cols = f"{go[name]:>10,.0f}{client.per_s / go[name]:>10.2f}" if go else f"{'-':>10}{'-':>10}"
        ratio = client.per_s / raw.per_s
        line = f"{name:<20}{n[name]:>7}{raw.per_s:>11,.0f}{client.per_s:>13,.0f}{ratio:>11.2f}"
        print(f"{line}{go_cols}{raw.cpu_us:>16.1f}{client.cpu_us:>8.1f}")
    speedup = rates[PIPE][1].per_s / rates[SEQ][1].per_s
    print(f"client pipelined / sequential publish: {speedup:.1f}x")


async def provision(url: str, admin_options: dict[str, Any], pair: Pair = PAIR) -> None:
    nc = await nats.connect(url, **admin_options)
    admin = JetStreamAdmin(nc)
    await admin.create_stream(stream_config(pair))
    for config in consumer_configs(pair).values():
        await admin.create_consumer(pair.stream, config)
    await nc.close()


def isolated_server(
    store: Path, pair: Pair = PAIR, capacity: Capacity | None = None
) -> tuple[LocalNatsServer, dict[str, Credentials], dict[str, Any]]:
    """A server on the rendered account layout of `pair`: streams in the JetStream account (limited to
    `capacity`), each app in its own account (its NKey user) reaching them only through service imports."""
    seeds = {app: new_user_keypair() for app in pair.apps}
    conf = render_accounts_conf(
        account_layout([pair], capacity=capacity),
        {app: public for app, (_, public) in seeds.items()},
        DeployUser(user="admin", password_env="JSB_DEPLOY_PASSWORD"),
    )
    server = LocalNatsServer(store_dir=store, extra_config=conf, env={"JSB_DEPLOY_PASSWORD": "bench"})
    credentials = {app: Credentials(nkey_seed=seed) for app, (seed, _) in seeds.items()}
    return server, credentials, {"user": "admin", "password": "bench"}


def print_isolation_cost(shared: Rates, isolated: Rates) -> None:
    """What a user gives up for isolation: the client through the imports against the same client, and
    against raw nats-py, on one shared account, same run."""
    print("cost of isolation (one account per app, service imports) against one shared account:")
    print(f"{'workload':<20}{'client iso/client shared':>26}{'client iso/raw shared':>23}")
    for name in shared:
        raw_shared, client_shared = shared[name]
        client_iso = isolated[name][1]
        print(
            f"{name:<20}{client_iso.per_s / client_shared.per_s:>26.2f}"
            f"{client_iso.per_s / raw_shared.per_s:>23.2f}"
        )


async def main(args: argparse.Namespace) -> None:
    store = Path(tempfile.mkdtemp(prefix="jsb-bench-"))
    n = {SEQ: args.seq, PIPE: args.pipe, CONSUME: args.consume}
    with LocalNatsServer(store_dir=store / "shared") as server:
        await provision(server.url, {})
        shared = Layout(
            "one shared account (no auth)",
            server.url,
            {app: bridge_outputs(PAIR, app, [server.url]) for app in PAIR.apps},
        )
        print(f"nats-server {server.url}, file storage; best of {args.rounds} alternating rounds")
        rates = await bench_layout(shared, args)
        go = None
        cli = None if args.no_go else find_nats_cli()
        if cli is None:
            print(
                "Go column skipped: no NATS CLI (scripts/ensure-natscli or `nats` on PATH)"
                if not args.no_go
                else "Go column skipped (--no-go)"
            )
        else:
            go = await bench_go(cli, shared, args)
        print_rates(shared, n, rates, go)
    if args.no_isolated:
        if not args.no_limits:
            await bench_limits(store, args)
        return
    iso_server, credentials, admin_options = isolated_server(store / "isolated")
    with iso_server:
        await provision(iso_server.url, admin_options)
        isolated = Layout(
            "one account per app (service imports, NKey users)",
            iso_server.url,
            {app: bridge_outputs(PAIR, app, [iso_server.url]) for app in PAIR.apps},
            credentials,
            admin_options,
        )
        iso_rates = await bench_layout(isolated, args)
        print_rates(isolated, n, iso_rates, None)
    print_isolation_cost(rates, iso_rates)
    if not args.no_limits:
        await bench_limits(store, args)


async def isolated_layout(name: str, server: LocalNatsServer, pair: Pair, creds: Any, admin: Any) -> Layout:
    await provision(server.url, admin, pair)
    bridges = {app: bridge_outputs(pair, app, [server.url]) for app in pair.apps}
    pid = server.process.pid if server.process else None
    return Layout(name, server.url, bridges, creds, admin, server_pid=pid)


async def bench_limits(store: Path, args: argparse.Namespace) -> None:
    """The cost of the stream bounds and the account reservation, same run: the client on the rendered
    layout with bounded streams and the JetStream account limited to their reservation, against the same
    client on the same layout with every earlier version's unbounded stream and an unlimited account."""
    capacity = Capacity(file=stream_max_bytes(PAIR))
    bounded_server, bounded_creds, bounded_admin = isolated_server(store / "bounded", PAIR, capacity)
    free_server, free_creds, free_admin = isolated_server(store / "unbounded", UNBOUNDED_PAIR)
    with bounded_server, free_server:
        bounded = await Workloads.open(
            await isolated_layout("bounded", bounded_server, PAIR, bounded_creds, bounded_admin), args
        )
        free = await Workloads.open(
            await isolated_layout("unbounded", free_server, UNBOUNDED_PAIR, free_creds, free_admin), args
        )
        try:
            rates = await alternate((bounded, "client"), (free, "client"), args.rounds)
        finally:
            await bounded.close()
            await free.close()
    print_limits_cost(rates, capacity)


def print_limits_cost(rates: Rates, capacity: Capacity) -> None:
    print(
        f"cost of the limits (bounded stream: {BOUNDS}, discard new per subject, max_bytes {capacity.file} "
        "reserved in an account limited to it; against unbounded, discard old, unlimited account):"
    )
    print(
        f"{'workload':<20}{'bounded msg/s':>15}{'unbounded msg/s':>17}{'bounded/unbounded':>19}"
        f"{'server CPU us/msg: bounded / unbounded (ratio)':>48}"
    )
    for name, (bounded, free) in rates.items():
        print(
            f"{name:<20}{bounded.per_s:>15,.0f}{free.per_s:>17,.0f}{bounded.per_s / free.per_s:>19.2f}"
            f"{bounded.server_us:>31.1f} / {free.server_us:<5.1f} ({bounded.server_us / free.server_us:.2f})"
        )
    print(
        "(rates move +-30% on a shared 2-core machine; the server's CPU per message is the steadier signal)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=5000)
    parser.add_argument("--pipe", type=int, default=20000)
    parser.add_argument("--consume", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-go", action="store_true", help="skip `nats bench`")
    parser.add_argument("--no-isolated", action="store_true", help="skip the one-account-per-app layout")
    parser.add_argument("--no-limits", action="store_true", help="skip the cost of the stream bounds")
    asyncio.run(main(parser.parse_args()))
