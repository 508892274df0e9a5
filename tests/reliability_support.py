"""What the outbox/inbox tests and their child-process app share: the business tables, a poll helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy import Column, Integer, MetaData, String, Table

business = MetaData()
# One row per handler call and no unique key: an effect applied twice shows up as two rows.
effects = Table(
    "effects",
    business,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("order_no", Integer, nullable=True),
)
orders = Table(
    "orders",
    business,
    Column("order_no", Integer, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False),
)


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
