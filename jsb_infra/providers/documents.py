"""The `ServerDocuments` dynamic resource: the rendered documents a deploy ships to the servers.

Its input is the whole set of documents, keyed by relative path (`accounts.conf`, `apps/<app>.json`,
`<stream>/permissions/<app>.json`, ...), rendered by the pure core from the spec, so `pulumi preview
--diff` shows each document's change. When the stack config names an output directory
(`jsb:outputDir`), create and update write them there (each file atomically; files of documents that
went away are removed) and delete removes them. A file edited or deleted behind Pulumi's back drops
out of `files` on refresh, so the next `up` writes it again.
"""

from __future__ import annotations

import hashlib
import os
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

from jsb_infra.providers import settings
from jsb_infra.providers.base import JsbProvider, is_unknown, plan_diff


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


def stored_digests(state: dict[str, Any]) -> dict[str, str]:
    """{relative path: digest} of what was written (state written before digests kept the texts)."""
    if state.get("digests") is not None:
        return dict(state["digests"])
    return {relative: digest(text) for relative, text in (state.get("documents") or {}).items()}


class ServerDocumentsProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        documents = news.get("documents")
        failures: list[CheckFailure] = []
        if not is_unknown(documents):
            if not isinstance(documents, dict):
                failures.append(CheckFailure("documents", "documents: must be an object {path: text}"))
            else:
                for relative, text in documents.items():
                    problem = path_problem(relative)
                    if problem:
                        failures.append(CheckFailure("documents", problem))
                    elif not is_unknown(text) and not isinstance(text, str):
                        failures.append(CheckFailure("documents", f"documents.{relative}: must be text"))
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        documents = news.get("documents") or {}
        inputs: dict[str, tuple[Any, Any]] = {}
        old_digests = stored_digests(olds)
        for relative in sorted(set(old_digests) | set(documents)):
            text = documents.get(relative)
            new = text if is_unknown(text) else (digest(text) if text is not None else None)
            inputs[f"documents.{relative}"] = (old_digests.get(relative), new)
        if not is_unknown(documents):
            wanted = sorted(target_paths(settings.current().output_dir, documents))
            inputs["files"] = (sorted(olds.get("files") or []), wanted)
        return plan_diff({}, {}, immutable={}, inputs=inputs).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._apply(props["documents"], [])
        return CreateResult("server-documents", outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        digests = stored_digests(props)
        intact = [
            path
            for path, expected in target_paths(settings.current().output_dir, digests).items()
            if path in (props.get("files") or [])
            and Path(path).is_file()
            and digest(Path(path).read_text(encoding="utf-8")) == expected
        ]
        return ReadResult(id_, {**props, "files": intact})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news["documents"], list(olds.get("files") or [])))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        remove_files(list(props.get("files") or []), settings.current().output_dir)

    @staticmethod
    def _apply(documents: dict[str, str], old_files: list[str]) -> dict[str, Any]:
        contents = target_paths(settings.current().output_dir, documents)
        remove_files([path for path in old_files if path not in contents], settings.current().output_dir)
        write_files(contents)
        # The texts are inputs (a preview diff shows them); outputs keep a digest each, not a second copy.
        return {
            "digests": {relative: digest(text) for relative, text in documents.items()},
            "files": sorted(contents),
        }


class ServerDocuments(Resource, module="jsb", name="ServerDocuments"):
    """The rendered documents of a deployment. Outputs: digests (one per document), files (where they
    were written)."""

    digests: pulumi.Output[dict[str, str]]
    files: pulumi.Output[list[str]]

    def __init__(
        self,
        resource_name: str,
        documents: pulumi.Input[dict[str, pulumi.Input[str]]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ServerDocumentsProvider(),
            resource_name,
            {"documents": documents, "digests": None, "files": None},
            opts,
        )
