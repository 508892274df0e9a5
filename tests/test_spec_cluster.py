"""Cluster options of the spec: placement, per-consumer replicas and memory storage; rules named by
field, and what each renders to (the server's own JSON)."""

from __future__ import annotations

from typing import Any

import pytest

from jsb_infra.core.spec import ConfigError, Pair, parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config


def pair(**fields: Any) -> dict[str, Any]:
    return {"stream": "orders-billing-sync", "apps": ["orders", "billing"], **fields}


def parsed(**fields: Any) -> Pair:
    return parse_pairs([pair(**fields)]).pairs[0]


def only_problem(**fields: Any) -> str:
    with pytest.raises(ConfigError) as err:
        parse_pairs([pair(**fields)])
    assert len(err.value.problems) == 1, err.value.problems
    return err.value.problems[0]


def test_placement_renders_only_what_is_set():
    both = parsed(stream_options={"replicas": 3, "placement": {"cluster": "east", "tags": ["ssd", "az1"]}})
    assert stream_config(both)["placement"] == {"cluster": "east", "tags": ["ssd", "az1"]}
    assert stream_config(parsed(stream_options={"placement": {"tags": ["ssd"]}}))["placement"] == {
        "tags": ["ssd"]
    }
    assert "placement" not in stream_config(parsed())


@pytest.mark.parametrize(
    ("placement", "problem"),
    [
        ({}, "pairs[0].stream_options.placement: placement needs a cluster or tags; leave placement out"),
        (
            {"cluster": "a b"},
            "pairs[0].stream_options.placement.cluster: cluster must be a non-empty cluster name",
        ),
        ({"tags": ["ssd", "SSD"]}, "pairs[0].stream_options.placement.tags: tags must be distinct"),
        ({"tags": [" "]}, "pairs[0].stream_options.placement.tags: tags[0] must not be empty"),
        ({"cluster": "c", "preferred": "n1"}, "pairs[0].stream_options.placement.preferred: Extra inputs"),
    ],
)
def test_bad_placement_is_refused_naming_the_field(placement, problem):
    assert only_problem(stream_options={"placement": placement}).startswith(problem)


def test_consumer_replicas_follow_the_stream_unless_set_on_a_limits_stream():
    default = consumer_configs(parsed(stream_options={"replicas": 3}))
    assert all("num_replicas" not in c for c in default.values())  # 0 on the server: follow the stream
    same = consumer_configs(parsed(stream_options={"replicas": 3}, consumer={"replicas": 3}))
    assert all("num_replicas" not in c for c in same.values())  # workqueue: equal is what 0 means
    limits = parsed(
        stream_options={"replicas": 3, "retention": "limits"}, consumer_overrides={"orders": {"replicas": 1}}
    )
    configs = consumer_configs(limits)
    assert configs["orders-workers"]["num_replicas"] == 1 and "num_replicas" not in configs["billing-workers"]


def test_consumer_replicas_rules_name_the_field_and_the_server_rule():
    assert only_problem(stream_options={"replicas": 3}, consumer={"replicas": 1}) == (
        "pairs[0]: consumer.replicas: on a workqueue stream the server requires the consumer's replicas to "
        "equal the stream's (3); leave replicas out to follow the stream"
    )
    assert only_problem(
        stream_options={"retention": "limits"}, consumer_overrides={"billing": {"replicas": 3}}
    ) == (
        "pairs[0]: consumer_overrides.billing.replicas: 3 exceeds the stream's replicas (1); the server "
        "refuses a consumer with more replicas than its stream"
    )
    assert only_problem(consumer={"replicas": 0}).startswith(
        "pairs[0].consumer.replicas: replicas must be between 1 and 5 (leave it out to follow the stream)"
    )


def test_memory_storage_per_consumer():
    spec = parsed(consumer_overrides={"billing": {"memory_storage": True}})
    configs = consumer_configs(spec)
    assert configs["billing-workers"]["mem_storage"] is True
    assert "mem_storage" not in configs["orders-workers"]
    assert (
        consumer_configs(parsed(consumer={"memory_storage": True}))["orders-workers"]["mem_storage"] is True
    )
