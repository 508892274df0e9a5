"""One admin connection per provider host process: shared by concurrent calls, remade after a drop."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from provider_host import ProviderHost, admin_call, admin_server_config, assert_no_secret, stack_config

from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.deploy.providers.consumer import ConsumerProvider, consumer_inputs
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs
from jsb_infra.local.server import LocalNatsServer, free_port

S, C = StreamProvider(), ConsumerProvider()


class MonitoredServer:
    def __init__(self, server: LocalNatsServer, http_port: int):
        self.server, self.http_port = server, http_port

    def total_connections(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/varz", timeout=5) as resp:
            return int(json.load(resp)["total_connections"])


@pytest.fixture
def monitored(make_server: Callable[..., LocalNatsServer]) -> MonitoredServer:
    http_port = free_port()
    return MonitoredServer(make_server(admin_server_config() + f"http: 127.0.0.1:{http_port}\n"), http_port)


@pytest.fixture
def host(monitored: MonitoredServer) -> Iterator[ProviderHost]:
    with ProviderHost() as h:
        h.configure(stack_config(monitored.server.url))
        yield h
        assert_no_secret(h)


def pair(i: int) -> Pair:
    spec = {"stream": f"conn{i}-sync", "apps": [f"left{i}", f"right{i}"], "protect": False}
    return parse_pairs([spec]).pairs[0]


def provision(host: ProviderHost, i: int) -> list[str]:
    """The stream and both consumers of pair i, then a read of each, as `up` and `refresh` do."""
    stream_id, stream = host.up(S, stream_inputs(pair(i)))
    host.read(S, stream_id, stream)
    ids = [stream_id]
    for app in pair(i).apps:
        props = consumer_inputs(pair(i), app, stream["created"])
        consumer_id, outs = host.up(C, props)
        host.read(C, consumer_id, outs)
        ids.append(consumer_id)
    return ids


def test_concurrent_calls_share_one_connection(host: ProviderHost, monitored: MonitoredServer) -> None:
    before = monitored.total_connections()
    with ThreadPoolExecutor(max_workers=6) as pool:  # more callers than the host's 4 gRPC workers
        created = list(pool.map(lambda i: provision(host, i), range(12)))
    assert monitored.total_connections() - before == 1
    assert len(created) == 12
    for i, ids in enumerate(created):
        assert ids[0] == f"conn{i}-sync"
        names = admin_call(monitored.server.url, lambda js, i=i: js.stream_info(f"conn{i}-sync"))
        assert names is not None and names["state"]["consumer_count"] == 3  # 2 apps, the DLQ keeper


def test_a_dropped_connection_is_replaced_at_the_next_call(
    host: ProviderHost, monitored: MonitoredServer
) -> None:
    provision(host, 0)
    monitored.server.stop()  # the store stays: the restarted server still has pair 0
    monitored.server.start()
    before = monitored.total_connections()
    provision(host, 1)
    assert monitored.total_connections() - before == 1
    for i in (0, 1):
        live = admin_call(monitored.server.url, lambda js, i=i: js.stream_info(f"conn{i}-sync"))
        assert live is not None and live["state"]["consumer_count"] == 3  # 2 apps, the DLQ keeper


def test_each_stream_lands_on_the_server_its_connection_names(
    host: ProviderHost, monitored: MonitoredServer, make_server: Callable[..., LocalNatsServer]
) -> None:
    """Two servers, one host: the stack config's and a second one named by a `connection` input (its
    admin read from the stack config key, so no secret enters the inputs). The same stream name on
    both is two streams, each with its own config, each deleted on its own server only."""
    second = make_server(admin_server_config())
    other = {"name": "second", "servers": [second.url], "admin_config_key": "jsb:admin"}
    first_pair = pair(7)
    second_pair = parse_pairs(
        [{**first_pair.model_dump(mode="json"), "stream_options": {"max_msgs": 77}}]
    ).pairs[0]
    a_id, a_outs = host.up(S, stream_inputs(first_pair))  # {"stack_config": true}
    b_id, b_outs = host.up(S, stream_inputs(second_pair, other))
    assert a_outs["connection"] == {"stack_config": True} and b_outs["connection"] == other
    on_first = admin_call(monitored.server.url, lambda js: js.stream_info("conn7-sync"))
    on_second = admin_call(second.url, lambda js: js.stream_info("conn7-sync"))
    assert on_first is not None and on_second is not None
    assert on_first["config"]["max_msgs"] == -1 == a_outs["config"]["max_msgs"]
    assert on_second["config"]["max_msgs"] == 77 == b_outs["config"]["max_msgs"]
    assert on_first["created"] == a_outs["created"] and on_second["created"] == b_outs["created"]

    c_id, c_outs = host.up(C, consumer_inputs(second_pair, "left7", b_outs["created"], other))
    assert admin_call(second.url, lambda js: js.consumer_info("conn7-sync", "left7-workers")) is not None
    assert (
        admin_call(monitored.server.url, lambda js: js.consumer_info("conn7-sync", "left7-workers")) is None
    )
    assert host.read(C, c_id, c_outs)[0] == c_id

    host.delete(S, b_id, b_outs)
    assert admin_call(second.url, lambda js: js.stream_info("conn7-sync")) is None
    assert admin_call(monitored.server.url, lambda js: js.stream_info("conn7-sync")) is not None
    assert host.read(S, a_id, a_outs)[0] == a_id, "the first server's stream is untouched"
