"""The `AppCredential` dynamic resource: an app's runtime NKey user, generated once and kept.

One per app, across all its pairs: the app is one account with one user. No server I/O: the public
key goes into the account layout (the app account's user), the seed to the app. The
seed is an output under a new name, so the resource declares it in `additional_secret_outputs`;
otherwise the engine would store it in plain text (it re-marks as secret only outputs whose
same-named input was secret).
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
        app = news.get("app")
        failures = []
        if not is_unknown(app) and not (isinstance(app, str) and app):
            failures.append(CheckFailure("app", "app: must be a non-empty name"))
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A key pair belongs to one app: a new owner gets a new key (replace)."""
        return plan_diff({}, {}, immutable={}, identity={"app": (olds.get("app"), news.get("app"))}).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        seed, public_key = new_user_keypair()
        outs = {"app": props["app"], "public_key": public_key, "seed": seed}
        return CreateResult(public_key, outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**olds, "app": news["app"]})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the key exists only in state (and in the apps that use it)."""


class AppCredential(Resource, module="jsb", name="AppCredential"):
    """An app's NKey user. Outputs: public_key, seed (secret)."""

    public_key: pulumi.Output[str]
    seed: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        app: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"app": app, "public_key": None, "seed": None}
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        )
        super().__init__(AppCredentialProvider(), resource_name, props, opts)
