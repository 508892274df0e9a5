"""Property: whatever jsb-infra accepts, a real nats-server accepts and holds as rendered.

Hypothesis generates configs around every rule's edges (names with any characters and lengths,
numbers and durations near 0, 2^31 and 2^63, windows near 100ms, long descriptions, wrong types, and
values written unquoted that YAML 1.1 and 1.2 read differently: 1e9, yes/on, 010, 0x10, 1_000, 1:30,
dates, merge keys). Each is written as YAML and goes through `jsb-infra render`: it is either refused
with exit 2, every problem naming a field under `pairs` (an unquoted ambiguous value: exactly its own
field, such as `pairs[0].consumer.ack_wait`), with nothing written; or it renders, and then the stream
and both consumers created from the rendered JSON with an admin connection hold back exactly the
rendered values, field by field, and nats-server `-t` parses the rendered accounts (permission
entries and app limits).

Two limits depend on the server's deployment rather than on the config, and are kept out of the
generated values (docs/spec.md says so): `replicas` above 1 needs a cluster, and `max_bytes` must fit
the JetStream storage the server has (it refuses a larger reservation with 10047/10028): a generated
pair whose derived `max_bytes` would not fit gets an explicit one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jsb_infra.cli import main
from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.spec import DEFAULT_MAX_MSG_SIZE, DEFAULT_MAX_MSGS_PER_SUBJECT, parse_config
from jsb_infra.local.server import LocalNatsServer, nats_server_binary
from jsb_infra.nats_admin import JetStreamAdmin

TEXT = st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",))


class Plain(str):
    """A value written unquoted in the YAML file (every other string is written double-quoted)."""


AMBIGUOUS = st.sampled_from(
    ["1e9", "1E3", "yes", "on", "Off", "no", "y", "N", "010", "0x10", "1_000", "1:30", "2026-01-01", "+12_0"]
).map(Plain)


def mostly(valid: st.SearchStrategy[Any], *invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` about nine times in ten, else one of the edge cases around it."""
    return st.integers(0, 9).flatmap(lambda roll: valid if roll else st.one_of(*invalid))


SAFE_NAME = st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True)
NAME = mostly(
    st.one_of(SAFE_NAME, st.builds(lambda n: "a" * n, st.integers(238, 242))),
    st.text(TEXT, max_size=6),
    st.builds(lambda n, c: "a" * n + c, st.integers(238, 258), st.sampled_from(["", "é", "b"])),
    st.sampled_from(["dlq", "_INBOX_x", "$SYS", "a.b", "a b", "ordersé"]),
    AMBIGUOUS,
)
UNITS = ["ns", "us", "ms", "s", "m", "h", "d"]
VALID_DURATION = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 5000), st.sampled_from(["ms", "s", "m", "h"])),
    st.sampled_from(["100ms", "100000000ns", "1m30s", "106751d", 0.5, 30]),
    st.floats(min_value=0.1, max_value=1e6),
)
DURATION = mostly(
    VALID_DURATION,
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6), st.sampled_from(UNITS)),
    st.sampled_from(["99ms", "99999999ns", "106752d", "", "1:30", "\u0665s", "5 s", True, -1]),
    st.integers(-2, 2 * 10**10),
    st.floats(min_value=-1, max_value=1e11),
    st.sampled_from([math.nan, math.inf]),
    AMBIGUOUS,
)
EDGE_INT = st.one_of(
    st.integers(-3, 0),
    st.integers(2**31 - 2, 2**31 + 1),
    st.integers(2**53 - 2, 2**53 + 1),
    st.integers(2**63 - 2, 2**63 + 1),
    st.sampled_from([True, 5.0, 5.5, "5"]),
    AMBIGUOUS,
)
COUNT = mostly(st.one_of(st.integers(1, 50), st.just(2**53 - 1)), EDGE_INT)
LIMIT = mostly(st.one_of(st.just(-1), st.integers(1, 2**53 - 1)), EDGE_INT)
MSG_SIZE = mostly(st.one_of(st.just(-1), st.integers(1, 2**31 - 1)), EDGE_INT)
MAX_BYTES = mostly(
    st.one_of(st.just(-1), st.integers(1, 2**26)), st.integers(-3, 0), st.integers(2**63, 2**63 + 1)
)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


CONSUMER = _optional(
    max_deliver=COUNT,
    ack_wait=DURATION,
    backoff=st.lists(DURATION, max_size=6),
    max_ack_pending=COUNT,
)
STREAM_OPTIONS = _optional(
    replicas=mostly(st.just(1), st.sampled_from([0, 6, True]), AMBIGUOUS),
    storage=mostly(st.sampled_from(["file", "memory"]), st.just("disk"), AMBIGUOUS),
    retention=mostly(st.sampled_from(["workqueue", "limits", "interest"]), st.just("queue"), AMBIGUOUS),
    duplicate_window=DURATION,
    max_age=st.one_of(st.just(0), DURATION),
    max_bytes=MAX_BYTES,
    max_msgs=LIMIT,
    max_msg_size=MSG_SIZE,
    max_msgs_per_subject=LIMIT,
    discard=mostly(st.sampled_from(["new", "old"]), st.sampled_from(["none", "", True])),
    description=mostly(
        st.text(TEXT, max_size=40),
        st.builds(lambda n: "é" * n, st.integers(2040, 2060)),
        st.builds(lambda n: "x" * n, st.integers(4090, 4100)),
        AMBIGUOUS,
    ),
)


STORE_FIT = 2**32
"""Derived max_bytes above this would exceed the test server's store (a deployment limit, see above)."""


def _derived_too_big(options: dict[str, Any]) -> bool:
    values = [
        options.get("max_msgs_per_subject", DEFAULT_MAX_MSGS_PER_SUBJECT),
        options.get("max_msg_size", DEFAULT_MAX_MSG_SIZE),
    ]
    numbers = [
        int(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and v == v // 1
    ]
    if len(numbers) < 2 or min(numbers) <= 0:
        return False  # refused by the spec, or not derivable: nothing to reserve
    per_subject, size = numbers
    return bool(4 * per_subject * (size + 600) > STORE_FIT)


@st.composite
def pairs(draw: st.DrawFn) -> dict[str, Any]:
    apps = [draw(NAME), draw(NAME)]
    pair: dict[str, Any] = {"stream": draw(NAME), "apps": apps}
    pair |= draw(
        _optional(dlq=mostly(st.booleans(), AMBIGUOUS), consumer=CONSUMER, stream_options=STREAM_OPTIONS)
    )
    options = pair.get("stream_options")
    if isinstance(options, dict) and "max_bytes" not in options and _derived_too_big(options):
        options["max_bytes"] = draw(MAX_BYTES)  # a derived reservation the server's store cannot hold
    if draw(st.booleans()):
        pair["consumer_overrides"] = {draw(st.sampled_from([*apps, "other"])): draw(CONSUMER)}
    if draw(st.integers(0, 19)) == 0:  # a YAML 1.1 merge key, which YAML 1.2 reads as the text "<<"
        pair[Plain("<<")] = {"dlq": True}
    return pair


APP_LIMITS = _optional(connections=MSG_SIZE, subscriptions=MSG_SIZE, payload=MSG_SIZE, data=LIMIT)
CONFIGS = st.builds(
    lambda ps, limits: {"pairs": ps, **limits},
    st.lists(pairs(), min_size=1, max_size=2),
    _optional(app_limits=APP_LIMITS),
)
FIELD_PROBLEM = re.compile(r"^(pairs(\[\d+\])?|app_limits)(\.\S.*)?(: | \(stream )\S", re.DOTALL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(store_dir=tmp_path_factory.mktemp("nats-properties")) as running:
        yield running


def field(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def as_yaml(value: Any, path: list[str | int], plain: list[str]) -> str:
    """`value` as YAML flow text: `Plain` strings unquoted, every other value as JSON (which YAML reads
    alike); the field of each unquoted value is appended to `plain`."""
    if isinstance(value, Plain):
        plain.append(field(path))
        return str(value)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, Plain):
                plain.append(field([*path, key]))
            written = str(key) if isinstance(key, Plain) else json.dumps(str(key))
            items.append(f"{written}: {as_yaml(item, [*path, str(key)], plain)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(as_yaml(item, [*path, i], plain) for i, item in enumerate(value)) + "]"
    return json.dumps(value)


def render(config: dict[str, Any], root: Path) -> tuple[int, str, list[str]]:
    """`jsb-infra render` of `config` written as YAML; also the fields written unquoted."""
    path = root / "config.yaml"
    plain: list[str] = []
    path.write_text(as_yaml(config, [], plain), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["render", str(path), "--out", str(root / "out")])
    return code, err.getvalue(), plain


async def created_as_rendered(url: str, out: Path) -> None:
    """Create every rendered stream and consumer; the server must hold each rendered value."""
    nc = await nats.connect(url)
    admin = JetStreamAdmin(nc)
    streams = sorted(p for p in out.iterdir() if (p / "stream.json").is_file())
    try:
        for stream_dir in streams:
            rendered = json.loads((stream_dir / "stream.json").read_text())
            held = (await admin.create_stream(rendered))["config"]
            assert {k: held.get(k) for k in rendered} == rendered
            for consumer_file in sorted((stream_dir / "consumers").glob("*.json")):
                wanted = json.loads(consumer_file.read_text())
                held = (await admin.create_consumer(rendered["name"], wanted))["config"]
                assert {k: held.get(k) for k in wanted} == wanted
    finally:
        for stream_dir in streams:
            with contextlib.suppress(Exception):
                await admin.delete_stream(json.loads((stream_dir / "stream.json").read_text())["name"])
        await nc.close()


def conf_parses(out: Path, root: Path, config: dict[str, Any]) -> None:
    """nats-server -t accepts the rendered accounts.conf as the whole auth config: as `render` wrote it
    (app accounts without users), and with every app's user (an NKey each) and a deploy user."""
    parsed = parse_config(config)
    layout = account_layout(parsed.pairs, app_limits=parsed.app_limits)
    keys = {account.app: new_user_keypair()[1] for account in layout.apps}
    with_users = render_accounts_conf(layout, keys, DeployUser(nkey=new_user_keypair()[1]))
    for text in ((out / "accounts.conf").read_text(), with_users):
        (root / "accounts.conf").write_text(text, encoding="utf-8")
        server_conf = root / "server.conf"
        server_conf.write_text('include "accounts.conf"\n', encoding="utf-8")
        checked = subprocess.run(
            [nats_server_binary(), "-c", str(server_conf), "-t"], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=CONFIGS)
def test_accepted_means_the_server_holds_it_as_rendered(
    server: LocalNatsServer, config: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        code, err, plain = render(config, root)
        event("refused" if code else "accepted")
        if plain:
            event("an unquoted ambiguous value")
            assert code == 2, "an ambiguous value is never read one way silently"
        if code != 0:
            assert code == 2, err
            lines = err.splitlines()
            assert lines[0].startswith("invalid config:")
            problems = [line.strip() for line in lines[1:]]
            assert problems and all(FIELD_PROBLEM.match(p) for p in problems), problems
            if plain:  # the strict loader stops at the first one: that value's own field, then its place
                assert len(problems) == 1, problems
                assert any(problems[0].startswith(f"{name}: ") for name in plain), (problems, plain)
                assert re.search(r" \(\S*config\.yaml:\d+:\d+\)$", problems[0]), problems
            assert not (root / "out").exists()
            return
        out = root / "out"
        asyncio.run(created_as_rendered(server.url, out))
        conf_parses(out, root, config)
