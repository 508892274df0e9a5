"""AppCredentials (and the legacy AppCredential), ServerDocuments and the legacy PermissionDocument
through the real provider host; provider settings from config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from provider_host import UNKNOWN, ProviderCallError, ProviderHost

from jsb_infra.core.credentials import public_key_of
from jsb_infra.core.permissions import app_permissions, render_claims_json
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.credential import AppCredentialProvider, AppCredentialsProvider
from jsb_infra.deploy.providers.documents import ServerDocumentsProvider, digest, pack_documents
from jsb_infra.deploy.providers.permission_document import PermissionDocumentProvider
from jsb_infra.deploy.providers.settings import ProviderSettingsError, settings_from_config
from jsb_infra.deploy.providers.stream import StreamProvider

CRED = AppCredentialProvider()
CREDS = AppCredentialsProvider()
DOC = PermissionDocumentProvider()


def pair(**changes: Any) -> dict[str, Any]:
    spec = {"stream": "orders-billing", "apps": ["orders", "billing"], **changes}
    return parse_pairs([spec]).pairs[0].model_dump(mode="json")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "render"


@pytest.fixture
def host(out_dir: Path) -> Iterator[ProviderHost]:
    """No server at all: credentials and documents need none."""
    with ProviderHost() as h:
        h.configure({"jsb:outputDir": str(out_dir)})
        yield h


def test_credential_is_a_fresh_user_key_pair_kept_until_its_owner_changes(host: ProviderHost) -> None:
    id_, outs = host.up(CRED, {"app": "orders"})
    assert outs["public_key"].startswith("U") and outs["seed"].startswith("SU")
    assert public_key_of(outs["seed"]) == outs["public_key"] == id_
    same = host.diff(CRED, id_, outs, {"app": "orders"})
    assert same.changes == "DIFF_NONE"
    moved = host.diff(CRED, id_, outs, {"app": "shipping"})
    assert moved.replaces == ["app"]
    _, other = host.up(CRED, {"app": "orders"})
    assert other["seed"] != outs["seed"], "every credential gets its own key"
    assert host.read(CRED, id_, outs) == (id_, outs)


def test_app_credentials_give_each_app_its_own_key_and_keep_it_while_apps_come_and_go(
    host: ProviderHost,
) -> None:
    id_, outs = host.up(CREDS, {"apps": ["orders", "billing"]})
    assert outs["apps"] == ["billing", "orders"], "stored sorted: the order apps are listed in is no change"
    keys, seeds = outs["public_keys"], outs["seeds"]
    assert set(keys) == set(seeds) == {"orders", "billing"} and keys["orders"] != keys["billing"]
    for app in keys:
        assert public_key_of(seeds[app]) == keys[app] and seeds[app].startswith("SU")
    assert host.diff(CREDS, id_, outs, host.checked(CREDS, {"apps": ["billing", "orders"]})).changes == (
        "DIFF_NONE"
    )

    outcome, changed = host.change(CREDS, id_, outs, {"apps": ["orders", "shipping"]})
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == [], "never a replace: no key is reissued"
    assert (
        changed["public_keys"]["orders"] == keys["orders"] and changed["seeds"]["orders"] == seeds["orders"]
    )
    assert "billing" not in changed["public_keys"] and "billing" not in changed["seeds"]
    assert public_key_of(changed["seeds"]["shipping"]) == changed["public_keys"]["shipping"]
    assert changed["public_keys"]["shipping"] not in keys.values()
    assert host.read(CREDS, id_, changed) == (id_, changed)
    host.delete(CREDS, id_, changed)


@pytest.mark.parametrize(
    ("apps", "rule"),
    [(["orders", "orders"], "each app must be listed once"), (["orders", ""], "must be a list of app names")],
)
def test_app_credentials_check_names_the_field_and_the_rule(
    host: ProviderHost, apps: list[str], rule: str
) -> None:
    _, failures = host.check(CREDS, {"apps": apps})
    assert failures == [("apps", f"apps: {rule}")]


def test_credential_of_a_stack_made_before_the_account_layout_still_reads_and_deletes(
    host: ProviderHost,
) -> None:
    legacy = {"stream": "orders-billing", "app": "orders"}  # one credential per app per pair, back then
    id_, outs = host.up(CRED, legacy)
    assert host.read(CRED, id_, outs)[0] == id_
    host.delete(CRED, id_, outs)


# -- ServerDocuments ------------------------------------------------------------------------------
DOCS = ServerDocumentsProvider()


def docs_props(documents: dict[str, str]) -> dict[str, Any]:
    """The inputs ServerDocuments registers: a digest per document and the texts packed."""
    return {
        "digests": {path: digest(text) for path, text in documents.items()},
        "bundle": pack_documents(documents),
    }


def test_server_documents_are_written_updated_keyed_and_removed(host: ProviderHost, out_dir: Path) -> None:
    documents = {
        "accounts.conf": "accounts {}\n",
        "apps/orders.json": "{}\n",
        "s/permissions/orders.json": "x",
    }
    id_, outs = host.up(DOCS, docs_props(documents))
    assert outs["files"] == sorted(str(out_dir / rel) for rel in documents)
    assert (out_dir / "accounts.conf").read_text() == "accounts {}\n"
    assert host.diff(DOCS, id_, outs, docs_props(documents)).changes == "DIFF_NONE"

    changed = {"accounts.conf": "accounts { A {} }\n", "apps/orders.json": "{}\n"}
    outcome, new_outs = host.change(DOCS, id_, outs, docs_props(changed))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert (out_dir / "accounts.conf").read_text() == "accounts { A {} }\n"
    assert not (out_dir / "s").exists(), "a document that went away is removed, with its empty directories"

    (out_dir / "apps/orders.json").write_text("edited by hand")
    _, refreshed = host.read(DOCS, id_, new_outs)
    assert str(out_dir / "apps/orders.json") not in refreshed["files"]
    assert host.diff(DOCS, id_, refreshed, docs_props(changed)).changes == "DIFF_SOME"
    _, repaired = host.change(DOCS, id_, refreshed, docs_props(changed))
    assert (out_dir / "apps/orders.json").read_text() == "{}\n"

    host.delete(DOCS, id_, repaired)
    assert not out_dir.exists() or not any(out_dir.rglob("*"))


@pytest.mark.parametrize("path", ["../escape.conf", "/etc/passwd", "a/../../b", ""])
def test_server_documents_refuse_paths_outside_the_output_dir(host: ProviderHost, path: str) -> None:
    _, failures = host.check(DOCS, docs_props({path: "x"}))
    assert failures and "must be a relative path inside the output directory" in failures[0][1]


def test_server_documents_refuse_a_bundle_that_does_not_hold_what_the_digests_name(
    host: ProviderHost, out_dir: Path
) -> None:
    documents = {"accounts.conf": "accounts {}\n", "apps/orders.json": "{}\n"}
    tampered = {**docs_props(documents), "bundle": pack_documents({**documents, "accounts.conf": "other"})}
    _, failures = host.check(DOCS, tampered)
    assert failures == [("bundle", "bundle: documents.accounts.conf does not match its digest")]
    missing = {**docs_props(documents), "bundle": pack_documents({"apps/orders.json": "{}\n"})}
    assert host.check(DOCS, missing)[1] == [
        ("bundle", "bundle: must hold exactly the documents named in digests")
    ]
    assert host.check(DOCS, {**docs_props(documents), "bundle": "not packed"})[1][0][0] == "bundle"
    assert not out_dir.exists(), "refused at check: nothing written"


def test_server_documents_state_that_kept_the_texts_diffs_by_digest_without_a_change(
    host: ProviderHost, out_dir: Path
) -> None:
    """State written when the texts were the inputs (and the outputs held only digests and files)."""
    documents = {"accounts.conf": "accounts {}\n", "apps/orders.json": "{}\n"}
    files = sorted(str(out_dir / rel) for rel in documents)
    old_outputs = {"digests": {p: digest(t) for p, t in documents.items()}, "files": files}
    assert host.diff(DOCS, "server-documents", old_outputs, docs_props(documents)).changes == "DIFF_NONE"
    older = {"documents": documents, "files": files}  # before the digests were kept
    assert host.diff(DOCS, "server-documents", older, docs_props(documents)).changes == "DIFF_NONE"


def test_credential_class_declares_the_seed_secret() -> None:
    from jsb_infra.deploy.providers import credential

    assert credential.SECRET_OUTPUTS == ["seed"]
    assert credential.APPS_SECRET_OUTPUTS == ["seeds"]


def doc_props(public_key: str, spec: dict[str, Any] | None = None, app: str = "orders") -> dict[str, Any]:
    return {"pair": spec or pair(), "app": app, "public_key": public_key}


def test_document_renders_and_writes_files_then_updates_and_removes_them(
    host: ProviderHost, out_dir: Path
) -> None:
    _, cred = host.up(CRED, {"stream": "orders-billing", "app": "orders"})
    key = cred["public_key"]
    id_, outs = host.up(DOC, doc_props(key))
    json_path = out_dir / "orders-billing" / "permissions" / "orders.json"
    conf_path = json_path.with_suffix(".conf")
    assert outs["files"] == [str(json_path), str(conf_path)]
    expected_claims = app_permissions(parse_pairs([pair()]).pairs[0], "orders").claims()
    assert outs["claims"] == expected_claims
    assert json.loads(json_path.read_text()) == expected_claims
    assert conf_path.read_text() == outs["conf"] and "APP_orders" in outs["conf"]
    assert "orders.sync.dlq" in outs["conf"]
    assert host.diff(DOC, id_, outs, host.checked(DOC, doc_props(key))).changes == "DIFF_NONE"

    no_dlq = pair(dlq=False)
    outcome, new_outs = host.change(DOC, id_, outs, doc_props(key, no_dlq))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert "orders.sync.dlq" not in new_outs["conf"] and "orders.sync.dlq" not in json_path.read_text()
    assert json_path.read_text() == render_claims_json(
        app_permissions(parse_pairs([no_dlq]).pairs[0], "orders")
    )

    consumer_only = pair(dlq=False, consumer={"max_deliver": 9})
    assert (
        host.diff(DOC, id_, new_outs, host.checked(DOC, doc_props(key, consumer_only))).changes == "DIFF_NONE"
    )

    host.delete(DOC, id_, new_outs)
    assert not json_path.exists() and not conf_path.exists()


def test_document_read_notices_a_deleted_or_edited_file(host: ProviderHost, out_dir: Path) -> None:
    _, cred = host.up(CRED, {"stream": "orders-billing", "app": "billing"})
    id_, outs = host.up(DOC, doc_props(cred["public_key"], app="billing"))
    conf = Path(outs["files"][1])
    conf.write_text("# edited by hand\n")
    _, refreshed = host.read(DOC, id_, outs)
    assert refreshed["files"] == [outs["files"][0]]
    outcome, fixed = host.change(DOC, id_, refreshed, doc_props(cred["public_key"], app="billing"))
    assert outcome.changes == "DIFF_SOME"
    assert conf.read_text() == fixed["conf"] and fixed["files"] == outs["files"]


def test_document_with_an_unknown_key_at_preview_is_an_update(host: ProviderHost) -> None:
    _, cred = host.up(CRED, {"stream": "orders-billing", "app": "orders"})
    id_, outs = host.up(DOC, doc_props(cred["public_key"]))
    inputs, failures = host.check(DOC, doc_props(UNKNOWN))
    assert failures == []
    outcome = host.diff(DOC, id_, outs, inputs)
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []


def test_document_check_names_field_and_rule(host: ProviderHost) -> None:
    _, failures = host.check(DOC, {"pair": pair(), "app": "orders", "public_key": "not-a-key"})
    assert failures == [("public_key", "public_key: must be an NKey user public key (U...)")]
    _, failures = host.check(DOC, {"pair": {**pair(), "apps": ["a", "a"]}, "app": "a", "public_key": "U1"})
    assert failures and failures[0][1].startswith("pair.apps:") and "two distinct apps" in failures[0][1]


def test_without_an_output_dir_nothing_is_written(tmp_path: Path) -> None:
    with ProviderHost() as h:
        h.configure({})
        _, cred = h.up(CRED, {"stream": "s", "app": "a"})
        _, outs = h.up(
            DOC,
            doc_props(
                cred["public_key"],
                parse_pairs([{"stream": "s", "apps": ["a", "b"]}]).pairs[0].model_dump(mode="json"),
                "a",
            ),
        )
        assert outs["files"] == [] and outs["claims"]["sub"] == {"allow": ["_INBOX_a.>"]}


def test_stream_without_servers_configured_says_which_key_to_set() -> None:
    with ProviderHost() as h:
        h.configure({})
        with pytest.raises(ProviderCallError, match="jsb:servers is not set"):
            h.up(StreamProvider(), {"pair": pair()})


# -- settings from the stack config (pure) ---------------------------------------------------------
class _Config(dict):  # type: ignore[type-arg]
    """Stands in for pulumi.dynamic.Config: `get` by full key."""


def test_settings_accept_json_text_and_decoded_values() -> None:
    as_text = settings_from_config(
        _Config({"jsb:servers": '["nats://a:4222"]', "jsb:admin": '{"user": "u", "password": "p"}'})
    )
    decoded = settings_from_config(
        _Config(
            {
                "jsb:servers": ["nats://a:4222"],
                "jsb:admin": {"user": "u", "password": "p"},
                "jsb:outputDir": "x",
            }
        )
    )
    assert as_text.admin_connection() == decoded.admin_connection()
    assert decoded.admin_connection().password == "p" and decoded.output_dir == "x"


def test_settings_errors_name_the_key_and_never_the_value() -> None:
    with pytest.raises(ProviderSettingsError) as err:
        settings_from_config(_Config({"jsb:admin": '{"pasword": "hunter2-secret"}'}))
    assert "jsb:admin: unknown key(s) pasword" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(ProviderSettingsError) as err:
        settings_from_config(_Config({"jsb:admin": '{"password": 12345}'}))
    assert "password must be text" in str(err.value) and "12345" not in str(err.value)
