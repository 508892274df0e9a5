"""The documented DDL is the schema the library creates, and it works as the only setup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.runtime.envelope import new_event
from jsb_infra.runtime.inbox import Inbox
from jsb_infra.runtime.outbox import Outbox, pending_count
from jsb_infra.runtime.storage import create_schema, engine_for_url, schema_ddl

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def documented_ddl(dialect: str) -> str:
    label = {"postgresql": "PostgreSQL:", "sqlite": "SQLite:"}[dialect]
    match = re.search(re.escape(label) + r"\n\n```sql\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no {label} DDL block in {DOC.name}"
    return match.group(1)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_documented_ddl_is_what_the_library_creates(dialect):
    assert documented_ddl(dialect) == schema_ddl(dialect)


def test_the_documented_ddl_alone_sets_up_outbox_and_inbox(database_url):
    engine = engine_for_url(database_url)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        for statement in documented_ddl(dialect).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    create_schema(engine)  # finds every table: nothing to do, nothing fails
    pair = parse_pairs([{"stream": "s", "apps": ["a", "b"]}]).pairs[0]
    outbox = Outbox(bridge_outputs(pair, "a", ["nats://127.0.0.1:4222"]))
    with Session(engine) as session, session.begin():
        outbox.record(session, new_event("t", "r", 1, {}, producer="a"))
    assert pending_count(engine) == 1
    assert Inbox(engine, bridge_outputs(pair, "b", ["nats://127.0.0.1:4222"])).cleanup() == 0
    engine.dispose()


def test_bad_storage_settings_name_the_option():
    with pytest.raises(ValueError, match="synchronous: one of FULL, NORMAL, got 'OFF'"):
        engine_for_url("sqlite:///x.db?synchronous=OFF")
    with pytest.raises(ValueError, match="unknown SQLite option"):
        engine_for_url("sqlite:///x.db?journal=memory")
    with pytest.raises(ValueError, match="use sqlite:///<path>"):
        engine_for_url("sqlite://")
    with pytest.raises(ValueError, match="dialect: one of postgresql, sqlite"):
        schema_ddl("mysql")
