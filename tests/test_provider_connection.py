"""One admin connection per provider host process: shared by concurrent calls, remade after a drop."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from provider_host import ProviderHost, admin_call, admin_server_config, assert_no_secret, stack_config

from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.consumer import ConsumerProvider
from jsb_infra.deploy.providers.stream import StreamProvider
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


def pair(i: int) -> dict[str, Any]:
    spec = {"stream": f"conn{i}-sync", "apps": [f"left{i}", f"right{i}"], "protect": False}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


def provision(host: ProviderHost, i: int) -> list[str]:
    """The stream and both consumers of pair i, then a read of each, as `up` and `refresh` do."""
    stream_id, stream = host.up(S, {"pair": pair(i)})
    host.read(S, stream_id, stream)
    ids = [stream_id]
    for app in pair(i)["apps"]:
        props = {"pair": pair(i), "app": app, "stream_created": stream["created"]}
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
