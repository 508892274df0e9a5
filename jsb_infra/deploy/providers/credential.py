"""App credentials: the runtime NKey user of each app, generated once and kept in state.

`AppCredential` (one per app) is the credential of the app-pair layout: inputs {app}; outputs {app,
public_key, seed}; its id is the public key. Never replaced unless the app's name changes, so
`pulumi up --replace <urn>` rotates exactly one app's key. No server I/O: the public key goes into the
account layout (the app account's user), the seed to the app. The seed is an output under a name no
input has, so the resource declares it in `additional_secret_outputs`; otherwise the engine would store
it in plain text (it re-marks as secret only outputs whose same-named input was secret).

`AppCredentials` (every app in one resource) is what stacks of the PairStream layout hold; it stays so
that such a stack can still be read, migrated or destroyed.
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


def apps_failures(apps: Any) -> list[CheckFailure]:
    if is_unknown(apps):
        return []
    if not isinstance(apps, list) or not all(isinstance(a, str) and a for a in apps):
        return [CheckFailure("apps", "apps: must be a list of app names")]
    if len(set(apps)) != len(apps):
        return [CheckFailure("apps", "apps: each app must be listed once")]
    return []


def kept_keys(olds: dict[str, Any], apps: list[str]) -> dict[str, Any]:
    """Every app's key pair: the stored one when the app had one, a fresh one otherwise."""
    public_keys = dict(olds.get("public_keys") or {})
    seeds = dict(olds.get("seeds") or {})
    for app in apps:
        if app not in public_keys or app not in seeds:
            seeds[app], public_keys[app] = new_user_keypair()
    return {
        "apps": list(apps),
        "public_keys": {app: public_keys[app] for app in apps},
        "seeds": {app: seeds[app] for app in apps},
    }


class AppCredentialsProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        apps = news.get("apps")
        inputs = dict(news)
        if isinstance(apps, list) and not is_unknown(apps):
            inputs["apps"] = sorted(apps)
        return CheckResult(inputs, apps_failures(apps))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Never a replace: a new app gets a key, a removed one loses it, the others keep theirs."""
        changed = is_unknown(news.get("apps")) or sorted(olds.get("apps") or []) != sorted(news["apps"])
        return DiffResult(changes=changed, replaces=[], delete_before_replace=None)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult("app-credentials", kept_keys({}, props["apps"]))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(kept_keys(olds, news["apps"]))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the keys exist only in state (and in the apps that use them)."""


class AppCredentials(Resource, module="jsb", name="AppCredentials"):
    """Every app's NKey user. Outputs: public_keys {app: key}, seeds {app: seed} (secret)."""

    public_keys: pulumi.Output[dict[str, str]]
    seeds: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        resource_name: str,
        apps: pulumi.Input[list[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"apps": apps, "public_keys": None, "seeds": None}
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=APPS_SECRET_OUTPUTS)
        )
        super().__init__(AppCredentialsProvider(), resource_name, props, opts)


SECRET_OUTPUTS = ["seed"]
APPS_SECRET_OUTPUTS = ["seeds"]


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
