"""The preview stack's state (jsb_infra.ops.preview_state), pure part: secrets redacted, URNs moved.
The e2e test (tests/test_e2e_secrets.py) makes one with the real CLI and previews it."""

from __future__ import annotations

import json

import pytest

from jsb_infra.ops.preview_state import (
    SECRET_SIG,
    PreviewStateError,
    preview_deployment,
    preview_stack_file,
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


STACK_FILE = """\
config:
  jsb:servers: [nats://nats-1:4222]   # kept as written
  jsb:admin: {user: deploy, password: {env: JSB_NATS_PASSWORD}}
encryptionsalt: v1:AAAA:v1:BBBB:CCCC
"""


def test_the_preview_stack_file_is_the_config_without_the_secrets_provider():
    """What the pull-request job previews with: the pull request's config line for line; the real
    stack's salt (the real passphrase's check) is dropped, and a secret value is refused by its key."""
    written = preview_stack_file(STACK_FILE, "stacks/Pulumi.prod.yaml")
    assert written == STACK_FILE.replace("encryptionsalt: v1:AAAA:v1:BBBB:CCCC\n", "")
    kms = STACK_FILE.replace(
        "encryptionsalt: v1:AAAA:v1:BBBB:CCCC", "secretsprovider: awskms://alias/x\nencryptedkey: ZZZ"
    )
    assert "awskms" not in preview_stack_file(kms, "k") and "encryptedkey" not in preview_stack_file(kms, "k")
    secure = STACK_FILE.replace("{env: JSB_NATS_PASSWORD}", "{secure: v1:xyz}")
    with pytest.raises(
        PreviewStateError, match=r"stacks/Pulumi.prod.yaml: jsb:admin.password: a secret value"
    ):
        preview_stack_file(secure, "stacks/Pulumi.prod.yaml")
