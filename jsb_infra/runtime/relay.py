"""`jsb-infra relay`: an `OutboxRelay` as a process of its own, as the app (its bridge and credentials).

For apps that record events with `Outbox.record` but run no relay themselves. It publishes until
SIGTERM or SIGINT, then finishes the batch in hand and exits 0. Any number may run: on PostgreSQL they
share the work (`SKIP LOCKED`), on SQLite one holds the lease and the others wait.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from jsb_infra.runtime.client import BridgeClient
from jsb_infra.runtime.config import BridgeConfigError, load_bridge, load_credentials

EXIT_INVALID = 2
DATABASE_ENV = "JSB_DATABASE_URL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        help=f"SQLAlchemy URL of the app's database, e.g. sqlite:///app.db or "
        f"postgresql+psycopg://user@host/db (default: ${DATABASE_ENV})",
    )
    parser.add_argument("--bridge", help="bridge JSON (default: $JSB_BRIDGE_FILE)")
    parser.add_argument("--stream", help="stream to pick from a bridges map (default: $JSB_STREAM)")
    parser.add_argument("--app", help="app to pick from a bridges map (default: $JSB_APP)")
    parser.add_argument(
        "--credentials", help="the `credentials` output as JSON (default: $JSB_CREDENTIALS_FILE)"
    )
    parser.add_argument("--batch", type=int, default=500, help="rows per pipelined batch")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds between looks when idle")
    parser.add_argument(
        "--no-create-schema",
        action="store_true",
        help="do not create the outbox tables (for schemas managed by migrations)",
    )


async def run_async(args: argparse.Namespace) -> int:
    try:  # the db extra; imported here so that the CLI loads without it
        from jsb_infra.runtime.outbox import OutboxRelay
        from jsb_infra.runtime.storage import create_schema, engine_for_url
    except ImportError as err:
        print(f"jsb-infra relay: {err}; install the extra: pip install 'jsb-infra[db]'", file=sys.stderr)
        return EXIT_INVALID
    url = args.db or os.environ.get(DATABASE_ENV)
    problems = [] if url else [f"--db: required (or set {DATABASE_ENV})"]
    if args.batch < 1:
        problems.append(f"--batch: must be at least 1, got {args.batch}")
    if args.poll_interval <= 0:
        problems.append(f"--poll-interval: must be > 0 seconds, got {args.poll_interval}")
    if problems or not url:
        for problem in problems:
            print(f"jsb-infra relay: {problem}", file=sys.stderr)
        return EXIT_INVALID
    try:
        bridge = load_bridge(args.bridge, stream=args.stream, app=args.app)
        credentials = load_credentials(credentials=args.credentials, stream=bridge.stream, app=bridge.app)
    except BridgeConfigError as err:
        for problem in err.problems:
            print(f"jsb-infra relay: {problem}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as err:
        print(f"jsb-infra relay: {err}", file=sys.stderr)
        return EXIT_INVALID
    try:
        engine = engine_for_url(url)
    except ValueError as err:
        print(f"jsb-infra relay: --db: {err}", file=sys.stderr)
        return EXIT_INVALID
    if not args.no_create_schema:
        create_schema(engine)
    client = BridgeClient(bridge, credentials, name=f"jsb-relay-{bridge.app}")
    await client.connect()
    relay = OutboxRelay(client, engine, batch=args.batch, poll_interval=args.poll_interval)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(relay.run())
    await stop.wait()
    await relay.stop()
    stats = await task
    await client.close()
    engine.dispose()
    logging.getLogger("jsb_infra.runtime").info(
        "relay stopped: %d published (%d already stored), %d failed",
        stats.published,
        stats.duplicates,
        stats.failed,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point for `jsb-infra relay`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(run_async(args))
