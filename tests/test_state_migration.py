"""The state migration to PairStream, on a real exported deployment of the old layout.

The fixture (tests/fixtures/state-before-pair-stream, made by its generate.py with the real Pulumi CLI
and nats-server) has two pairs sharing the app `orders`: orders/billing (protected, DLQ, consumer
settings of its own, an `id`) and orders/shipping (unprotected, no DLQ), with ServerDocuments and an
AccountsInclude that depend on the credentials.
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
from jsb_infra.deploy.migration.state_migration import (
    APP_PAIR_TYPE,
    CONSUMER_TYPE,
    CREDENTIAL_TYPE,
    CREDENTIALS_TYPE,
    PAIR_STREAM_TYPE,
    SECRET_SIG,
    STREAM_TYPE,
    MigrationRefused,
    SerializedProviders,
    is_secret,
    migrate,
)

FIXTURE = Path(__file__).parent / "fixtures" / "state-before-pair-stream"
PROVIDERS = SerializedProviders(pair_stream="serialized PairStreamProvider", credentials="serialized creds")
STACK_URN = "urn:pulumi:fleet::jsb::pulumi:pulumi:Stack::jsb-fleet"
PREFIX = "urn:pulumi:fleet::jsb::"
APPS = ["billing", "orders", "shipping"]


@pytest.fixture
def before() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURE / "deployment.json").read_text())
    return document


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


def old_seeds(before: dict[str, Any]) -> dict[str, str]:
    return {
        r["inputs"]["app"]: json.loads(r["outputs"]["seed"]["plaintext"])
        for r in by_type(before, CREDENTIAL_TYPE)
    }


def test_each_pair_becomes_one_pair_stream_holding_its_stream_and_consumers(before):
    after, report = migrate(before, PROVIDERS)
    pair_streams = {r["urn"]: r for r in by_type(after, PAIR_STREAM_TYPE)}
    assert sorted(pair_streams) == [
        f"{PREFIX}{PAIR_STREAM_TYPE}::orders-billing",  # the pair's `id`, the old component's name
        f"{PREFIX}{PAIR_STREAM_TYPE}::orders-shipping-sync",
    ]
    for old_stream in by_type(before, STREAM_TYPE):
        component = old_stream["parent"].rsplit("::", 1)[1]
        new = pair_streams[f"{PREFIX}{PAIR_STREAM_TYPE}::{component}"]
        assert new["id"] == old_stream["id"] == old_stream["outputs"]["name"]
        assert new["parent"] == STACK_URN and new["custom"] is True
        assert new["provider"] == old_stream["provider"]
        assert new.get("protect", False) == old_stream.get("protect", False)
        assert new["inputs"] == {"__provider": PROVIDERS.pair_stream, "pair": old_stream["inputs"]["pair"]}
        assert set(new["outputs"]) == {"__provider", "pair", "stream", "consumers"}
        assert new["outputs"]["pair"] == old_stream["inputs"]["pair"]
        stream_outputs = {k: v for k, v in old_stream["outputs"].items() if k not in ("__provider", "pair")}
        assert new["outputs"]["stream"] == stream_outputs
        old_consumers = [c for c in by_type(before, CONSUMER_TYPE) if c["parent"] == old_stream["parent"]]
        assert sorted(new["outputs"]["consumers"]) == sorted(old_stream["inputs"]["pair"]["apps"])
        for consumer in old_consumers:
            kept = new["outputs"]["consumers"][consumer["inputs"]["app"]]
            assert kept == {
                k: v
                for k, v in consumer["outputs"].items()
                if k not in ("__provider", "pair", "stream_created")
            }
            assert kept["created"] == consumer["outputs"]["created"]  # the server's object, as recorded
    protected = {r["urn"].rsplit("::", 1)[1]: r.get("protect", False) for r in pair_streams.values()}
    assert protected == {"orders-billing": True, "orders-shipping-sync": False}
    assert len(report.pairs) == 2 and "orders-billing" in report.pairs[0]


def test_all_credentials_become_one_app_credentials_with_the_same_keys_and_secret_seeds(before):
    after, report = migrate(before, PROVIDERS)
    [creds] = by_type(after, CREDENTIALS_TYPE)
    assert creds["urn"] == f"{PREFIX}{CREDENTIALS_TYPE}::app-credentials" and creds["id"] == "app-credentials"
    assert creds["inputs"] == {"__provider": PROVIDERS.credentials, "apps": APPS}
    assert creds["additionalSecretOutputs"] == ["seeds"]
    assert creds["outputs"]["apps"] == APPS
    old = {r["inputs"]["app"]: r for r in by_type(before, CREDENTIAL_TYPE)}
    assert creds["outputs"]["public_keys"] == {app: old[app]["outputs"]["public_key"] for app in APPS}
    assert creds["outputs"]["public_keys"]["orders"] == old["orders"]["id"]  # one key for both of its pairs
    assert is_secret(creds["outputs"]["seeds"])
    seeds = json.loads(creds["outputs"]["seeds"]["plaintext"])
    assert seeds == old_seeds(before)
    assert {app: public_key_of(seed) for app, seed in seeds.items()} == creds["outputs"]["public_keys"]
    assert report.credentials == [
        "3 AppCredential (billing, orders, shipping) -> AppCredentials 'app-credentials' (seeds secret)"
    ]


def test_no_seed_is_outside_a_secret_and_the_other_resources_are_kept(before):
    after, _ = migrate(before, PROVIDERS)
    seeds = old_seeds(before).values()
    leaked = [s for s in plain_strings(after) if any(seed in s for seed in seeds)]
    assert leaked == []
    kept_before = {
        r["urn"]: r
        for r in resources(before)
        if r["type"] not in (APP_PAIR_TYPE, STREAM_TYPE, CONSUMER_TYPE, CREDENTIAL_TYPE)
    }
    kept_after = {
        r["urn"]: r for r in resources(after) if r["type"] not in (PAIR_STREAM_TYPE, CREDENTIALS_TYPE)
    }
    assert sorted(kept_after) == sorted(kept_before)
    for urn, old in kept_before.items():
        new = kept_after[urn]
        # only references and the stack's layout output may differ
        ignore = {"dependencies", "propertyDependencies", "outputs"}
        assert {k: v for k, v in new.items() if k not in ignore} == {
            k: v for k, v in old.items() if k not in ignore
        }
        if old["type"] != "pulumi:pulumi:Stack":
            assert new.get("outputs") == old.get("outputs")
    stack = by_name(after, "jsb-fleet")
    assert stack["outputs"] == {**by_name(before, "jsb-fleet")["outputs"], "layout": "pair-stream"}
    assert after["deployment"]["secrets_providers"] == before["deployment"]["secrets_providers"]


def test_references_point_at_new_resources_and_come_after_them(before):
    after, report = migrate(before, PROVIDERS)
    creds_urn = f"{PREFIX}{CREDENTIALS_TYPE}::app-credentials"
    documents = by_name(after, "server-documents")
    assert documents["dependencies"] == [creds_urn]
    assert documents["propertyDependencies"]["documents"] == [creds_urn]
    assert by_name(after, "accounts-include")["dependencies"] == [creds_urn]
    assert sorted(report.rewritten) == [
        "AccountsInclude 'accounts-include': references point at the new resources",
        "ServerDocuments 'server-documents': references point at the new resources",
    ]
    seen: set[str] = set()
    for resource in resources(after):
        for urn in references(resource):
            assert urn in seen, f"{resource['urn']} refers to {urn}, which is not before it"
        seen.add(resource["urn"])
    assert not any(
        r["type"] in (APP_PAIR_TYPE, STREAM_TYPE, CONSUMER_TYPE, CREDENTIAL_TYPE) for r in resources(after)
    )


def test_migrating_twice_changes_nothing_and_the_input_is_untouched(before):
    pristine = copy.deepcopy(before)
    after, first = migrate(before, PROVIDERS)
    assert before == pristine
    assert first.changed

    again, second = migrate(after, no_providers)
    assert again == after
    assert not second.changed
    assert second.lines() == ["nothing to migrate: the state already has the pair-stream layout"]


def no_providers() -> SerializedProviders:
    raise AssertionError("the providers are needed only for a deployment that migrates")


def refused(document: dict[str, Any]) -> str:
    with pytest.raises(MigrationRefused) as err:
        migrate(document, no_providers)
    return str(err.value)


def drop(document: dict[str, Any], name: str) -> dict[str, Any]:
    document["deployment"]["resources"] = [
        r for r in resources(document) if not r["urn"].endswith(f"::{name}")
    ]
    return document


def test_a_consumer_without_its_stream_is_refused(before):
    message = refused(drop(before, "orders-shipping-sync-stream"))
    assert "Consumer 'orders-shipping-sync-orders-consumer': a Consumer without its Stream" in message
    assert "Consumer 'orders-shipping-sync-shipping-consumer': a Consumer without its Stream" in message


def test_a_missing_consumer_is_refused_naming_the_app(before):
    message = refused(drop(before, "orders-billing-billing-consumer"))
    assert "AppPair 'orders-billing': no Consumer for app(s) billing" in message


def test_two_credentials_for_one_app_are_refused(before):
    [orders] = [r for r in by_type(before, CREDENTIAL_TYPE) if r["inputs"]["app"] == "orders"]
    twin = {**copy.deepcopy(orders), "urn": orders["urn"].replace("orders-credential", "orders-credential-2")}
    before["deployment"]["resources"].append(twin)
    assert "app 'orders': two credentials" in refused(before)


def test_a_consumer_of_another_stream_or_app_is_refused(before):
    consumer = by_name(before, "orders-billing-billing-consumer")
    consumer["outputs"]["stream"] = "elsewhere"
    assert "is on stream 'elsewhere', its pair's Stream is 'orders-billing-sync'" in refused(before)
    consumer["outputs"]["stream"] = "orders-billing-sync"
    consumer["inputs"]["app"] = "shipping"
    assert "app 'shipping' is not an app of the pair (orders, billing)" in refused(before)


def test_an_encrypted_export_is_refused_naming_the_flag(before):
    credential = by_name(before, "billing-credential")
    credential["outputs"]["seed"] = {
        SECRET_SIG: credential["outputs"]["seed"][SECRET_SIG],
        "ciphertext": "v1:x",
    }
    assert "export the stack with `pulumi stack export --show-secrets`" in refused(before)


def test_a_seed_that_is_not_its_key_is_refused(before):
    by_name(before, "billing-credential")["outputs"]["public_key"] = by_name(before, "orders-credential")[
        "id"
    ]
    assert "AppCredential 'billing-credential': its seed is not the seed of its public key" in refused(before)


def test_unsettled_or_half_migrated_states_are_refused(before):
    pending = copy.deepcopy(before)
    pending["deployment"]["pending_operations"] = [{"resource": {}, "type": "creating"}]
    assert "pending operations" in refused(pending)

    replacing = copy.deepcopy(before)
    by_name(replacing, "orders-billing-stream")["delete"] = True
    assert "Stream 'orders-billing-stream': marked delete" in refused(replacing)

    after, _ = migrate(before, PROVIDERS)
    mixed = copy.deepcopy(after)
    mixed["deployment"]["resources"].append(by_name(before, "shipping-credential"))
    assert "both old resources" in refused(mixed)

    unknown = copy.deepcopy(after)
    by_name(unknown, "jsb-fleet")["outputs"]["layout"] = "something-else"
    assert "layout is 'something-else'" in refused(unknown)


def test_a_stack_without_app_credentials_gets_pair_streams_only(before):
    """JWT mode: the apps' identities are JWT resources, which the migration keeps as they are."""
    old_credentials = {r["urn"] for r in by_type(before, CREDENTIAL_TYPE)}
    for resource in resources(before):
        resource["dependencies"] = [u for u in resource.get("dependencies") or [] if u not in old_credentials]
        for prop, urns in (resource.get("propertyDependencies") or {}).items():
            resource["propertyDependencies"][prop] = [u for u in urns if u not in old_credentials]
    before["deployment"]["resources"] = [r for r in resources(before) if r["urn"] not in old_credentials]

    after, report = migrate(before, PROVIDERS)
    assert len(by_type(after, PAIR_STREAM_TYPE)) == 2
    assert by_type(after, CREDENTIALS_TYPE) == [] and report.credentials == []
    assert by_name(after, "server-documents") == by_name(before, "server-documents")


def test_the_command_without_a_pulumi_cli_says_which_it_tried(tmp_path, capsys):
    missing = tmp_path / "no-pulumi-here"
    assert cli.main(["migrate-state", "--stack", "fleet", "--pulumi", str(missing)]) == 1
    assert (
        f"migrate-state: cannot run {str(missing)!r} (give the CLI with --pulumi)" in capsys.readouterr().err
    )
