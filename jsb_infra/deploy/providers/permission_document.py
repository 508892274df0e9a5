"""The `PermissionDocument` dynamic resource of stacks made before the account layout (legacy).

Today's program no longer registers it (`ServerDocuments` holds every document, and permissions are
derived at preview), but stacks created earlier hold such resources, pickled by reference to this
module: it stays so that their next `pulumi up` can delete them (removing their files).

What it did: an app's least-privilege permissions, rendered for review.

Its outputs carry the JWT claims and the nats-server `users` entry (with the app's NKey), so
`pulumi preview` shows exactly how an app's permissions change. When the stack config names an
output directory (`jsb:outputDir`), create/update also write `<dir>/<stream>/permissions/<app>.json`
and `.conf` for a deploy to ship to the servers, and delete removes them.
"""

from __future__ import annotations

import contextlib
import os
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

from jsb_infra.core.permissions import app_permissions, render_claims_json, render_conf
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import (
    JsbProvider,
    app_failures,
    canonical_pair,
    is_unknown,
    pair_failures,
    parse_pair,
    plan_diff,
    stored_pair,
)


def document_paths(output_dir: str | None, stream: str, app: str) -> list[str]:
    """Where the documents go (`<dir>/<stream>/permissions/<app>.json` and `.conf`); none without an
    output directory."""
    if not output_dir:
        return []
    base = Path(output_dir) / stream / "permissions"
    return [str(base / f"{app}.json"), str(base / f"{app}.conf")]


def rendered(props: dict[str, Any]) -> dict[str, Any]:
    """The documents for the inputs `props` (pair, app, public_key), and where they are written."""
    pair = parse_pair(props["pair"])
    app = props["app"]
    perms = app_permissions(pair, app)
    public_key = props.get("public_key")
    claims_json = render_claims_json(perms)
    return {
        "stream": pair.stream,
        "app": app,
        "public_key": public_key,
        "claims": perms.claims(),
        "claims_json": claims_json,
        "conf": render_conf(perms),
        "files": document_paths(settings.current().output_dir, pair.stream, app),
    }


def _contents(outs: dict[str, Any]) -> dict[str, str]:
    """File path -> the text it must hold."""
    by_suffix = {".json": outs["claims_json"], ".conf": outs["conf"]}
    return {path: by_suffix[Path(path).suffix] for path in outs.get("files") or []}


def _write(outs: dict[str, Any]) -> None:
    for path, text in _contents(outs).items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)  # readers never see half a document


def _remove(paths: list[str]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty: other apps' documents may live there
            Path(path).parent.rmdir()


class PermissionDocumentProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        pair, failures = pair_failures(news.get("pair"))
        failures += app_failures(pair, news.get("app"))
        key = news.get("public_key")
        if key is not None and not is_unknown(key) and not (isinstance(key, str) and key.startswith("U")):
            failures.append(CheckFailure("public_key", "public_key: must be an NKey user public key (U...)"))
        inputs = dict(news)
        if pair is not None:
            inputs["pair"] = canonical_pair(pair)
        return CheckResult(inputs, failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Replaced when it moves to another stream or app (new files); otherwise rewritten in place."""
        old_pair, pair = stored_pair(olds["pair"]), parse_pair(news["pair"])
        if is_unknown(news.get("public_key")):
            outputs: dict[str, tuple[Any, Any]] = {
                "public_key": (olds.get("public_key"), news.get("public_key"))
            }
        else:
            new = rendered(news)
            outputs = {key: (olds.get(key), new[key]) for key in ("claims", "conf", "files")}
        return plan_diff(
            {},
            {},
            immutable={},
            identity={
                "pair.stream": (old_pair.stream, pair.stream),
                "app": (olds.get("app"), news.get("app")),
            },
            inputs=outputs,
        ).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = {**rendered(props), "pair": props["pair"]}
        _write(outs)
        return CreateResult(f"{outs['stream']}/{outs['app']}", outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Files deleted or edited behind Pulumi's back drop out of `files`, so the next up rewrites them."""
        if "claims_json" not in props:
            return ReadResult(id_, dict(props))
        intact = [
            path
            for path, text in _contents(props).items()
            if Path(path).is_file() and Path(path).read_text() == text
        ]
        return ReadResult(id_, {**props, "files": intact})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        outs = {**rendered(news), "pair": news["pair"]}
        _remove([p for p in olds.get("files") or [] if p not in outs["files"]])
        _write(outs)
        return UpdateResult(outs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        _remove(list(props.get("files") or []))


class PermissionDocument(Resource, module="jsb", name="PermissionDocument"):
    """An app's permissions. Outputs: claims, claims_json, conf, files."""

    claims: pulumi.Output[dict[str, Any]]
    claims_json: pulumi.Output[str]
    conf: pulumi.Output[str]
    files: pulumi.Output[list[str]]

    def __init__(
        self,
        resource_name: str,
        pair: pulumi.Input[dict[str, Any]],
        app: pulumi.Input[str],
        public_key: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "pair": pair,
            "app": app,
            "public_key": public_key,
            "claims": None,
            "claims_json": None,
            "conf": None,
            "files": None,
        }
        super().__init__(PermissionDocumentProvider(), resource_name, props, opts)
