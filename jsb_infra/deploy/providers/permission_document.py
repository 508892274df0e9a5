"""The `PermissionDocument` dynamic resource: what one app may do on one pair's stream, for review.

Pure: no server I/O and no files (the documents the servers load are `ServerDocuments`). Its inputs are
`core.permissions.permission_document_inputs(pair, app)`: the app, the stream, the app's account, its
publish and subscribe allow lists {subject: why} and the services it imports {subject: response type},
so `pulumi preview --diff` names each subject an app gains or loses. Any change of an input is an
in-place update (nothing lives anywhere but in the state); it never replaces. Outputs are the inputs.

Stacks made before the account layout hold PermissionDocuments of another shape (a `pair` input, the
documents written to `files`): read keeps such state as it is, and delete and update remove the files
it names, so those stacks still clean up after themselves.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
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

from jsb_infra.deploy.providers.base import JsbProvider, is_unknown, plan_diff

TEXT_INPUTS = ("app", "stream", "account")
MAP_INPUTS = ("publish", "subscribe", "imports")
INPUTS = TEXT_INPUTS + MAP_INPUTS


def input_failures(news: dict[str, Any]) -> list[CheckFailure]:
    """Type checks of the inputs; each failure names its property."""
    failures: list[CheckFailure] = []
    for prop in TEXT_INPUTS:
        value = news.get(prop)
        if not is_unknown(value) and not (isinstance(value, str) and value):
            failures.append(CheckFailure(prop, f"{prop}: must be a non-empty string"))
    for prop in MAP_INPUTS:
        value = news.get(prop)
        if is_unknown(value):
            continue
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and (is_unknown(v) or isinstance(v, str)) for k, v in value.items()
        ):
            failures.append(CheckFailure(prop, f"{prop}: must be an object {{subject: text}}"))
    return failures


def document(props: dict[str, Any]) -> dict[str, Any]:
    """The outputs: exactly the inputs."""
    return {key: props.get(key) for key in INPUTS}


def remove_legacy_files(props: dict[str, Any]) -> None:
    """The files a PermissionDocument from before the account layout wrote (none in today's state)."""
    for path in props.get("files") or []:
        Path(path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty: other apps' documents may live there
            Path(path).parent.rmdir()


class PermissionDocumentProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(document(news), input_failures(news))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Changed when any input differs; never a replace (there is nothing to recreate)."""
        return plan_diff(
            {}, {}, immutable={}, inputs={key: (olds.get(key), news.get(key)) for key in INPUTS}
        ).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"{props['stream']}/{props['app']}", document(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props) if "pair" in props else document(props))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        remove_legacy_files(olds)
        return UpdateResult(document(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Nothing to remove but the files of state from before the account layout: today's document
        lives only in the state."""
        remove_legacy_files(props)


class PermissionDocument(Resource, module="jsb", name="PermissionDocument"):
    """An app's permissions on one pair's stream. Outputs: the inputs (app, stream, account, publish,
    subscribe, imports)."""

    app: pulumi.Output[str]
    stream: pulumi.Output[str]
    account: pulumi.Output[str]
    publish: pulumi.Output[dict[str, str]]
    subscribe: pulumi.Output[dict[str, str]]
    imports: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        stream: pulumi.Input[str],
        account: pulumi.Input[str],
        publish: pulumi.Input[dict[str, str]],
        subscribe: pulumi.Input[dict[str, str]],
        imports: pulumi.Input[dict[str, str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "app": app,
            "stream": stream,
            "account": account,
            "publish": publish,
            "subscribe": subscribe,
            "imports": imports,
        }
        super().__init__(PermissionDocumentProvider(), resource_name, props, opts)
