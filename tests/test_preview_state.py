"""The preview stack's state (jsb_infra.ops.preview_state), pure part: secrets redacted, URNs moved.
The e2e test (tests/test_e2e_secrets.py) makes one with the real CLI and previews it."""

from __future__ import annotations

import json

import pytest

from jsb_infra.ops.preview_state import (
    SECRET_SIG,
    PreviewStateError,
    preview_deployment,
    secret_config_keys,
)


def secret(value: object) -> dict[str, str]:
    return {SECRET_SIG: "1b47061264138c4ac30d75fd1eb44270", "plaintext": json.dumps(value)}


EXPORTED = {
    "version": 3,
    "deployment": {
        "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:source"}},
        "resources": [
            {
                "urn": "urn:pulumi:prod::jsb::pulumi:pulumi:Stack::jsb-prod",
                "outputs": {"credentials": secret({"a": 1})},
            },
            {
                "urn": "urn:pulumi:prod::jsb::jsb:index:AppAccounts$pulumi-python:dynamic/jsb:AppCredential"
                "::accounts-orders-credential",
                "parent": "urn:pulumi:prod::jsb::pulumi:pulumi:Stack::jsb-prod",
                "outputs": {"public_key": "UABC", "seed": secret("SUAAAA-the-seed")},
            },
        ],
    },
}


def test_every_secret_is_redacted_and_every_urn_moves_to_the_preview_stack():
    moved, count = preview_deployment(
        EXPORTED, "jsb", "prod", "prod-preview", {"type": "passphrase", "state": {"salt": "v1:target"}}
    )
    text = json.dumps(moved)
    assert count == 2 and "SUAAAA-the-seed" not in text and '"a": 1' not in text
    assert "urn:pulumi:prod::" not in text and 'Stack::jsb-prod"' not in text
    (credential,) = [r for r in moved["deployment"]["resources"] if r["urn"].endswith("orders-credential")]
    assert credential["parent"] == "urn:pulumi:prod-preview::jsb::pulumi:pulumi:Stack::jsb-prod-preview"
    assert credential["outputs"]["public_key"] == "UABC"  # what a preview compares stays as it was
    assert credential["outputs"]["seed"][SECRET_SIG]  # still a secret, of no value
    assert moved["deployment"]["secrets_providers"]["state"]["salt"] == "v1:target"


def test_an_encrypted_export_and_secret_config_are_refused():
    encrypted = {
        "deployment": {"resources": [{"outputs": {"seed": {SECRET_SIG: "x", "ciphertext": "v1:..."}}}]}
    }
    with pytest.raises(PreviewStateError, match="--show-secrets"):
        preview_deployment(encrypted, "jsb", "prod", "prod-preview", {})
    config = {
        "jsb:admin": {"value": "[secret]", "secret": True},
        "jsb:servers": {"value": "[]", "secret": False},
    }
    assert secret_config_keys(config) == ["jsb:admin"]
