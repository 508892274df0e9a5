"""AppCredential, ServerDocuments and PermissionDocument
through the real provider host; provider settings from config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from provider_host import UNKNOWN, ProviderCallError, ProviderHost

from jsb_infra.core.credentials import public_key_of
from jsb_infra.core.permissions import app_permissions, permission_document_inputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.credential import AppCredentialProvider
from jsb_infra.deploy.providers.documents import ServerDocumentsProvider, digest
from jsb_infra.deploy.providers.permission_document import PermissionDocumentProvider
from jsb_infra.deploy.providers.settings import ProviderSettingsError, settings_from_config
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs

CRED = AppCredentialProvider()
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
    assert set(outs) == {"app", "public_key", "seed"} and outs["app"] == "orders"
    assert outs["public_key"].startswith("U") and outs["seed"].startswith("SU")
    assert public_key_of(outs["seed"]) == outs["public_key"] == id_
    same = host.diff(CRED, id_, outs, {"app": "orders"})
    assert same.changes == "DIFF_NONE"
    moved = host.diff(CRED, id_, outs, {"app": "shipping"})
    assert moved.replaces == ["app"]
    _, other = host.up(CRED, {"app": "orders"})
    assert other["seed"] != outs["seed"], "every credential gets its own key"
    assert host.read(CRED, id_, outs) == (id_, outs)


def test_credential_of_a_stack_made_before_the_account_layout_still_reads_and_deletes(
    host: ProviderHost,
) -> None:
    legacy = {"stream": "orders-billing", "app": "orders"}  # one credential per app per pair, back then
    id_, outs = host.up(CRED, legacy)
    assert host.read(CRED, id_, outs)[0] == id_
    # its outputs are already those of the app-pair layout: naming the app only is no change
    assert set(outs) == {"app", "public_key", "seed"}
    assert host.diff(CRED, id_, outs, host.checked(CRED, {"app": "orders"})).changes == "DIFF_NONE"
    host.delete(CRED, id_, outs)


# -- ServerDocuments ------------------------------------------------------------------------------
DOCS = ServerDocumentsProvider()


def docs_props(documents: dict[str, str], output_dir: str | None = None) -> dict[str, Any]:
    """The inputs ServerDocuments registers: the texts as they are, and where to write them."""
    return {"documents": documents, **({"output_dir": output_dir} if output_dir else {})}


def test_server_documents_are_written_updated_keyed_and_removed(host: ProviderHost, out_dir: Path) -> None:
    documents = {
        "accounts.conf": "accounts {}\n",
        "apps/orders.json": "{}\n",
        "s/permissions/orders.json": "x",
    }
    id_, outs = host.up(DOCS, docs_props(documents))
    assert outs["files"] == sorted(str(out_dir / rel) for rel in documents)
    assert outs["digests"] == {rel: digest(text) for rel, text in documents.items()}
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


def test_server_documents_go_to_the_output_dir_input_and_a_new_one_moves_them(
    host: ProviderHost, out_dir: Path, tmp_path: Path
) -> None:
    documents = {"accounts.conf": "accounts {}\n", "apps/orders.json": "{}\n"}
    elsewhere = tmp_path / "elsewhere"
    id_, outs = host.up(DOCS, docs_props(documents, str(elsewhere)))
    assert outs["files"] == sorted(str(elsewhere / rel) for rel in documents)
    assert not out_dir.exists(), "the stack config's directory is not used when the input names one"
    assert host.diff(DOCS, id_, outs, docs_props(documents, str(elsewhere))).changes == "DIFF_NONE"
    _, refreshed = host.read(DOCS, id_, outs)
    assert refreshed["files"] == outs["files"], "refresh finds the files under the input's directory"
    outcome, moved = host.change(DOCS, id_, outs, docs_props(documents))  # back to jsb:outputDir
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert moved["files"] == sorted(str(out_dir / rel) for rel in documents)
    assert (out_dir / "accounts.conf").read_text() == "accounts {}\n" and not elsewhere.exists()
    host.delete(DOCS, id_, moved)
    assert not out_dir.exists()


def test_server_documents_with_a_text_unknown_at_preview_change_only_that_document(
    host: ProviderHost,
) -> None:
    documents = {"accounts.conf": "accounts {}\n", "apps/orders.json": "{}\n"}
    id_, outs = host.up(DOCS, docs_props(documents))
    preview = {"documents": {**documents, "accounts.conf": UNKNOWN}}
    inputs, failures = host.check(DOCS, preview)
    assert failures == []
    outcome = host.diff(DOCS, id_, outs, inputs)
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []


@pytest.mark.parametrize("path", ["../escape.conf", "/etc/passwd", "a/../../b", ""])
def test_server_documents_refuse_paths_outside_the_output_dir(host: ProviderHost, path: str) -> None:
    _, failures = host.check(DOCS, docs_props({path: "x"}))
    assert failures and "must be a relative path inside the output directory" in failures[0][1]


def test_server_documents_check_names_the_property(host: ProviderHost, out_dir: Path) -> None:
    assert host.check(DOCS, {"documents": "accounts {}"})[1] == [
        ("documents", "documents: must be an object {path: text}")
    ]
    assert host.check(DOCS, {"documents": {"a.conf": 5}})[1] == [
        ("documents", "documents: 'a.conf' must be text")
    ]
    assert host.check(DOCS, {"documents": {}, "output_dir": ""})[1][0][0] == "output_dir"
    assert not out_dir.exists(), "refused at check: nothing written"


def test_server_documents_state_of_the_bundle_and_older_layouts_diffs_by_digest_without_a_change(
    host: ProviderHost, out_dir: Path
) -> None:
    """Outputs written when the texts were a packed bundle (digests and files, as now), and before
    digests were kept (the texts themselves)."""
    documents = {"accounts.conf": "accounts {}\n", "apps/orders.json": "{}\n"}
    files = sorted(str(out_dir / rel) for rel in documents)
    old_outputs = {"digests": {p: digest(t) for p, t in documents.items()}, "files": files}
    assert host.diff(DOCS, "server-documents", old_outputs, docs_props(documents)).changes == "DIFF_NONE"
    older = {"documents": documents, "files": files}  # before the digests were kept
    assert host.diff(DOCS, "server-documents", older, docs_props(documents)).changes == "DIFF_NONE"


def test_credential_class_declares_the_seed_secret() -> None:
    from jsb_infra.deploy.providers import credential

    assert credential.SECRET_OUTPUTS == ["seed"]


def test_app_credential_merges_the_seed_secret_into_the_caller_s_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pulumi
    import pulumi.dynamic

    from jsb_infra.deploy.providers.credential import AppCredential

    seen: dict[str, Any] = {}

    def capture(self: Any, provider: Any, name: str, props: dict[str, Any], opts: Any = None) -> None:
        seen.update(name=name, props=props, opts=opts)

    monkeypatch.setattr(pulumi.dynamic.Resource, "__init__", capture)
    AppCredential("orders-credential", "orders", pulumi.ResourceOptions(protect=True))
    assert seen["props"] == {"app": "orders", "public_key": None, "seed": None}
    assert seen["opts"].additional_secret_outputs == ["seed"] and seen["opts"].protect is True


def doc_props(spec: dict[str, Any] | None = None, app: str = "orders") -> dict[str, Any]:
    return permission_document_inputs(parse_pairs([spec or pair()]).pairs[0], app)


def test_permission_document_inputs_are_the_app_s_rights_keyed_by_subject() -> None:
    typed = parse_pairs([pair()]).pairs[0]
    inputs = permission_document_inputs(typed, "orders")
    perms = app_permissions(typed, "orders")
    assert set(inputs) == {"app", "stream", "account", "publish", "subscribe", "imports"}
    assert (inputs["app"], inputs["stream"], inputs["account"]) == ("orders", "orders-billing", "APP_orders")
    assert inputs["publish"] == perms.reasons()["publish"] and list(inputs["publish"]) == list(perms.publish)
    assert inputs["subscribe"] == {"_INBOX_orders.>": perms.reasons()["subscribe"]["_INBOX_orders.>"]}
    assert inputs["imports"] == {s.subject: s.response_type for s in perms.services}
    assert inputs["imports"]["$JS.API.CONSUMER.MSG.NEXT.orders-billing.orders-workers"] == "Stream"


def test_permission_document_outputs_are_its_inputs_and_a_change_is_an_update(
    host: ProviderHost, out_dir: Path
) -> None:
    id_, outs = host.up(DOC, doc_props())
    assert id_ == "orders-billing/orders" and outs == doc_props()
    assert "orders.sync.dlq" in outs["publish"] and "orders.sync.dlq" in outs["imports"]
    assert host.diff(DOC, id_, outs, host.checked(DOC, doc_props())).changes == "DIFF_NONE"
    assert host.read(DOC, id_, outs) == (id_, outs)

    outcome, new_outs = host.change(DOC, id_, outs, doc_props(pair(dlq=False)))
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == []
    assert "orders.sync.dlq" not in new_outs["publish"] and new_outs == doc_props(pair(dlq=False))
    consumer_only = pair(dlq=False, consumer={"max_deliver": 9})
    assert host.diff(DOC, id_, new_outs, host.checked(DOC, doc_props(consumer_only))).changes == "DIFF_NONE"
    moved = host.diff(DOC, id_, new_outs, host.checked(DOC, doc_props(pair(dlq=False), "billing")))
    assert moved.changes == "DIFF_SOME" and moved.replaces == [], "never a replace: nothing to recreate"

    host.delete(DOC, id_, new_outs)
    assert not out_dir.exists(), "no files: the document lives in the state only"


def test_permission_document_state_from_before_the_account_layout_reads_and_removes_its_files(
    host: ProviderHost, out_dir: Path
) -> None:
    written = out_dir / "orders-billing" / "permissions" / "orders.json"
    written.parent.mkdir(parents=True)
    written.write_text("{}\n")
    legacy = {"pair": pair(), "app": "orders", "claims_json": "{}\n", "files": [str(written)]}
    read_id, kept = host.read(DOC, "orders-billing/orders", legacy)
    assert (
        read_id == "orders-billing/orders" and set(kept) == set(legacy) and kept["files"] == legacy["files"]
    )
    outcome, outs = host.change(DOC, "orders-billing/orders", legacy, doc_props())
    assert outcome.changes == "DIFF_SOME" and outcome.replaces == [] and outs == doc_props()
    assert not written.exists() and not written.parent.exists()


def test_permission_document_check_names_the_property(host: ProviderHost) -> None:
    _, failures = host.check(DOC, {**doc_props(), "account": ""})
    assert failures == [("account", "account: must be a non-empty string")]
    _, failures = host.check(DOC, {**doc_props(), "imports": ["orders.sync.billing"]})
    assert failures == [("imports", "imports: must be an object {subject: text}")]
    inputs, failures = host.check(DOC, {**doc_props(), "publish": UNKNOWN})
    assert failures == [] and host.diff(DOC, "s/a", doc_props(), inputs).changes == "DIFF_SOME"


def test_documents_and_permissions_carry_plain_text_no_base64_and_no_digest_inputs(
    host: ProviderHost,
) -> None:
    """What `preview --diff` shows is the text itself: no packed bundle among the inputs or outputs of
    either resource, and no digest among the inputs (digests are ServerDocuments outputs only)."""
    documents = {"accounts.conf": "accounts { APP_orders {} }\n", "apps/orders.json": '{"pub": []}\n'}
    doc_inputs = host.checked(DOCS, docs_props(documents))
    _, doc_outs = host.create(DOCS, doc_inputs)
    perm_inputs = host.checked(DOC, doc_props())
    _, perm_outs = host.create(DOC, perm_inputs)
    assert set(doc_inputs) == {"documents"} and doc_inputs["documents"] == documents
    assert set(doc_outs) == {"files", "digests"}
    for props in (doc_inputs, perm_inputs, perm_outs):
        assert not any("digest" in key or key == "bundle" for key in props)
        assert not any(looks_like_base64(value) for value in strings_in(props)), props
    assert not any(looks_like_base64(value) for value in strings_in(doc_outs["files"]))
    assert all(d.startswith("sha256:") for d in doc_outs["digests"].values())


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def looks_like_base64(text: str) -> bool:
    """A long run of base64 alphabet with no spaces, dots or braces (a packed bundle, a digest)."""
    import re

    return re.fullmatch(r"[A-Za-z0-9+/=]{40,}", text) is not None


def test_stream_without_servers_configured_says_which_key_to_set() -> None:
    with ProviderHost() as h:
        h.configure({})
        with pytest.raises(ProviderCallError, match="jsb:servers is not set"):
            h.up(StreamProvider(), stream_inputs(parse_pairs([pair()]).pairs[0]))


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
    assert "jsb:admin.password: must be the value as text" in str(err.value) and "12345" not in str(err.value)
