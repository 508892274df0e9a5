"""The tables behind the transactional outbox and the idempotent inbox (SQLAlchemy 2.x).

Apps bring their own database: any SQLAlchemy engine. SQLite is the embedded default
(`sqlite_engine(path)`); PostgreSQL is the shared-database choice (driver: psycopg 3). The library
creates its tables with `create_schema(engine)`; teams that manage schemas themselves apply the DDL
that `schema_ddl(dialect)` prints (docs/reliability.md has it for both dialects).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError
from sqlalchemy.schema import CreateIndex, CreateTable

metadata = MetaData()

# SQLite gives a table a monotonically assigned rowid only for `INTEGER PRIMARY KEY`, not BIGINT.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

outbox_table = Table(
    "jsb_outbox",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True, comment="publish order"),
    Column("event_id", String(200), nullable=False, unique=True, comment="also the Nats-Msg-Id"),
    Column("subject", String(255), nullable=False, comment="the bridge's publish subject"),
    Column("body", LargeBinary, nullable=False, comment="the encoded envelope, published as is"),
    Column("created_at", DateTime, nullable=False, comment="UTC"),
    Column("sent_at", DateTime, nullable=True, comment="UTC, set after the PubAck; NULL = pending"),
    Column(
        "attempts",
        Integer,
        nullable=False,
        default=0,
        server_default=text("0"),
        comment="failed publish attempts",
    ),
    Column("last_error", Text, nullable=True),
)
Index(
    "jsb_outbox_pending",
    outbox_table.c.subject,
    outbox_table.c.id,
    postgresql_where=text("sent_at IS NULL"),
    sqlite_where=text("sent_at IS NULL"),
)
# No index on sent_at: marking a batch sent would maintain it on the relay's hot path, for the sake of
# `purge_sent`, an occasional maintenance scan.

inbox_table = Table(
    "jsb_inbox",
    metadata,
    Column("consumer", String(255), primary_key=True, comment="<stream>/<durable>"),
    Column("event_id", String(200), primary_key=True),
    Column("stream_sequence", BigInteger, nullable=True, comment="of the delivery that was handled"),
    Column("received_at", DateTime, nullable=False, comment="UTC"),
)
Index("jsb_inbox_received_at", inbox_table.c.received_at)

relay_lease_table = Table(
    "jsb_outbox_lease",
    metadata,
    Column("subject", String(255), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", DateTime, nullable=False, comment="UTC"),
)


def utc_now() -> datetime:
    """Naive UTC (portable across SQLite and PostgreSQL `timestamp without time zone`)."""
    return datetime.now(UTC).replace(tzinfo=None)


def create_schema(engine: Engine) -> None:
    """Create the outbox, inbox and lease tables where missing (idempotent)."""
    metadata.create_all(engine)


def schema_ddl(dialect: str) -> str:
    """The DDL `create_schema` runs, for `postgresql` or `sqlite`, as SQL text."""
    dialects: dict[str, Any] = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}
    if dialect not in dialects:
        raise ValueError(f"dialect: one of {', '.join(dialects)}, got {dialect!r}")
    chosen = dialects[dialect]
    statements = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=chosen)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index).compile(dialect=chosen)))
    text_ = "\n\n".join(s.strip() + ";" for s in statements)
    return "\n".join(line.rstrip().replace("\t", "  ") for line in text_.splitlines()) + "\n"


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def engine_for_url(url: str, **options: Any) -> Engine:
    """An engine for a SQLAlchemy URL; `sqlite:///path[?synchronous=NORMAL]` gets `sqlite_engine`'s
    settings."""
    if url.startswith("sqlite:///"):
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        settings = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = sorted(set(settings) - {"synchronous"})
        if unknown:
            raise ValueError(
                f"database url: unknown SQLite option(s) {', '.join(unknown)} (only synchronous)"
            )
        if "synchronous" in settings:
            options["synchronous"] = settings["synchronous"]
        return sqlite_engine(path, **options)
    if url.startswith("sqlite:"):
        raise ValueError(f"database url: use sqlite:///<path> (a file), got {url!r}")
    try:
        return create_engine(url, **options)
    except ArgumentError as err:  # not a URL, or a dialect SQLAlchemy does not know
        raise ValueError(f"database url: {err}") from None
    except ImportError as err:  # a dialect whose driver is not installed
        raise ValueError(f"database url: its driver is not installed: {err}") from None


SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


def sqlite_engine(
    path: str | Path, *, busy_timeout_ms: int = 10_000, synchronous: str = "FULL", **options: Any
) -> Engine:
    """A SQLite engine set up for an app plus a relay sharing one file.

    WAL journal (readers never block the writer), a busy timeout instead of an instant "database is
    locked", and `synchronous=FULL` so that a committed transaction survives a power cut too (the inbox
    acks only after its commit). `synchronous="NORMAL"` skips the fsync per commit (~100x faster
    commits on a disk): in WAL mode a commit still survives any crash of the app, but a power cut may
    roll back the last transactions. Transactions begin with `BEGIN IMMEDIATE`: the write lock is taken at
    the start, so two writers queue instead of one failing at commit time with a lock upgrade error.
    """
    synchronous = synchronous.upper()
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"synchronous: one of {', '.join(SQLITE_SYNCHRONOUS)}, got {synchronous!r}")
    engine = create_engine(f"sqlite:///{path}", **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
