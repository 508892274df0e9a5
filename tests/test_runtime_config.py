"""Runtime config, envelope and redelivery arithmetic: pure, no server."""

from __future__ import annotations

import json
import uuid

import pytest

from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.outputs import ConsumerOutputs, bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.runtime.config import (
    BridgeConfigError,
    Credentials,
    TlsOptions,
    load_bridge,
    load_credentials,
    parse_bridge,
)
from jsb_infra.runtime.consumer import (
    InMemoryIdempotency,
    intended_redelivery_ns,
    nak_delay_ns,
    progress_interval_s,
    server_nak_extra_ns,
)
from jsb_infra.runtime.envelope import EnvelopeError, decode, encode, new_event, uuid4_str

S = 1_000_000_000
PAIR = parse_pairs([{"stream": "orders-billing-sync", "apps": ["orders", "billing"]}]).pairs[0]
OTHER = parse_pairs([{"stream": "crm-sync", "apps": ["crm", "mail"], "dlq": False}]).pairs[0]


def bridge_doc(app: str = "orders", pair=PAIR) -> dict:
    return bridge_outputs(pair, app, ["nats://127.0.0.1:4222"]).model_dump(mode="json")


def bridges_map() -> dict:
    return {
        PAIR.stream: {app: bridge_doc(app) for app in PAIR.apps},
        OTHER.stream: {"crm": bridge_doc("crm", OTHER)},
    }


def test_single_bridge_dict_round_trips():
    bridge = load_bridge(bridge_doc("billing"), env={})
    assert bridge.app == "billing" and bridge.publish_subject == "billing.sync.orders"
    assert bridge.inbox_prefix == "_INBOX_billing" and bridge.auto_provision is False


def test_bridges_map_file_selects_stream_and_app(tmp_path):
    path = tmp_path / "bridges.json"
    path.write_text(json.dumps(bridges_map()))
    bridge = load_bridge(path, stream=PAIR.stream, app="billing", env={})
    assert (bridge.stream, bridge.app) == (PAIR.stream, "billing")
    # the only app of crm-sync is implied
    assert load_bridge(path, stream="crm-sync", env={}).app == "crm"


def test_all_stack_outputs_and_env_selection(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"bridges": bridges_map(), "servers": ["nats://x"]}))
    env = {"JSB_BRIDGE_FILE": str(path), "JSB_STREAM": PAIR.stream, "JSB_APP": "orders"}
    bridge = load_bridge(env=env)
    assert bridge.app == "orders" and bridge.durable == "orders-workers"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "stream: required"),
        ({"stream": "nope"}, "stream: 'nope' is not in bridges"),
        ({"stream": PAIR.stream}, "app: required"),
        ({"stream": PAIR.stream, "app": "crm"}, "app: 'crm' is not an app of stream"),
    ],
)
def test_selection_errors_name_the_field(kwargs, field):
    with pytest.raises(BridgeConfigError) as err:
        load_bridge(bridges_map(), env={}, **kwargs)
    assert field in str(err.value)


def test_missing_and_wrong_fields_are_named():
    doc = bridge_doc()
    del doc["durable"]
    doc["consumer"]["max_deliver"] = "many"
    with pytest.raises(BridgeConfigError) as err:
        parse_bridge(doc)
    text = str(err.value)
    assert "bridge.durable: Field required" in text
    assert "bridge.consumer.max_deliver" in text


def test_no_bridge_at_all_names_the_env_var():
    with pytest.raises(BridgeConfigError, match="JSB_BRIDGE_FILE"):
        load_bridge(env={})


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(BridgeConfigError, match="bridge: cannot read"):
        load_bridge(tmp_path / "missing.json", env={})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BridgeConfigError, match="is not JSON"):
        load_bridge(bad, env={})


def test_auto_provision_true_is_refused():
    doc = bridge_doc() | {"auto_provision": True}
    with pytest.raises(BridgeConfigError, match="auto_provision: must be false"):
        load_bridge(doc, env={})


def test_schema_version_2_is_refused():
    doc = bridge_doc() | {"schema_version": 2}
    with pytest.raises(BridgeConfigError, match="schema_version: this client reads bridge outputs version 1"):
        load_bridge(doc, env={})


@pytest.mark.parametrize(
    ("consumer", "field"),
    [
        ({"max_deliver": -1}, "bridge.consumer.max_deliver: must be at least 1"),
        ({"max_deliver": 0}, "bridge.consumer.max_deliver: must be at least 1"),
        ({"ack_wait_ns": 30 * S}, "bridge.consumer.ack_wait_ns: must equal backoff_ns[0]"),
        ({"max_deliver": 2}, "bridge.consumer.backoff_ns: has 5 entries but max_deliver is 2"),
        ({"backoff_ns": [S, 0]}, "bridge.consumer.backoff_ns[1]: must be a positive"),
        ({"backoff_ns": [], "ack_wait_ns": 0}, "bridge.consumer.ack_wait_ns: must be a positive"),
    ],
)
def test_consumer_settings_the_client_would_misuse_are_refused(consumer, field):
    doc = bridge_doc()
    doc["consumer"].update(consumer)
    with pytest.raises(BridgeConfigError) as err:
        parse_bridge(doc)
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems


def test_consumer_without_backoff_may_have_any_positive_ack_wait():
    doc = bridge_doc()
    doc["consumer"].update(backoff_ns=[], ack_wait_ns=45 * S, max_deliver=1)
    assert parse_bridge(doc).consumer.ack_wait_ns == 45 * S


def test_bridge_for_another_app_is_refused():
    with pytest.raises(BridgeConfigError, match="app: asked for 'billing' but the bridge is for 'orders'"):
        load_bridge(bridge_doc("orders"), app="billing", env={})


# -- credentials -----------------------------------------------------------------------------------
def test_credentials_from_arguments_and_env():
    seed, public = new_user_keypair()
    assert load_credentials(nkey_seed=seed, env={}).connect_options() == {"nkeys_seed_str": seed}
    assert load_credentials(env={"JSB_NKEY_SEED": seed}).describe() == f"nkey {public}"
    creds = load_credentials(env={"JSB_USER": "u", "JSB_PASSWORD": "p"})
    assert creds.connect_options() == {"user": "u", "password": "p"}
    assert load_credentials(env={"JSB_TOKEN": "t"}).connect_options() == {"token": "t"}
    assert load_credentials(env={}).method == "none"


def test_credentials_map_from_file(tmp_path):
    seeds = {app: new_user_keypair() for app in PAIR.apps}
    doc = {PAIR.stream: {app: {"seed": s, "public_key": p} for app, (s, p) in seeds.items()}}
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(doc))
    creds = load_credentials(credentials=path, stream=PAIR.stream, app="billing", env={})
    assert creds.nkey_seed == seeds["billing"][0]
    via_env = load_credentials(
        env={"JSB_CREDENTIALS_FILE": str(path), "JSB_STREAM": PAIR.stream, "JSB_APP": "orders"}
    )
    assert via_env.nkey_seed == seeds["orders"][0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nkey_seed": "SUnotaseed"}, "credentials.nkey_seed: not a valid NKey user seed"),
        ({"user": "u", "token": "t"}, "credentials: give one of"),
        ({"password": "p"}, "credentials.password: given without a user"),
        ({"creds_file": "/nonexistent.creds"}, "credentials.creds_file: no such file"),
    ],
)
def test_credential_errors_name_the_field(kwargs, field):
    with pytest.raises(BridgeConfigError) as err:
        load_credentials(env={}, **kwargs)
    assert field in str(err.value)


def test_credentials_public_key_must_match_seed():
    seed, _ = new_user_keypair()
    _, other_public = new_user_keypair()
    doc = {PAIR.stream: {"orders": {"seed": seed, "public_key": other_public}}}
    with pytest.raises(BridgeConfigError, match=r"credentials\.orders-billing-sync\.orders\.public_key"):
        load_credentials(credentials=doc, stream=PAIR.stream, app="orders", env={})


# -- envelope ----------------------------------------------------------------------------------------
def test_envelope_round_trip_has_every_field():
    event = new_event("order.created", "order", 42, {"total": 9.5}, producer="orders", trace_id="t-1")
    doc = json.loads(encode(event))
    assert set(doc) == {
        "event_id", "schema_version", "event_type", "producer", "resource_type",
        "resource_id", "occurred_at", "trace_id", "payload",
    }  # fmt: skip
    assert doc["resource_id"] == "42" and doc["occurred_at"].endswith("Z") and len(doc["event_id"]) == 36
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body: not JSON"),
        (b"[1]", "body: must be a JSON object"),
        (b'{"event_id": ""}', "event_id: required"),
    ],
)
def test_malformed_envelopes_name_the_field(body, field):
    with pytest.raises(EnvelopeError, match=field):
        decode(body)


def test_envelope_schema_version_checked():
    doc = json.loads(encode(new_event("a", "b", "c", None, producer="p")))
    doc["schema_version"] = 2
    with pytest.raises(EnvelopeError, match="schema_version"):
        decode(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "payload",
    [None, {"total": 9.5, "lines": [1, "two", None]}, 'naïve "quoted" \u2028 \x00', [], 10**30, True],
)
def test_encode_writes_exactly_what_the_general_json_encoder_writes(payload):
    event = new_event("order.créé", "order", "ä/1", payload, producer="orders", trace_id='t"1')
    expected = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    assert encode(event) == expected
    assert decode(expected) == event


DROP = object()


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("schema_version", True, "schema_version"),
        ("schema_version", 1.0, "schema_version"),
        ("resource_id", 7, "resource_id: required non-empty string"),
        ("trace_id", 5, "trace_id: must be a string or null"),
        ("payload", DROP, "payload: required"),
        ("occurred_at", DROP, "occurred_at: required non-empty string"),
    ],
)
def test_decode_names_the_wrong_field(key, value, field):
    doc = json.loads(encode(new_event("a", "b", "c", None, producer="p")))
    if value is DROP:
        del doc[key]
    else:
        doc[key] = value
    with pytest.raises(EnvelopeError, match=field):
        decode(json.dumps(doc).encode())


def test_event_ids_are_version_4_uuids():
    ids = {uuid4_str() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_in_memory_idempotency_forgets_the_oldest_beyond_its_capacity():
    store = InMemoryIdempotency(capacity=3)
    for event_id in ("a", "b", "c", "b"):  # marking one twice does not take a second slot
        store.mark(event_id)
    assert all(store.seen(x) for x in "abc") and not store.seen("d")
    store.mark("d")
    assert not store.seen("a") and all(store.seen(x) for x in "bcd")
    for event_id in ("e", "f"):
        store.mark(event_id)
    assert [x for x in "abcdef" if store.seen(x)] == ["d", "e", "f"]
    with pytest.raises(ValueError, match="capacity: must be at least 1"):
        InMemoryIdempotency(capacity=0)


# -- nak arithmetic (nats-server server/consumer.go, nak handling) ----------------------------------
def consumer(
    backoff_s: list[float], max_deliver: int = 5, ack_wait_s: float | None = None
) -> ConsumerOutputs:
    backoff = [int(b * S) for b in backoff_s]
    ack_wait = backoff[0] if backoff else int((ack_wait_s or 30) * S)
    return ConsumerOutputs(
        max_deliver=max_deliver, ack_wait_ns=ack_wait, backoff_ns=backoff, max_ack_pending=10
    )


def test_server_extra_matches_the_measured_figures():
    # Measured on nats-server 2.15.1: backoff [1s, 3s, 5s], nak(delay=0.5) waits 0.5, 2.5, 4.5 s,
    # so the server adds 0, 2, 4.
    c = consumer([1, 3, 5])
    assert [server_nak_extra_ns(c, n) for n in (1, 2, 3)] == [0, 2 * S, 4 * S]


def test_nak_delay_makes_the_total_wait_the_backoff_entry():
    c = consumer([1, 2, 3], max_deliver=5)
    for n in range(1, 6):
        total = nak_delay_ns(c, n) + server_nak_extra_ns(c, n)
        assert total == intended_redelivery_ns(c, n)
    assert [intended_redelivery_ns(c, n) for n in range(1, 6)] == [1 * S, 2 * S, 3 * S, 3 * S, 3 * S]
    # A naive nak(delay=backoff[n-1]) would wait 2s too long on the third delivery.
    assert c.backoff_ns[2] + server_nak_extra_ns(c, 3) != intended_redelivery_ns(c, 3)


def test_without_backoff_the_nak_delay_is_ack_wait_and_exact():
    c = consumer([], ack_wait_s=7)
    assert nak_delay_ns(c, 1) == nak_delay_ns(c, 4) == 7 * S


def test_progress_interval_is_below_the_shortest_deadline():
    assert progress_interval_s(consumer([2, 5, 9])) == 1.0


# -- inline bridge, one identity per app, TLS ---------------------------------------------------------


def test_bridge_inline_from_jsb_bridge_json():
    env = {"JSB_BRIDGE_JSON": json.dumps(bridges_map()), "JSB_STREAM": PAIR.stream, "JSB_APP": "billing"}
    bridge = load_bridge(env=env)
    assert bridge.app == "billing" and bridge.stream == PAIR.stream
    with pytest.raises(BridgeConfigError) as err:
        load_bridge(env={"JSB_BRIDGE_JSON": "{not json"})
    assert err.value.problems[0].startswith("bridge: JSB_BRIDGE_JSON is not JSON")


def test_credentials_one_identity_per_app_and_the_older_per_stream_shape():
    seeds = {app: new_user_keypair() for app in ("orders", "billing")}
    per_app = {app: {"public_key": public, "seed": seed} for app, (seed, public) in seeds.items()}
    assert load_credentials(credentials=per_app, app="billing", env={}).nkey_seed == seeds["billing"][0]
    older = {PAIR.stream: per_app}
    assert load_credentials(credentials=older, app="orders", env={}).nkey_seed == seeds["orders"][0]
    outputs = {"bridges": bridges_map(), "credentials": per_app}
    assert load_credentials(credentials=outputs, env={"JSB_APP": "orders"}).nkey_seed == seeds["orders"][0]
    with pytest.raises(BridgeConfigError) as err:
        load_credentials(credentials=per_app, env={})
    assert err.value.problems == [
        "app: required: credentials hold ['billing', 'orders']; pass app= or set JSB_APP"
    ]


def _touch(tmp_path, *names: str) -> dict[str, str]:
    paths = {}
    for name in names:
        (tmp_path / name).write_text("x")
        paths[name] = str(tmp_path / name)
    return paths


def test_tls_from_env_arguments_and_the_credentials_document(tmp_path):
    files = _touch(tmp_path, "ca.pem", "client.pem", "client.key", "other-ca.pem")
    seed, public = new_user_keypair()
    env = {"JSB_NKEY_SEED": seed, "JSB_TLS_CA": files["ca.pem"]}
    creds = load_credentials(env=env)
    assert creds.tls is not None and creds.tls.ca_file == files["ca.pem"] and creds.tls.cert_file is None
    assert creds.describe() == f"nkey {public} over TLS (CA {files['ca.pem']})"

    document = {
        "public_key": public,
        "seed": seed,
        "tls": {"ca": files["ca.pem"], "cert": files["client.pem"], "key": files["client.key"]},
    }
    mtls = load_credentials(credentials=document, env={"JSB_TLS_CA": files["other-ca.pem"]})
    assert mtls.tls is not None and mtls.tls.cert_file == files["client.pem"], "the document's tls wins"
    assert "over mutual TLS" in mtls.describe()

    explicit = load_credentials(credentials=document, tls_ca=files["other-ca.pem"], env={})
    assert explicit.tls is not None and explicit.tls.ca_file == files["other-ca.pem"]


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"tls_cert": "client.pem"}, "credentials.tls: a client certificate needs both cert and key"),
        ({"tls_ca": "missing.pem"}, "credentials.tls.ca: no such file"),
    ],
)
def test_tls_problems_name_the_field(tmp_path, tls, problem):
    files = _touch(tmp_path, "client.pem")
    given = {k: files.get(v, str(tmp_path / v)) for k, v in tls.items()}
    seed, _ = new_user_keypair()
    with pytest.raises(BridgeConfigError) as err:
        load_credentials(nkey_seed=seed, env={}, **given)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_tls_options_reach_nats_connect(tmp_path):
    seed, _ = new_user_keypair()
    creds = load_credentials(nkey_seed=seed, env={})
    assert "tls" not in creds.connect_options()
    with pytest.raises(FileNotFoundError):  # the context is built from the files: a real SSLContext
        Credentials(nkey_seed=seed, tls=TlsOptions(ca_file=str(tmp_path / "gone.pem"))).connect_options()


def test_a_non_utf8_bridge_file_is_a_config_problem(tmp_path):
    path = tmp_path / "bridge.json"
    path.write_bytes(b'{"app": "caf\xe9"}')
    with pytest.raises(BridgeConfigError) as err:
        load_bridge(path, env={})
    assert err.value.problems == [f"bridge: {str(path)!r} is not UTF-8 (byte 0xe9 at offset 12)"]
