"""The `AppCredentials` dynamic resource: every app's runtime NKey user, each generated once and kept.

One resource for all apps (an app is one account with one user across all its pairs): adding an app
generates its key, removing one drops it, and every other app keeps its key untouched. One resource,
not one per app: the engine and SDK cost milliseconds per registered resource on every run. No
server I/O: the public keys go into the account layout (each app account's user), the seeds to the
apps. The seeds are an output under a new name, so the resource declares them in
`additional_secret_outputs`; otherwise the engine would store them in plain text (it re-marks as
secret only outputs whose same-named input was secret).

`AppCredential` (one per app) is what stacks written before `AppCredentials` hold; it stays so that
such a stack can still be read, migrated (`jsb-infra migrate-state`) or destroyed.
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
