"""The `ServerDocuments` dynamic resource: the rendered documents a deploy ships to the servers.

Inputs: `documents` {relative path: text} (`accounts.conf`, `apps/<app>.json`, ...), as plain text,
so `pulumi preview --diff` shows the lines of each document that change, and `output_dir` (None: the
stack config's `jsb:outputDir`). Outputs: `files` (the absolute paths written) and `digests`
{relative path: sha256 of its text}, never the texts (the engine keeps the inputs in state already).
The diff compares the digest of each new text with the stored one, and the files the output directory
gives with those written. Create and update write the files (each atomically; files of documents that
went away are removed, with directories left empty) and delete removes them. A file edited or deleted
behind Pulumi's back drops out of `files` on refresh, so the next `up` writes it again. Without an
output directory nothing is written.
"""

from __future__ import annotations

import hashlib
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
from jsb_infra.files import replace_file


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
        replace_file(target, text.encode("utf-8"))  # a reloading server never reads half of it


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


def output_dir_of(props: dict[str, Any]) -> str | None:
    """The directory the documents go to: the `output_dir` input, else the stack config's."""
    value = props.get("output_dir")
    return value if isinstance(value, str) and value else settings.current().output_dir


def written_digests(files: list[str], digests: dict[str, str]) -> dict[str, str]:
    """{absolute path: expected digest} of the files written, each matched to the relative path it
    ends with (the longest, so `a/b.conf` wins over `b.conf`)."""
    expected: dict[str, str] = {}
    for path in files:
        posix = Path(path).as_posix()
        matches = [rel for rel in digests if posix == rel or posix.endswith("/" + rel)]
        if matches:
            expected[path] = digests[max(matches, key=len)]
    return expected


def files_root(files: list[str], digests: dict[str, str]) -> str | None:
    """The output directory the stored files were written under (None when it cannot be told)."""
    for path in files:
        posix = Path(path).as_posix()
        matches = [rel for rel in digests if posix.endswith("/" + rel)]
        if matches:
            return posix[: -len(max(matches, key=len)) - 1]
    return None


def document_failures(news: dict[str, Any]) -> list[CheckFailure]:
    failures: list[CheckFailure] = []
    documents = news.get("documents")
    if not is_unknown(documents):
        if not isinstance(documents, dict):
            failures.append(CheckFailure("documents", "documents: must be an object {path: text}"))
        else:
            for relative, text in documents.items():
                problem = path_problem(relative)
                if problem:
                    failures.append(CheckFailure("documents", problem))
                elif not is_unknown(text) and not isinstance(text, str):
                    failures.append(CheckFailure("documents", f"documents: {relative!r} must be text"))
    output_dir = news.get("output_dir")
    if (
        output_dir is not None
        and not is_unknown(output_dir)
        and not (isinstance(output_dir, str) and output_dir)
    ):
        failures.append(CheckFailure("output_dir", "output_dir: must be a directory path (or absent)"))
    return failures


class ServerDocumentsProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(dict(news), document_failures(news))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        documents = news.get("documents") or {}
        inputs: dict[str, tuple[Any, Any]] = {}
        if not isinstance(documents, dict):  # the whole map unknown at preview (one text: below)
            inputs["documents"] = (None, documents)
            documents = {}
        old_digests = stored_digests(olds)
        for relative in sorted(set(old_digests) | set(documents)):
            text = documents.get(relative)
            new = text if text is None or is_unknown(text) else digest(text)
            inputs[f"documents.{relative}"] = (old_digests.get(relative), new)
        output_dir = news.get("output_dir")
        if is_unknown(output_dir):
            inputs["output_dir"] = (None, output_dir)
        elif isinstance(news.get("documents"), dict):
            wanted = sorted(target_paths(output_dir_of(news), documents))
            inputs["files"] = (sorted(olds.get("files") or []), wanted)
        return plan_diff({}, {}, immutable={}, inputs=inputs).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult("server-documents", self._apply(props, []))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        digests = stored_digests(props)
        files = list(props.get("files") or [])
        intact = [
            path
            for path, expected in written_digests(files, digests).items()
            if Path(path).is_file() and digest(Path(path).read_text(encoding="utf-8")) == expected
        ]
        return ReadResult(id_, {"digests": digests, "files": sorted(intact)})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news, list(olds.get("files") or [])))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        files = list(props.get("files") or [])
        remove_files(files, files_root(files, stored_digests(props)))

    @staticmethod
    def _apply(props: dict[str, Any], old_files: list[str]) -> dict[str, Any]:
        documents: dict[str, str] = dict(props.get("documents") or {})
        output_dir = output_dir_of(props)
        contents = target_paths(output_dir, documents)
        remove_files([path for path in old_files if path not in contents], output_dir)
        write_files(contents)
        return {
            "digests": {relative: digest(text) for relative, text in documents.items()},
            "files": sorted(contents),
        }


class ServerDocuments(Resource, module="jsb", name="ServerDocuments"):
    """The rendered documents of a deployment. Inputs: documents {relative path: text}, output_dir.
    Outputs: files (where they were written), digests {relative path: sha256}."""

    files: pulumi.Output[list[str]]
    digests: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        resource_name: str,
        documents: pulumi.Input[dict[str, pulumi.Input[str]]],
        output_dir: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`documents`: {relative path: text}; a text may be an Output (the accounts include waits for
        the apps' keys). `output_dir`: where to write them (None: the stack config's jsb:outputDir)."""
        props = {"documents": documents, "output_dir": output_dir, "files": None, "digests": None}
        super().__init__(ServerDocumentsProvider(), resource_name, props, opts)
