"""One admin connection per provider host process, on one long-lived event loop.

The host calls provider methods synchronously from its gRPC worker threads (a pool of 4), and a
nats-py connection belongs to the event loop it was made on. So one daemon thread runs one loop for
the life of the process; every provider call submits its coroutine there
(`asyncio.run_coroutine_threadsafe`) and waits for the result, and every call shares the loop's
connection: no TCP and auth handshake per call, and one connection on the server instead of one per
request. A connection that dropped (server restart, network) is replaced at the next call; a change of
the configured settings makes a new one. Everything closes at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

from jsb_infra.nats_admin import AdminConnection, JetStreamAdmin, connect_admin
from jsb_infra.retry import RetryPolicy

T = TypeVar("T")


class SharedAdmin:
    """The host's event loop thread and its admin connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[str, NATS] = {}
        self._connecting: asyncio.Lock | None = None
        self.connections_made = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="jsb-admin-loop", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the shared loop and wait for its result (from any thread but the loop's)."""
        loop = self._running_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SharedAdmin.run called from its own event loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    @asynccontextmanager
    async def session(
        self, conn: AdminConnection, retry: RetryPolicy | None = None
    ) -> AsyncIterator[JetStreamAdmin]:
        """A JetStreamAdmin on the shared connection (made, or remade, when needed). Not closed after.
        With `retry`, every request is retried through leader elections (`jsb_infra.retry`)."""
        yield JetStreamAdmin(await self._connection(conn), timeout=conn.timeout, retry=retry)

    async def _connection(self, conn: AdminConnection) -> NATS:
        if self._connecting is None:
            self._connecting = asyncio.Lock()  # made on the loop thread, the only one that awaits it
        key = conn.model_dump_json()  # in memory only: it holds the credentials
        async with self._connecting:
            nc = self._connections.get(key)
            if nc is not None and nc.is_connected:
                return nc
            if nc is not None and not nc.is_closed:
                await nc.close()
            self._connections.pop(key, None)
            nc = await connect_admin(conn)
            self._connections[key] = nc
            self.connections_made += 1
            return nc

    async def _close_connection(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for nc in connections:
            if not nc.is_closed:
                await nc.close()

    def close(self) -> None:
        """Close the connection and stop the loop thread (at exit; a later `run` starts afresh)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(Exception):  # at exit, a connection that will not close is dropped anyway
            asyncio.run_coroutine_threadsafe(self._close_connection(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._connecting = None


shared = SharedAdmin()
atexit.register(shared.close)
