"""Management-call retries: what counts as transient, the budget as a deadline, and the idempotency of
creates that makes retrying a create that timed out (but happened) safe, on a real server."""

from __future__ import annotations

import time

import nats
import nats.errors
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER

from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.nats_admin import JetStreamAdmin, JetStreamApiError
from jsb_infra.retry import ManagementUnavailable, RetryPolicy, is_transient, retrying


def api_error(err_code: int, description: str = "x") -> JetStreamApiError:
    return JetStreamApiError("$JS.API.X", {"code": 503, "err_code": err_code, "description": description})


def test_transient_failures_are_elections_and_silence_not_refusals():
    assert is_transient(nats.errors.TimeoutError())
    assert is_transient(nats.errors.NoRespondersError())
    assert is_transient(api_error(10008, "JetStream system temporarily unavailable"))
    assert is_transient(api_error(10124, "stream move already in progress"))
    assert not is_transient(api_error(10058, "stream name already in use with a different configuration"))
    assert not is_transient(api_error(10039, "JetStream not enabled for account"))
    no_peers = api_error(10005, "no suitable peers for placement")
    assert is_transient(no_peers, {"name": "s", "num_replicas": 3})  # a node is down: it may come back
    assert not is_transient(no_peers, {"name": "s", "placement": {"tags": ["nowhere"]}})  # never matches
    assert not is_transient(no_peers, {"config": {"placement": {"cluster": "other"}}})


async def test_the_budget_is_a_deadline_and_the_error_is_one_line():
    calls = 0

    async def silent() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.TimeoutError

    started = time.monotonic()
    with pytest.raises(ManagementUnavailable) as spent:
        await retrying(
            silent, "$JS.API.STREAM.CREATE.s", RetryPolicy(budget=0.6, first_wait=0.05, max_wait=0.1)
        )
    assert 0.6 <= time.monotonic() - started < 1.0
    assert calls >= 4
    text = str(spent.value)
    assert "\n" not in text and text.startswith("$JS.API.STREAM.CREATE.s kept failing for 0.6s")
    assert "no answer (timeout)" in text and "re-running is safe" in text

    outcomes: list[BaseException | str] = [nats.errors.NoRespondersError(), api_error(10008), "ok"]

    async def election() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert await retrying(election, "x", RetryPolicy(budget=5, first_wait=0.01)) == "ok"

    async def closed() -> None:
        raise nats.errors.ConnectionClosedError

    with pytest.raises(ManagementUnavailable, match="connection to every server was lost"):
        await retrying(closed, "x", RetryPolicy(budget=5))

    async def refused() -> None:
        raise api_error(10058)

    with pytest.raises(JetStreamApiError):  # a refusal is not retried
        await retrying(refused, "x", RetryPolicy(budget=5))


async def test_a_repeated_create_with_an_equal_config_succeeds_so_a_timed_out_create_is_recognized(
    make_server,
):
    from jsb_infra.local.server import accounts_config

    server = make_server(accounts_config([], ADMIN_USER, ADMIN_PASSWORD))
    pair = parse_pairs([{"stream": "retry-sync", "apps": ["orders", "billing"]}]).pairs[0]
    nc = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        js = JetStreamAdmin(nc, retry=RetryPolicy(budget=5))
        first = await js.create_stream(stream_config(pair))
        again = await js.create_stream(stream_config(pair))  # what a retry after a lost reply sends
        assert again["created"] == first["created"]
        for config in consumer_configs(pair).values():
            made = await js.create_consumer(pair.stream, config)
            repeated = await js.create_consumer(pair.stream, config)
            assert repeated["created"] == made["created"]
        changed = {**stream_config(pair), "max_msgs": 10}
        with pytest.raises(JetStreamApiError) as differs:  # only an equal config is recognized as done
            await js.create_stream(changed)
        assert differs.value.err_code == 10058
    finally:
        await nc.close()
