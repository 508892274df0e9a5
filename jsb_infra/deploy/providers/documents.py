"""The `ServerDocuments` dynamic resource: the rendered documents a deploy ships to the servers.

Its inputs are the whole set of documents rendered by the pure core from the spec, keyed by relative
path (`accounts.conf`, `apps/<app>.json`, `<stream>/permissions/<app>.json`, ...): `digests` holds one
digest per path, so `pulumi preview --diff` names each document that changes, and `bundle` the texts,
compressed (a fleet's documents are about a megabyte of repetitive text, which the engine would
otherwise copy, store and ship on every run; what changes inside them is shown keyed in the stack
outputs `permissions`, `bridges` and `accounts_conf`, and in the rendered tree a PR commits). When the
stack config names an output directory
(`jsb:outputDir`), create and update write them there (each file atomically; files of documents that
went away are removed) and delete removes them. A file edited or deleted behind Pulumi's back drops
out of `files` on refresh, so the next `up` writes it again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from pathlib import Path, PurePosixPath
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

from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import JsbProvider, is_unknown, plan_diff


def path_problem(relative: str) -> str | None:
    """Why `relative` may not be a document path (it must stay inside the output directory)."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or ".." in path.parts or "\\" in relative:
        return f"documents: {relative!r} must be a relative path inside the output directory"
    return None


def target_paths(output_dir: str | None, documents: dict[str, str]) -> dict[str, str]:
    """Absolute file path -> text, for the configured output directory (none without one)."""
    if not output_dir:
        return {}
    base = Path(output_dir)
    return {str(base / relative): text for relative, text in sorted(documents.items())}


def write_files(contents: dict[str, str]) -> None:
    for path, text in contents.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)  # readers (a reloading server) never see half a document


def remove_files(paths: list[str], root: str | None = None) -> None:
    """Remove the files, and each directory left empty up to (and including) `root`."""
    stop = Path(root).parent if root else None
    for path in paths:
        Path(path).unlink(missing_ok=True)
        parent = Path(path).parent
        while parent != stop and parent != parent.parent:
            try:
                parent.rmdir()  # only when empty: other documents may live there
            except OSError:
                break
            if stop is None:
                break
            parent = parent.parent


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def pack_documents(documents: dict[str, str]) -> str:
    """The texts as one compact string input (zlib-compressed JSON, base64)."""
    text = json.dumps(documents, sort_keys=True, separators=(",", ":"))
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 6)).decode("ascii")


def unpack_documents(bundle: str) -> dict[str, str]:
    documents = json.loads(zlib.decompress(base64.b64decode(bundle)).decode("utf-8"))
    if not isinstance(documents, dict) or not all(isinstance(t, str) for t in documents.values()):
        raise ValueError("not a {path: text} object")
    return documents


def bundle_problem(bundle: Any, digests: Any) -> str | None:
    """Why `bundle` does not hold exactly the documents `digests` names (None: it does)."""
    if is_unknown(bundle) or is_unknown(digests) or not isinstance(digests, dict):
        return None
    if not isinstance(bundle, str):
        return "bundle: must be the packed documents (ServerDocuments packs them)"
    try:
        documents = unpack_documents(bundle)
    except (ValueError, zlib.error) as err:
        return f"bundle: cannot be unpacked ({err})"
    if set(documents) != set(digests):
        return "bundle: must hold exactly the documents named in digests"
    for relative, text in documents.items():
        want = digests[relative]
        if not is_unknown(want) and digest(text) != want:
            return f"bundle: documents.{relative} does not match its digest"
    return None


def stored_digests(state: dict[str, Any]) -> dict[str, str]:
    """{relative path: digest} of what was written (state written before digests kept the texts)."""
    if state.get("digests") is not None:
        return dict(state["digests"])
    return {relative: digest(text) for relative, text in (state.get("documents") or {}).items()}


class ServerDocumentsProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        digests = news.get("digests")
        failures: list[CheckFailure] = []
        if not is_unknown(digests):
            if not isinstance(digests, dict):
                failures.append(CheckFailure("digests", "digests: must be an object {path: digest}"))
            else:
                for relative in digests:
                    problem = path_problem(relative)
                    if problem:
                        failures.append(CheckFailure("digests", problem))
                problem = bundle_problem(news.get("bundle"), digests)
                if problem:
                    failures.append(CheckFailure("bundle", problem))
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        digests = news.get("digests") or {}
        inputs: dict[str, tuple[Any, Any]] = {}
        old_digests = stored_digests(olds)
        for relative in sorted(set(old_digests) | set(digests)):
            inputs[f"documents.{relative}"] = (old_digests.get(relative), digests.get(relative))
        if not is_unknown(digests):
            wanted = sorted(target_paths(settings.current().output_dir, digests))
            inputs["files"] = (sorted(olds.get("files") or []), wanted)
        return plan_diff({}, {}, immutable={}, inputs=inputs).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._apply(unpack_documents(props["bundle"]), [])
        return CreateResult("server-documents", outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        digests = stored_digests(props)
        files = set(props.get("files") or [])
        intact = [
            path
            for path, expected in target_paths(settings.current().output_dir, digests).items()
            if path in files
            and Path(path).is_file()
            and digest(Path(path).read_text(encoding="utf-8")) == expected
        ]
        return ReadResult(id_, {"digests": digests, "files": intact})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(unpack_documents(news["bundle"]), list(olds.get("files") or [])))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        remove_files(list(props.get("files") or []), settings.current().output_dir)

    @staticmethod
    def _apply(documents: dict[str, str], old_files: list[str]) -> dict[str, Any]:
        contents = target_paths(settings.current().output_dir, documents)
        remove_files([path for path in old_files if path not in contents], settings.current().output_dir)
        write_files(contents)
        return {
            "digests": {relative: digest(text) for relative, text in documents.items()},
            "files": sorted(contents),
        }


class ServerDocuments(Resource, module="jsb", name="ServerDocuments"):
    """The rendered documents of a deployment. Inputs: digests (one per document), bundle (the texts,
    packed). Outputs: digests, files (where they were written)."""

    digests: pulumi.Output[dict[str, str]]
    files: pulumi.Output[list[str]]

    def __init__(
        self,
        resource_name: str,
        documents: dict[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`documents`: {relative path: text}; a text may be an Output (the accounts include waits for
        the apps' keys), every other digest is known at preview."""
        known = {path: text for path, text in documents.items() if isinstance(text, str)}
        late = {path: pulumi.Output.from_input(text) for path, text in documents.items() if path not in known}
        digests: dict[str, pulumi.Input[str]] = {path: digest(text) for path, text in known.items()}
        digests.update({path: text.apply(digest) for path, text in late.items()})
        bundle: pulumi.Input[str] = (
            pulumi.Output.all(**late).apply(lambda texts: pack_documents({**known, **texts}))
            if late
            else pack_documents(known)
        )
        super().__init__(
            ServerDocumentsProvider(),
            resource_name,
            {"digests": digests, "bundle": bundle, "files": None},
            opts,
        )
