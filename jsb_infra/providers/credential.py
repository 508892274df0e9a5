"""The `AppCredential` dynamic resource: an app's runtime NKey user, generated once and kept.

No server I/O: the public key goes into the app's permission document, the seed to the app. The
seed is an output under a new name, so the resource declares it in `additional_secret_outputs`;
otherwise the engine would store it in plain text (REFERENCE §4).
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    UpdateResult,
)

from jsb_infra.credentials import new_user_keypair
from jsb_infra.providers.base import JsbProvider, is_unknown, plan_diff

SECRET_OUTPUTS = ["seed"]


class AppCredentialProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [
            CheckFailure(key, f"{key}: must be a non-empty name")
            for key in ("stream", "app")
            if not is_unknown(news.get(key)) and not (isinstance(news.get(key), str) and news.get(key))
        ]
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A key pair belongs to one app of one stream: a new owner gets a new key (replace)."""
        return plan_diff(
            {},
            {},
            immutable={},
            identity={key: (olds.get(key), news.get(key)) for key in ("stream", "app")},
        ).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        seed, public_key = new_user_keypair()
        outs = {"stream": props["stream"], "app": props["app"], "public_key": public_key, "seed": seed}
        return CreateResult(public_key, outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**olds, "stream": news["stream"], "app": news["app"]})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the key exists only in state (and in the apps that use it)."""


class AppCredential(Resource, module="jsb", name="AppCredential"):
    """An app's NKey user. Outputs: public_key, seed (secret)."""

    public_key: pulumi.Output[str]
    seed: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        stream: pulumi.Input[str],
        app: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"stream": stream, "app": app, "public_key": None, "seed": None}
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        )
        super().__init__(AppCredentialProvider(), resource_name, props, opts)
