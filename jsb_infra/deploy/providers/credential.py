"""App credentials: the runtime NKey user of each app, generated once and kept in state.

`AppCredential` (one per app) is the credential of the app-pair layout: inputs {app}; outputs {app,
public_key, seed}; its id is the public key. Never replaced unless the app's name changes, so
`pulumi up --replace <urn>` rotates exactly one app's key. No server I/O: the public key goes into the
account layout (the app account's user), the seed to the app. The seed is an output under a name no
input has, so the resource declares it in `additional_secret_outputs`; otherwise the engine would store
it in plain text (it re-marks as secret only outputs whose same-named input was secret).

Stacks of the pair-stream layout held every app's key in one `AppCredentials`; `jsb-infra
migrate-state` turns it into one `AppCredential` per app with the same keys.
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

from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.deploy.providers.base import JsbProvider, is_unknown, plan_diff

SECRET_OUTPUTS = ["seed"]


class AppCredentialProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        app = news.get("app")
        failures = []
        if not is_unknown(app) and not (isinstance(app, str) and app):
            failures.append(CheckFailure("app", "app: must be a non-empty name"))
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A key pair belongs to one app: a new owner gets a new key (replace). Nothing else is an input
        (a stream named by state from before the account layout was never an output: no change)."""
        return plan_diff({}, {}, immutable={}, identity={"app": (olds.get("app"), news.get("app"))}).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        seed, public_key = new_user_keypair()
        outs = {"app": props["app"], "public_key": public_key, "seed": seed}
        return CreateResult(public_key, outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Never reached with a change of the app (that replaces): the key is kept."""
        return UpdateResult({"app": news["app"], "public_key": olds["public_key"], "seed": olds["seed"]})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the key exists only in state (and in the apps that use it)."""


class AppCredential(Resource, module="jsb", name="AppCredential"):
    """An app's NKey user. Outputs: app, public_key, seed (secret)."""

    app: pulumi.Output[str]
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
