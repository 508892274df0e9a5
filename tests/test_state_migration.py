"""The state migration to the app-pair layout, from real exported deployments of both older layouts.

`tests/fixtures/state-before-pair-stream` (made by its generate.py with the real Pulumi CLI and
nats-server) has two pairs sharing the app `orders`: orders/billing (protected, DLQ, consumer
settings of its own, an `id`) and orders/shipping (unprotected, no DLQ), with ServerDocuments and an
AccountsInclude that depend on the credentials. `tests/fixtures/state-pair-stream` is the same stack
in the pair-stream layout (see its README). Both must end in the same app-pair state, with every
stream, consumer and app key recorded as before.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jsb_infra import cli
from jsb_infra.core.credentials import public_key_of
from jsb_infra.core.spec import STORED_CONTEXT, Pair
from jsb_infra.core.topology import consumer_config, dlq_keeper_config, pair_incarnation_key, stream_config
from jsb_infra.deploy.migration.state_migration import (
    APP_ACCOUNTS_TYPE,
    APP_PAIR_TYPE,
    BEFORE_PAIR_STREAM_LAYOUT,
    CONSUMER_TYPE,
    CREDENTIAL_TYPE,
    CREDENTIALS_TYPE,
    LAYOUT,
    PAIR_STREAM_LAYOUT,
    PAIR_STREAM_TYPE,
    SECRET_SIG,
    SERVER_DOCUMENTS_TYPE,
    STREAM_TYPE,
    MigrationRefused,
    SerializedProviders,
    is_secret,
    migrate,
    older_layout_resources,
    unpack_documents,
)
from jsb_infra.nats_admin import normalize

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS = SerializedProviders(
    stream="serialized StreamProvider",
    consumer="serialized ConsumerProvider",
    credential="serialized AppCredentialProvider",
    documents="serialized ServerDocumentsProvider",
    accounts_include="serialized AccountsIncludeProvider",
    signing_key="serialized AccountSigningKeyProvider",
    jetstream_jwt="serialized JetStreamAccountJwtProvider",
    app_jwt="serialized AppAccountJwtProvider",
)
STACK_URN = "urn:pulumi:fleet::jsb::pulumi:pulumi:Stack::jsb-fleet"
PREFIX = "urn:pulumi:fleet::jsb::"
ACCOUNTS_URN = f"{PREFIX}{APP_ACCOUNTS_TYPE}::accounts"
APPS = ["billing", "orders", "shipping"]
PAIRS = {"orders-billing": ["orders", "billing"], "orders-shipping-sync": ["orders", "shipping"]}
LAYOUT_FIXTURES = {
    BEFORE_PAIR_STREAM_LAYOUT: FIXTURES / "state-before-pair-stream",
    PAIR_STREAM_LAYOUT: FIXTURES / "state-pair-stream",
}


def load(layout: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((LAYOUT_FIXTURES[layout] / "deployment.json").read_text())
    return document


@pytest.fixture
def oldest() -> dict[str, Any]:
    return load(BEFORE_PAIR_STREAM_LAYOUT)


@pytest.fixture
def pair_stream() -> dict[str, Any]:
    return load(PAIR_STREAM_LAYOUT)


@pytest.fixture(params=[BEFORE_PAIR_STREAM_LAYOUT, PAIR_STREAM_LAYOUT])
def before(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def resources(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["deployment"]["resources"])


def by_type(document: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r for r in resources(document) if r["type"] == type_]


def by_name(document: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [r for r in resources(document) if r["urn"].endswith(f"::{name}")]
    return found


def references(resource: dict[str, Any]) -> Iterator[str]:
    """The URNs a resource refers to (a provider reference is `<urn>::<id>`)."""
    for key in ("parent", "deletedWith"):
        if resource.get(key):
            yield resource[key]
    if resource.get("provider"):
        yield resource["provider"].rsplit("::", 1)[0]
    yield from resource.get("dependencies") or []
    for urns in (resource.get("propertyDependencies") or {}).values():
        yield from urns


def plain_strings(value: Any) -> Iterator[str]:
    """Every string in `value` outside secret envelopes."""
    if is_secret(value):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from plain_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from plain_strings(item)
    elif isinstance(value, str):
        yield value


def oldest_keys() -> dict[str, tuple[str, str]]:
    """{app: (public key, seed)} as the oldest fixture records them."""
    return {
        r["inputs"]["app"]: (r["outputs"]["public_key"], json.loads(r["outputs"]["seed"]["plaintext"]))
        for r in by_type(load(BEFORE_PAIR_STREAM_LAYOUT), CREDENTIAL_TYPE)
    }


def recorded_objects() -> dict[str, dict[str, Any]]:
    """What the server reported for each stream and consumer, as the oldest fixture records it:
    {stream id or consumer id: outputs}."""
    return {
        r["id"]: r["outputs"]
        for r in resources(load(BEFORE_PAIR_STREAM_LAYOUT))
        if r["type"] in (STREAM_TYPE, CONSUMER_TYPE)
    }


def stored_pair(name: str) -> Pair:
    [stream] = [
        r for r in by_type(load(BEFORE_PAIR_STREAM_LAYOUT), STREAM_TYPE) if r["parent"].endswith(f"::{name}")
    ]
    return Pair.model_validate(normalize(stream["inputs"]["pair"]), context=STORED_CONTEXT)


# -- what both older layouts become ---------------------------------------------------------------------
def test_each_pair_becomes_an_app_pair_with_its_stream_and_a_consumer_per_app(before):
    after, report = migrate(before, PROVIDERS)
    recorded = recorded_objects()
    components = {urn_name(r["urn"]): r for r in by_type(after, APP_PAIR_TYPE)}
    assert sorted(components) == sorted(PAIRS)
    for name, apps in PAIRS.items():
        pair = stored_pair(name)
        component_urn = f"{PREFIX}{APP_PAIR_TYPE}::{name}"
        assert components[name]["urn"] == component_urn and components[name]["parent"] == STACK_URN
        stream = by_name(after, f"{name}-stream")
        assert stream["urn"] == f"{PREFIX}{APP_PAIR_TYPE}${STREAM_TYPE}::{name}-stream"
        assert stream["parent"] == component_urn and stream["id"] == pair.stream
        inputs = {
            "__provider": PROVIDERS.stream,
            "connection": {"stack_config": True},
            "name": pair.stream,
            "config": json.loads(json.dumps(stream_config(pair))),
            "dlq_keeper": json.loads(json.dumps(dlq_keeper_config(pair) or {})),
            "allow_destroy_with_messages": pair.allow_destroy_with_messages,
            "adopt": pair.adopt,
        }
        assert stream["inputs"] == inputs
        old = recorded[pair.stream]
        assert stream["outputs"] == {
            **inputs,
            "config": old["config"],  # the live config, as the server reported it
            "created": old["created"],
            "messages": old["messages"],
            "adopted": old["adopted"],
            "unset": old["unset"],
            "dlq_keeper_present": old["dlq_keeper"],
        }
        assert stream.get("protect", False) == pair.protect
        for app in apps:
            consumer = by_name(after, f"{name}-{app}-consumer")
            config = consumer_config(pair, app)
            old_consumer = recorded[f"{pair.stream}/{config['durable_name']}"]
            assert consumer["urn"] == f"{PREFIX}{APP_PAIR_TYPE}${CONSUMER_TYPE}::{name}-{app}-consumer"
            assert consumer["parent"] == component_urn
            assert consumer["id"] == f"{pair.stream}/{config['durable_name']}"
            consumer_inputs = {
                "__provider": PROVIDERS.consumer,
                "connection": {"stack_config": True},
                "stream": pair.stream,
                "durable": config["durable_name"],
                "config": json.loads(json.dumps(config)),
                "stream_incarnation": pair_incarnation_key(pair),
                "stream_created": old["created"],
                "stream_replicas": pair.stream_options.replicas,
                "allow_destroy_with_messages": pair.allow_destroy_with_messages,
                "adopt": pair.adopt,
            }
            assert consumer["inputs"] == consumer_inputs
            assert consumer["outputs"] == {
                **consumer_inputs,
                "config": old_consumer["config"],
                "created": old_consumer["created"],
                "adopted": old_consumer["adopted"],
                "unset": old_consumer["unset"],
            }
            assert consumer["dependencies"] == [stream["urn"]]
            assert consumer["propertyDependencies"]["stream_created"] == [stream["urn"]]
            assert consumer.get("protect", False) == pair.protect
    assert pair_incarnation_key(stored_pair("orders-billing")) == "orders-billing-sync/file/workqueue"
    assert len(report.pairs) == 2 and "orders-billing" in report.pairs[0]
    assert not by_type(after, PAIR_STREAM_TYPE) and not by_type(
        after, "pulumi-python:dynamic/jsb:PermissionDocument"
    )


def test_every_app_keeps_its_key_and_seed_under_app_accounts(before):
    after, report = migrate(before, PROVIDERS)
    [accounts] = by_type(after, APP_ACCOUNTS_TYPE)
    assert accounts["urn"] == ACCOUNTS_URN and accounts["parent"] == STACK_URN and accounts["custom"] is False
    credentials = {r["inputs"]["app"]: r for r in by_type(after, CREDENTIAL_TYPE)}
    assert sorted(credentials) == APPS
    for app, (public_key, seed) in oldest_keys().items():
        credential = credentials[app]
        assert (
            credential["urn"] == f"{PREFIX}{APP_ACCOUNTS_TYPE}${CREDENTIAL_TYPE}::accounts-{app}-credential"
        )
        assert credential["parent"] == ACCOUNTS_URN
        assert credential["id"] == credential["outputs"]["public_key"] == public_key
        assert credential["inputs"] == {"__provider": PROVIDERS.credential, "app": app}
        assert is_secret(credential["outputs"]["seed"])
        assert json.loads(credential["outputs"]["seed"]["plaintext"]) == seed
        assert public_key_of(seed) == public_key
        assert credential["additionalSecretOutputs"] == ["seed"]
    assert not by_type(after, CREDENTIALS_TYPE)
    assert report.credentials and "3 AppCredential (billing, orders, shipping)" in report.credentials[0]


def test_documents_and_the_include_move_under_app_accounts_with_their_texts(before):
    original = by_name(load(BEFORE_PAIR_STREAM_LAYOUT), "server-documents")
    after, report = migrate(before, PROVIDERS)
    documents = by_name(after, "accounts-server-documents")
    assert (
        documents["urn"] == f"{PREFIX}{APP_ACCOUNTS_TYPE}${SERVER_DOCUMENTS_TYPE}::accounts-server-documents"
    )
    assert documents["parent"] == ACCOUNTS_URN and documents["id"] == "server-documents"
    assert documents["inputs"] == {
        "__provider": PROVIDERS.documents,
        "documents": original["inputs"]["documents"],  # no output_dir: the stack config's, as before
    }
    assert documents["outputs"] == {
        "__provider": PROVIDERS.documents,
        "files": original["outputs"]["files"],
        "digests": original["outputs"]["digests"],
    }
    credential_urns = sorted(r["urn"] for r in by_type(after, CREDENTIAL_TYPE))
    assert sorted(documents["dependencies"]) == credential_urns
    assert sorted(documents["propertyDependencies"]["documents"]) == credential_urns
    assert set(documents["propertyDependencies"]) == {"__provider", "documents"}
    include = by_name(after, "accounts-include")
    assert include["parent"] == ACCOUNTS_URN and include["inputs"]["__provider"] == PROVIDERS.accounts_include
    assert sorted(include["propertyDependencies"]["text"]) == credential_urns
    assert {k: v for k, v in include["outputs"].items() if k != "__provider"} == {
        k: v
        for k, v in by_name(load(BEFORE_PAIR_STREAM_LAYOUT), "accounts-include")["outputs"].items()
        if k != "__provider"
    }
    assert sorted(report.moved) == [
        "AccountsInclude 'accounts-include': moved under AppAccounts 'accounts'",
        "ServerDocuments 'server-documents': moved under AppAccounts 'accounts'",
    ]


def test_every_reference_is_to_a_resource_before_it_and_no_seed_is_in_plain_text(before):
    after, _ = migrate(before, PROVIDERS)
    seen: set[str] = set()
    for resource in resources(after):
        for urn in references(resource):
            assert urn in seen, f"{resource['urn']} refers to {urn}, which is not before it"
        seen.add(resource["urn"])
    assert len(seen) == len(resources(after))  # no URN twice
    seeds = [seed for _, seed in oldest_keys().values()]
    assert [s for s in plain_strings(after) if any(seed in s for seed in seeds)] == []
    stack = by_name(after, "jsb-fleet")
    assert stack["outputs"] == {**by_name(before, "jsb-fleet")["outputs"], "layout": LAYOUT}
    assert after["deployment"]["secrets_providers"] == before["deployment"]["secrets_providers"]
    assert by_name(after, "default") == by_name(before, "default")  # the provider resource


def test_both_older_layouts_end_in_the_same_state(oldest, pair_stream):
    def comparable(document: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for r in resources(document):
            r = {
                k: v for k, v in r.items() if k not in ("created", "modified", "sourcePosition", "stackTrace")
            }
            if r["type"] == APP_PAIR_TYPE:
                r.pop("outputs", None)  # the old components' registered outputs, not compared by the engine
            out[r["urn"]] = r
        return out

    from_oldest, _ = migrate(oldest, PROVIDERS)
    from_pair_stream, _ = migrate(pair_stream, PROVIDERS)
    assert comparable(from_oldest) == comparable(from_pair_stream)


def test_migrating_twice_changes_nothing_and_the_input_is_untouched(before):
    pristine = copy.deepcopy(before)
    after, first = migrate(before, PROVIDERS)
    assert before == pristine
    assert first.changed

    again, second = migrate(after, no_providers)
    assert again == after
    assert not second.changed
    assert second.lines() == ["nothing to migrate: the state already has the app-pair layout"]


def test_the_older_layouts_are_told_apart_from_what_the_engine_reads(before):
    def engine_view(document: dict[str, Any]) -> dict[str, Any]:
        return {r["urn"]: {"type": r["type"], "outputs": r.get("outputs") or {}} for r in resources(document)}

    found = older_layout_resources(engine_view(before))
    layout = by_name(before, "jsb-fleet")["outputs"].get("layout") or BEFORE_PAIR_STREAM_LAYOUT
    assert layout in found
    after, _ = migrate(before, PROVIDERS)
    assert older_layout_resources(engine_view(after)) == {}


# -- refusals -------------------------------------------------------------------------------------------
def no_providers() -> SerializedProviders:
    raise AssertionError("the providers are needed only for a deployment that migrates")


def refused(document: dict[str, Any]) -> str:
    pristine = copy.deepcopy(document)
    with pytest.raises(MigrationRefused) as err:
        migrate(document, no_providers)
    assert document == pristine
    return str(err.value)


def drop(document: dict[str, Any], name: str) -> dict[str, Any]:
    document["deployment"]["resources"] = [
        r for r in resources(document) if not r["urn"].endswith(f"::{name}")
    ]
    return document


def test_a_pair_stream_missing_a_consumer_is_refused_naming_the_app(pair_stream):
    del by_name(pair_stream, "orders-billing")["outputs"]["consumers"]["billing"]
    assert "PairStream 'orders-billing': no consumer recorded for app(s) billing" in refused(pair_stream)


def test_a_pair_stream_whose_stream_is_not_its_pairs_is_refused(pair_stream):
    by_name(pair_stream, "orders-shipping-sync")["outputs"]["stream"]["name"] = "elsewhere"
    assert "PairStream 'orders-shipping-sync': records stream 'elsewhere'" in refused(pair_stream)


def test_a_seed_that_is_not_its_key_is_refused(pair_stream):
    keys = by_name(pair_stream, "app-credentials")["outputs"]["public_keys"]
    keys["billing"] = keys["orders"]
    assert (
        "AppCredentials 'app-credentials': app 'billing': its seed is not the seed of its public key"
        in refused(pair_stream)
    )


def test_an_encrypted_export_is_refused_naming_the_flag(pair_stream):
    credentials = by_name(pair_stream, "app-credentials")
    credentials["outputs"]["seeds"] = {
        SECRET_SIG: credentials["outputs"]["seeds"][SECRET_SIG],
        "ciphertext": "v1:x",
    }
    assert "export the stack with `pulumi stack export --show-secrets`" in refused(pair_stream)


def test_documents_that_do_not_match_their_digests_are_refused(pair_stream):
    by_name(pair_stream, "server-documents")["outputs"]["digests"]["accounts.conf"] = "sha256:00"
    assert (
        "ServerDocuments 'server-documents': its recorded digests are not those of its documents"
        in refused(pair_stream)
    )


def test_a_consumer_of_an_earlier_stream_is_refused(oldest):
    by_name(oldest, "orders-billing-orders-consumer")["outputs"]["stream_created"] = "2026-01-01T00:00:00Z"
    assert "Consumer 'orders-billing-orders-consumer': records stream_created" in refused(oldest)


def test_the_older_layouts_own_refusals_still_apply(oldest):
    message = refused(drop(copy.deepcopy(oldest), "orders-billing-billing-consumer"))
    assert "AppPair 'orders-billing': no Consumer for app(s) billing" in message
    message = refused(drop(oldest, "orders-shipping-sync-stream"))
    assert "Consumer 'orders-shipping-sync-orders-consumer': a Consumer without its Stream" in message


def test_unsettled_mixed_or_unknown_states_are_refused(oldest, pair_stream):
    pending = copy.deepcopy(pair_stream)
    pending["deployment"]["pending_operations"] = [{"resource": {}, "type": "creating"}]
    assert "pending operations" in refused(pending)

    replacing = copy.deepcopy(pair_stream)
    by_name(replacing, "orders-billing")["pendingReplacement"] = True
    assert "PairStream 'orders-billing': marked pendingReplacement" in refused(replacing)

    after, _ = migrate(pair_stream, PROVIDERS)
    mixed = copy.deepcopy(after)
    mixed["deployment"]["resources"].append(by_name(pair_stream, "app-credentials"))
    assert (
        "the stack outputs say layout 'app-pair' but the state holds resources of an older layout"
        in refused(mixed)
    )

    both = copy.deepcopy(pair_stream)
    both["deployment"]["resources"].append(by_name(oldest, "shipping-credential"))
    assert "of the layout before pair-stream (AppCredential 'shipping-credential'" in refused(both)

    unknown = copy.deepcopy(after)
    by_name(unknown, "jsb-fleet")["outputs"]["layout"] = "something-else"
    assert "layout is 'something-else'" in refused(unknown)


def test_a_bundle_is_unpacked_into_the_documents(pair_stream):
    documents = by_name(pair_stream, "server-documents")
    texts = unpack_documents(documents["inputs"]["bundle"])
    after, _ = migrate(pair_stream, PROVIDERS)
    assert by_name(after, "accounts-server-documents")["inputs"]["documents"] == texts
    assert set(texts) == set(documents["inputs"]["digests"])


def test_a_jwt_mode_stack_gets_app_pairs_and_keeps_its_identities(pair_stream):
    """JWT mode: no AppCredentials; the JWT resources move under the AppAccounts, unchanged."""
    credentials_urn = by_name(pair_stream, "app-credentials")["urn"]
    for resource in resources(pair_stream):
        resource["dependencies"] = [u for u in resource.get("dependencies") or [] if u != credentials_urn]
        for prop, urns in (resource.get("propertyDependencies") or {}).items():
            resource["propertyDependencies"][prop] = [u for u in urns if u != credentials_urn]
    drop(pair_stream, "app-credentials")
    jwt = {
        "urn": f"{PREFIX}pulumi-python:dynamic/jsb:AppAccountJwt::billing-account",
        "custom": True,
        "id": "ABILLING",
        "type": "pulumi-python:dynamic/jsb:AppAccountJwt",
        "inputs": {"__provider": "jwt provider", "app": "billing"},
        "outputs": {"__provider": "jwt provider", "app": "billing", "jwt": "eyJ"},
        "parent": STACK_URN,
    }
    pair_stream["deployment"]["resources"].append(jwt)

    after, report = migrate(pair_stream, PROVIDERS)
    assert len(by_type(after, APP_PAIR_TYPE)) == 2
    assert by_type(after, CREDENTIAL_TYPE) == [] and report.credentials == []
    moved = by_name(after, "accounts-billing-account")
    provider = PROVIDERS.app_jwt
    assert moved == {
        **jwt,
        "urn": f"{PREFIX}{APP_ACCOUNTS_TYPE}$"
        + "pulumi-python:dynamic/jsb:AppAccountJwt::accounts-billing-account",
        "parent": ACCOUNTS_URN,
        "inputs": {**jwt["inputs"], "__provider": provider},
        "outputs": {**jwt["outputs"], "__provider": provider},
    }


def test_the_command_without_a_pulumi_cli_says_which_it_tried(tmp_path, capsys):
    missing = tmp_path / "no-pulumi-here"
    assert cli.main(["migrate-state", "--stack", "fleet", "--pulumi", str(missing)]) == 1
    assert (
        f"migrate-state: cannot run {str(missing)!r} (give the CLI with --pulumi)" in capsys.readouterr().err
    )


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]
