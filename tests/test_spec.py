"""The pair spec: every validation rule fed a bad value (field path and rule text checked), the gem's
defaults, the derived ack_wait, and byte-identical rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.permissions import app_permissions, render_claims_json, render_conf
from jsb_infra.core.spec import (
    MAX_APP_LEN,
    MAX_NAME_LEN,
    ConfigError,
    config_json_schema,
    parse_config,
    parse_pairs,
)
from jsb_infra.core.topology import consumer_configs, stream_config

S = 1_000_000_000
NAME_RULE = "names may contain only ASCII letters, digits, '-' and '_'"


def pair(**fields: Any) -> dict[str, Any]:
    return {"stream": "orders-billing-sync", "apps": ["orders", "billing"], **fields}


def problems_of(*pairs: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_pairs(list(pairs))
    assert err.value.problems, "a ConfigError must list its problems"
    return err.value.problems


def only_problem(*pairs: dict[str, Any]) -> str:
    found = problems_of(*pairs)
    assert len(found) == 1, found
    return found[0]


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("orders.billing", "'.'"),
        ("orders*", "'*'"),
        ("orders>", "'>'"),
        ("orders billing", "' '"),
        ("orders\tbilling", "'\\t'"),
        ("orders\nbilling", "'\\n'"),
        ("orders\x01", "'\\x01'"),
        ("orders\x7f", "'\\x7f'"),
        ("orders/billing", "'/'"),
        ("orders\\billing", "'\\\\'"),
        ("ordersé", "'é'"),
        ('orders"x', "'\"'"),
        ("orders#x", "'#'"),
        ("or\u0661ders", "'\u0661'"),
    ],
)
def test_stream_name_forbidden_characters(name, shown):
    problem = only_problem(pair(stream=name))
    assert problem.startswith("pairs[0].stream: stream name ")
    assert f"contains {shown};" in problem
    assert NAME_RULE in problem


@pytest.mark.parametrize(
    ("name", "shown"),
    [("a.b", "'.'"), ("a*", "'*'"), ("a>", "'>'"), ("a b", "' '"), ("a\x00", "'\\x00'"), ("a/b", "'/'")],
)
def test_app_name_forbidden_characters(name, shown):
    problem = only_problem(pair(apps=[name, "billing"]))
    assert problem.startswith("pairs[0].apps: app name ")
    assert f"contains {shown};" in problem and NAME_RULE in problem


def test_empty_names():
    assert only_problem(pair(stream="")) == "pairs[0].stream: stream name must not be empty"
    assert only_problem(pair(apps=["", "billing"])) == "pairs[0].apps: app name must not be empty"


def test_stream_name_length_limit():
    parse_pairs([pair(stream="s" * MAX_NAME_LEN)])
    problem = only_problem(pair(stream="s" * (MAX_NAME_LEN + 1)))
    assert problem.startswith("pairs[0].stream: stream name ")
    assert problem.endswith(f"is {MAX_NAME_LEN + 1} bytes; the limit is {MAX_NAME_LEN}")


def test_app_name_length_leaves_room_for_the_durable_and_its_file_name():
    """The durable `<app>-workers` must fit the server's 255 bytes, and its rendered file
    `consumers/<app>-workers.json` a file system's 255-byte name."""
    longest = names.durable_name("a" * MAX_APP_LEN) + ".json"
    assert len(longest.encode()) == 255
    parse_pairs([pair(apps=["a" * MAX_APP_LEN, "billing"])])
    problem = only_problem(pair(apps=["a" * (MAX_APP_LEN + 1), "billing"]))
    assert problem.startswith("pairs[0].apps: app name ")
    assert problem.endswith(f"is {MAX_APP_LEN + 1} bytes; the limit is {MAX_APP_LEN}")


def test_two_distinct_apps():
    assert only_problem(pair(apps=["orders", "orders"])) == (
        "pairs[0].apps: apps must be two distinct apps, got 'orders' twice"
    )


@pytest.mark.parametrize("apps", [["orders"], ["orders", "billing", "shipping"]])
def test_exactly_two_apps(apps):
    problem = problems_of(pair(apps=apps))[0]
    assert problem.startswith("pairs[0].apps")


def test_app_named_dlq_is_reserved():
    problem = only_problem(pair(apps=["orders", "dlq"]))
    assert problem == (
        "pairs[0].apps: app name 'dlq' is reserved: every app's DLQ subject is '<app>.sync.dlq'"
    )


def test_dollar_is_not_a_name_character():
    assert "contains '$'" in only_problem(pair(apps=["$SYS", "billing"]))


@pytest.mark.parametrize("name", ["_INBOX", "_INBOX_orders"])
def test_reserved_prefixes(name):
    problem = only_problem(pair(apps=[name, "billing"]))
    assert problem.startswith(f"pairs[0].apps: app name {name!r} starts with a reserved prefix")
    assert "'$' belongs to the server, '_INBOX' to reply inboxes" in problem


# -- consumer rules ---------------------------------------------------------------------------------


def test_gem_defaults():
    p = parse_pairs([pair()]).pairs[0]
    assert p.dlq is True
    for app in p.apps:
        c = p.consumer_for(app)
        assert c.max_deliver == 5
        assert c.backoff == (1 * S, 5 * S, 15 * S, 30 * S, 60 * S)
        assert c.ack_wait == 1 * S, "derived from backoff[0]: what the server really runs"
        assert c.max_ack_pending == 25000
    opts = p.stream_options
    assert (opts.retention, opts.storage, opts.replicas) == ("workqueue", "file", 1)
    assert opts.duplicate_window == 120 * S and opts.max_age == 0
    # bounded by default: a flood of one subject is refused, never evicting (docs/spec.md)
    assert (opts.discard, opts.max_msgs_per_subject, opts.max_msg_size) == ("new", 10_000, 16 * 1024)
    assert opts.max_bytes is None, "derived from the per-subject bounds"
    assert p.subjects() == [
        "orders.sync.billing",
        "billing.sync.orders",
        "orders.sync.dlq",
        "billing.sync.dlq",
    ]


def test_backoff_longer_than_max_deliver():
    problem = only_problem(pair(consumer={"max_deliver": 2, "backoff": ["1s", "2s", "3s"]}))
    assert problem == (
        "pairs[0].consumer: backoff has 3 entries but max_deliver is 2; "
        "the server refuses a backoff longer than max_deliver"
    )


def test_backoff_as_long_as_max_deliver_is_fine():
    p = parse_pairs([pair(consumer={"max_deliver": 3, "backoff": ["1s", "2s", "3s"]})]).pairs[0]
    assert p.consumer_for("orders").backoff == (S, 2 * S, 3 * S)


def test_default_backoff_longer_than_a_lowered_max_deliver():
    problem = only_problem(pair(consumer={"max_deliver": 4}))
    assert problem.startswith("pairs[0].consumer: backoff has 5 entries but max_deliver is 4")


def test_override_making_backoff_longer_than_max_deliver():
    problem = only_problem(pair(consumer_overrides={"orders": {"max_deliver": 2}}))
    assert problem == (
        "pairs[0]: consumer_overrides.orders: backoff has 5 entries but max_deliver is 2; "
        "the server refuses a backoff longer than max_deliver"
    )


def test_explicit_ack_wait_contradicting_backoff0_is_refused():
    # The gem's own recipe: --ack-wait 30s --backoff 1s,5s,... (the server would run 1s).
    problem = only_problem(pair(consumer={"ack_wait": "30s", "backoff": ["1s", "5s", "15s", "30s", "60s"]}))
    assert problem == (
        "pairs[0].consumer: ack_wait 30s contradicts backoff[0] 1s: with a backoff the server replaces "
        "ack_wait by backoff[0]; leave ack_wait out (it is derived) or start the backoff with it"
    )


def test_explicit_ack_wait_contradicting_the_default_backoff():
    problem = only_problem(pair(consumer={"ack_wait": "30s"}))
    assert problem.startswith("pairs[0].consumer: ack_wait 30s contradicts backoff[0] 1s")


def test_override_ack_wait_contradicting_backoff0():
    problem = only_problem(pair(consumer_overrides={"billing": {"ack_wait": "10s"}}))
    assert problem.startswith("pairs[0]: consumer_overrides.billing: ack_wait 10s contradicts backoff[0] 1s")


def test_ack_wait_equal_to_backoff0_is_accepted():
    p = parse_pairs([pair(consumer={"ack_wait": "2s", "backoff": ["2s", "4s"]})]).pairs[0]
    assert p.consumer_for("orders").ack_wait == 2 * S


def test_ack_wait_is_derived_from_backoff0_when_omitted():
    p = parse_pairs([pair(consumer={"backoff": ["3s", "9s"]})]).pairs[0]
    assert p.consumer_for("orders").ack_wait == 3 * S
    assert consumer_configs(p)["orders-workers"]["ack_wait"] == 3 * S


def test_explicit_ack_wait_with_empty_backoff_is_allowed():
    p = parse_pairs([pair(consumer={"ack_wait": "45s", "backoff": []})]).pairs[0]
    c = p.consumer_for("billing")
    assert (c.ack_wait, c.backoff) == (45 * S, ())
    assert "backoff" not in consumer_configs(p)["billing-workers"]


def test_no_backoff_and_no_ack_wait_defaults_to_30s():
    p = parse_pairs([pair(consumer={"backoff": []})]).pairs[0]
    assert p.consumer_for("orders").ack_wait == 30 * S


def test_override_changes_only_its_app():
    p = parse_pairs(
        [pair(consumer_overrides={"orders": {"backoff": ["2s"], "max_deliver": 2, "max_ack_pending": 10}})]
    ).pairs[0]
    orders, billing = p.consumer_for("orders"), p.consumer_for("billing")
    assert (orders.ack_wait, orders.backoff, orders.max_deliver, orders.max_ack_pending) == (
        2 * S,
        (2 * S,),
        2,
        10,
    )
    assert (billing.ack_wait, billing.max_deliver, billing.max_ack_pending) == (S, 5, 25000)


def test_override_naming_a_non_member_app():
    problem = only_problem(pair(consumer_overrides={"shipping": {"max_deliver": 9}}))
    assert problem == (
        "pairs[0]: consumer_overrides names 'shipping', which is not one of this pair's apps "
        "['orders', 'billing']"
    )


@pytest.mark.parametrize("value", ["0s", 0])
def test_ack_wait_must_be_positive(value):
    problem = only_problem(pair(consumer={"ack_wait": value, "backoff": []}))
    assert problem == "pairs[0].consumer.ack_wait: ack_wait must be a positive duration, got 0s"


def test_backoff_entries_must_be_positive():
    problem = only_problem(pair(consumer={"backoff": ["1s", "0ms"]}))
    assert problem == "pairs[0].consumer.backoff: backoff[1] must be a positive duration, got 0s"


def test_override_durations_must_be_positive():
    problem = only_problem(pair(consumer_overrides={"orders": {"backoff": [0]}}))
    assert problem == (
        "pairs[0].consumer_overrides.orders.backoff: backoff[0] must be a positive duration, got 0s"
    )


def test_negative_duration_names_the_field():
    problem = only_problem(pair(consumer={"ack_wait": "-5s", "backoff": []}))
    assert problem == "pairs[0].consumer.ack_wait: duration '-5s' is negative; durations must not be negative"


@pytest.mark.parametrize("field", ["max_deliver", "max_ack_pending"])
@pytest.mark.parametrize("value", [0, -1])
def test_counts_at_least_one(field, value):
    problem = only_problem(pair(consumer={field: value, "backoff": []}))
    assert problem == f"pairs[0].consumer.{field}: {field} must be at least 1, got {value}"


def test_override_counts_at_least_one():
    problem = only_problem(pair(consumer_overrides={"orders": {"max_ack_pending": 0}}))
    assert problem == (
        "pairs[0].consumer_overrides.orders.max_ack_pending: max_ack_pending must be at least 1, got 0"
    )


# -- stream options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["0s", "99ms", "99999999ns"])
def test_duplicate_window_has_the_servers_100ms_minimum(window):
    problem = only_problem(pair(stream_options={"duplicate_window": window}))
    assert problem.startswith(
        "pairs[0].stream_options.duplicate_window: duplicate_window must be at least 100ms "
        "(the server's minimum), got "
    )
    assert parse_pairs([pair(stream_options={"duplicate_window": "100ms", "max_age": "100ms"})])


@pytest.mark.parametrize("age", ["1ns", "99ms"])
def test_max_age_is_zero_or_at_least_100ms(age):
    problem = only_problem(pair(stream_options={"max_age": age, "duplicate_window": "100ms"}))
    assert problem.startswith(
        "pairs[0].stream_options.max_age: max_age must be 0 (no age limit) or at least 100ms"
    )
    opts = parse_pairs([pair(stream_options={"max_age": 0})]).pairs[0].stream_options
    assert opts.max_age == 0


@pytest.mark.parametrize(
    ("section", "field", "value", "limit"),
    [
        ("stream_options", "max_bytes", 2**63, 2**53 - 1),
        ("stream_options", "max_msgs", 2**53, 2**53 - 1),
        ("stream_options", "max_msg_size", 2**31, 2**31 - 1),
        ("consumer", "max_deliver", 2**63, 2**53 - 1),
        ("consumer", "max_ack_pending", 2**53, 2**53 - 1),
    ],
)
def test_numbers_the_server_or_pulumi_cannot_hold_exactly_are_refused(section, field, value, limit):
    """max_msg_size is an int32 on the server; the other counts are int64 there, but travel through
    Pulumi's state as 64-bit floats, exact only up to 2^53-1 (2^53+1 would arrive as 2^53)."""
    problem = only_problem(pair(**{section: {field: value}}))
    assert problem.startswith(f"pairs[0].{section}.{field}: {field} must be at most {limit} (")
    assert problem.endswith(f"got {value}")
    parsed = parse_pairs([pair(**{section: {field: limit}})]).pairs[0]
    assert getattr(getattr(parsed, section), field) == limit


@pytest.mark.parametrize("value", [True, 5.5, "5"])
def test_numbers_must_be_written_as_numbers(value):
    problem = only_problem(pair(consumer={"max_deliver": value}))
    assert problem == (
        f"pairs[0].consumer.max_deliver: must be a whole number written in decimal, got {value!r}"
    )


def test_durations_the_server_cannot_hold_are_refused():
    problem = only_problem(pair(stream_options={"max_age": "106752d"}))
    assert problem.startswith("pairs[0].stream_options.max_age: duration '106752d' is ")
    assert "the server holds at most 9223372036854775807 ns" in problem
    assert parse_pairs([pair(stream_options={"max_age": "106751d"})])


def test_description_limit_is_4096_bytes_not_characters():
    parse_pairs([pair(stream_options={"description": "x" * 4096})])
    problem = only_problem(pair(stream_options={"description": "é" * 2049}))
    assert problem == (
        "pairs[0].stream_options.description: description is 4098 bytes of UTF-8; the server's limit is 4096"
    )
    surrogate = only_problem(pair(stream_options={"description": "bad \ud800"}))
    assert surrogate.startswith("pairs[0].stream_options.description: description must be valid Unicode")


def test_duplicate_window_longer_than_max_age():
    problem = only_problem(pair(stream_options={"duplicate_window": "2h", "max_age": "1h"}))
    assert problem == (
        "pairs[0].stream_options: duplicate_window 2h is longer than max_age 1h; "
        "the server refuses a dedupe window longer than max_age"
    )


def test_duplicate_window_equal_to_max_age_and_unlimited_age_are_fine():
    parse_pairs([pair(stream_options={"duplicate_window": "1h", "max_age": "1h"})])
    parse_pairs([pair(stream_options={"duplicate_window": "7d", "max_age": 0})])


def test_interest_retention_with_a_dlq_is_refused():
    """Nothing consumes the DLQ subjects, so an interest stream would drop every parked message."""
    problem = only_problem(pair(stream_options={"retention": "interest"}))
    assert problem.startswith("pairs[0]: stream_options.retention: interest keeps a message only while")
    assert "use workqueue or limits, or set dlq: false" in problem
    parse_pairs([pair(dlq=False, stream_options={"retention": "interest"})])
    parse_pairs([pair(stream_options={"retention": "limits"})])


@pytest.mark.parametrize("replicas", [0, 6, -1])
def test_replicas_range(replicas):
    problem = only_problem(pair(stream_options={"replicas": replicas}))
    assert problem == f"pairs[0].stream_options.replicas: replicas must be between 1 and 5, got {replicas}"


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_replicas_in_range(replicas):
    assert (
        parse_pairs([pair(stream_options={"replicas": replicas})]).pairs[0].stream_options.replicas
        == replicas
    )


@pytest.mark.parametrize("field", ["max_bytes", "max_msgs", "max_msg_size"])
@pytest.mark.parametrize("value", [0, -2])
def test_limits(field, value):
    problem = only_problem(pair(stream_options={field: value}))
    assert (
        problem == f"pairs[0].stream_options.{field}: {field} must be -1 (unlimited) or positive, got {value}"
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("storage", "disk", "pairs[0].stream_options.storage: Input should be 'file' or 'memory'"),
        ("retention", "forever", "pairs[0].stream_options.retention: Input should be 'workqueue', 'limits'"),
    ],
)
def test_storage_and_retention_choices(field, value, expected):
    assert only_problem(pair(stream_options={field: value})).startswith(expected)


# -- unknown keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"dql": True}, "pairs[0].dql"),
        ({"consumer": {"ack_wiat": "1s"}}, "pairs[0].consumer.ack_wiat"),
        ({"stream_options": {"replica": 3}}, "pairs[0].stream_options.replica"),
        (
            {"consumer_overrides": {"orders": {"maxdeliver": 3}}},
            "pairs[0].consumer_overrides.orders.maxdeliver",
        ),
    ],
)
def test_unknown_keys_are_rejected(fields, where):
    assert only_problem(pair(**fields)) == f"{where}: Extra inputs are not permitted"


def test_unknown_top_level_key_is_rejected():
    with pytest.raises(ConfigError) as err:
        parse_config({"pairs": [pair()], "pair": []})
    assert err.value.problems == ["pair: Extra inputs are not permitted"]


def test_empty_config_is_rejected():
    with pytest.raises(ConfigError) as err:
        parse_config({"pairs": []})
    assert err.value.problems[0].startswith("pairs: List should have at least 1 item")


def test_every_problem_is_listed_not_only_the_first():
    found = problems_of(pair(stream="a.b"), pair(stream="c", apps=["x", "x"], stream_options={"replicas": 9}))
    assert [p.split(":")[0] for p in found] == [
        "pairs[0].stream",
        "pairs[1].apps",
        "pairs[1].stream_options.replicas",
    ]


# -- across pairs -----------------------------------------------------------------------------------


def test_duplicate_stream_names_across_pairs():
    problem = only_problem(pair(), pair(apps=["shipping", "invoicing"]))
    assert problem == "pairs[1].stream: 'orders-billing-sync' is already the stream of pairs[0]"


def test_subject_overlap_across_pairs():
    problem = only_problem(pair(), pair(stream="again", apps=["billing", "orders"]))
    assert problem == (
        "pairs[1] (stream 'again') overlaps pairs[0] (stream 'orders-billing-sync') on subject "
        "'billing.sync.orders'; subjects of different streams must not overlap"
    )


def test_dlq_subject_overlap_across_pairs():
    problem = only_problem(pair(), pair(stream="billing-shipping", apps=["billing", "shipping"]))
    assert problem == (
        "pairs[1] (stream 'billing-shipping') overlaps pairs[0] (stream 'orders-billing-sync') on subject "
        "'billing.sync.dlq' (an app in two pairs may have its DLQ on in only one); "
        "subjects of different streams must not overlap"
    )


def test_an_app_in_two_pairs_with_one_dlq_is_fine():
    config = parse_pairs([pair(), pair(stream="billing-shipping", apps=["billing", "shipping"], dlq=False)])
    assert [p.stream for p in config.pairs] == ["orders-billing-sync", "billing-shipping"]
    assert config.pairs[1].subjects() == ["billing.sync.shipping", "shipping.sync.billing"]


# -- derivation, determinism, schema ----------------------------------------------------------------


def test_topology_shape():
    p = parse_pairs([pair()]).pairs[0]
    stream = stream_config(p)
    assert stream["name"] == "orders-billing-sync"
    assert (stream["retention"], stream["storage"], stream["num_replicas"]) == ("workqueue", "file", 1)
    assert stream["subjects"] == p.subjects()
    consumer = consumer_configs(p)["orders-workers"]
    assert consumer["durable_name"] == consumer["name"] == "orders-workers"
    assert consumer["filter_subject"] == "billing.sync.orders"
    assert (consumer["ack_policy"], consumer["deliver_policy"], consumer["replay_policy"]) == (
        "explicit",
        "all",
        "instant",
    )
    assert consumer["backoff"] == [S, 5 * S, 15 * S, 30 * S, 60 * S] and consumer["ack_wait"] == S
    assert "deliver_subject" not in consumer, "pull consumer"


def test_round_trip_through_model_dump():
    original = parse_pairs([pair(consumer_overrides={"orders": {"backoff": ["1m30s"], "max_deliver": 1}})])
    dumped = [p.model_dump(mode="json") for p in original.pairs]
    assert dumped[0]["consumer"]["backoff"] == ["1s", "5s", "15s", "30s", "1m"]
    assert parse_pairs(dumped) == original


def _render_all(spec: list[dict[str, Any]]) -> list[str]:
    out = []
    for p in parse_pairs(spec).pairs:
        out.append(json.dumps(stream_config(p), sort_keys=True))
        out.append(json.dumps(consumer_configs(p), sort_keys=True))
        for app in p.apps:
            perms = app_permissions(p, app)
            out += [render_claims_json(perms), render_conf(perms), render_conf(perms, "OTHER")]
    layout = account_layout(parse_pairs(spec).pairs)
    out.append(render_accounts_conf(layout, {app.app: "U" + "A" * 55 for app in layout.apps}))
    return out


def test_same_spec_renders_byte_identical_documents():
    spec = [pair(), pair(stream="b-s", apps=["billing", "shipping"], dlq=False)]
    first, second = _render_all(spec), _render_all(spec)
    assert first == second
    assert [s.encode() for s in first] == [s.encode() for s in second]


def test_json_schema_is_json_and_describes_pairs():
    schema = config_json_schema()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert "pairs" in schema["properties"]
    assert schema["required"] == ["pairs"]
    assert schema["additionalProperties"] is False
    pair_schema = schema["$defs"]["Pair"]
    assert {"stream", "apps", "dlq", "consumer", "consumer_overrides", "stream_options"} <= set(
        pair_schema["properties"]
    )


def test_inherited_explicit_ack_wait_contradicting_an_override_backoff_is_refused():
    problem = only_problem(
        pair(
            consumer={"ack_wait": "2s", "backoff": []}, consumer_overrides={"orders": {"backoff": ["500ms"]}}
        )
    )
    assert problem.startswith("pairs[0]: consumer_overrides.orders: ack_wait 2s contradicts backoff[0] 500ms")
