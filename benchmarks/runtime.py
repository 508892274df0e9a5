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
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.outputs import BridgeOutputs, bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient, ConsumerLoop, ConsumerStats, Credentials, Delivery, Event

ROOT = Path(__file__).resolve().parent.parent
PAIR = parse_pairs([{"stream": "bench-sync", "apps": ["pub", "sub"]}]).pairs[0]
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

    def add(self, per_s: float, cpu_us: float) -> None:
        self.per_s = max(self.per_s, per_s)
        self.cpu_us = min(self.cpu_us, cpu_us)


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

    def app_options(self, app: str) -> dict[str, Any]:
        creds = self.credentials.get(app, Credentials())
        return {"inbox_prefix": self.bridges[app].inbox_prefix, **creds.connect_options()}

    def client(self, app: str) -> BridgeClient:
        return BridgeClient(self.bridges[app], self.credentials.get(app))


Rates = dict[str, tuple[Rate, Rate]]  # workload -> (raw, client)


async def bench_layout(layout: Layout, args: argparse.Namespace) -> Rates:
    """Raw nats-py and the client, alternating rounds, on one layout; returns the best rates."""
    nc = await nats.connect(layout.url, **layout.admin_options)
    js = nc.jetstream()
    raw_pub_nc = await nats.connect(layout.url, **layout.app_options("pub"))
    raw_sub_nc = await nats.connect(layout.url, **layout.app_options("sub"))
    raw_js = raw_pub_nc.jetstream(publish_async_max_pending=args.in_flight)
    raw_sub_js = raw_sub_nc.jetstream()
    pub = await layout.client("pub").connect()
    sub = await layout.client("sub").connect()
    subject = pub.bridge.publish_subject
    stream = pub.bridge.stream

    async def purge() -> None:
        await nc.request(f"$JS.API.STREAM.PURGE.{stream}", b"", timeout=10)

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
        await fill(js, subject, args.consume)

    async def raw_consume() -> None:
        psub = await raw_sub_js.pull_subscribe_bind(durable=sub.bridge.durable, stream=stream)
        got = 0
        while got < args.consume:
            for msg in await psub.fetch(100, timeout=2):
                json.loads(msg.data)
                await msg.ack()
                got += 1
        await raw_sub_nc.flush()
        await psub.unsubscribe()

    stopping: list[asyncio.Task[None]] = []  # client consumers being stopped, outside the timing

    async def stop(consumer: ConsumerLoop, task: asyncio.Task[ConsumerStats]) -> None:
        await consumer.stop()  # lets the open pull requests run out: up to fetch_timeout
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
        (SEQ, args.seq, raw_seq, client_seq, purge),
        (PIPE, args.pipe, raw_pipe, client_pipe, purge),
        (CONSUME, args.consume, raw_consume, client_consume, prefill),
    ]
    rates: Rates = {}
    for name, n, raw, client, before in workloads:
        best_raw, best_client = Rate(), Rate()
        for round_no in range(args.rounds):
            for side in ("raw", "client") if round_no % 2 == 0 else ("client", "raw"):
                while stopping:  # no consumer may still be pulling when the next round starts
                    await stopping.pop()
                await before()
                if side == "raw":
                    best_raw.add(*await timed(raw, n))
                else:
                    best_client.add(*await timed(client, n))
        rates[name] = (best_raw, best_client)
    while stopping:
        await stopping.pop()
    await purge()
    for conn in (pub, sub):
        await conn.close()
    for raw_conn in (raw_pub_nc, raw_sub_nc, nc):
        await raw_conn.close()
    return rates


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


async def provision(url: str, admin_options: dict[str, Any]) -> None:
    nc = await nats.connect(url, **admin_options)
    admin = JetStreamAdmin(nc)
    await admin.create_stream(stream_config(PAIR))
    for config in consumer_configs(PAIR).values():
        await admin.create_consumer(PAIR.stream, config)
    await nc.close()


def isolated_server(store: Path) -> tuple[LocalNatsServer, dict[str, Credentials], dict[str, Any]]:
    """A server on the rendered account layout: streams in the JetStream account, each app in its own
    account (its NKey user) reaching them only through service imports."""
    seeds = {app: new_user_keypair() for app in PAIR.apps}
    conf = render_accounts_conf(
        account_layout([PAIR]),
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=5000)
    parser.add_argument("--pipe", type=int, default=20000)
    parser.add_argument("--consume", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-go", action="store_true", help="skip `nats bench`")
    parser.add_argument("--no-isolated", action="store_true", help="skip the one-account-per-app layout")
    asyncio.run(main(parser.parse_args()))
