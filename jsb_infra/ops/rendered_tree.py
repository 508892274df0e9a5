"""A directory of rendered files, written all at once or not at all, and compared with what is committed.

`render` owns its output directory: the whole tree is built in a temp directory beside it and swapped
into place, so a refusal at any point (even while writing the last file) leaves the old tree untouched,
and files of pairs that were removed from the config disappear with the swap. A manifest (`MANIFEST`)
lists the rendered files; a directory that holds files but no manifest was not written by `render`,
and is refused rather than replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MANIFEST = ".jsb-rendered"
MAX_COMPONENT_BYTES = 255  # one path component on common file systems (ext4, XFS, APFS, NTFS)


class TreeProblem(ValueError):
    """A tree that cannot be written as asked; `problems` lists one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _posix(relative: Path | str) -> str:
    return PurePosixPath(Path(relative).as_posix()).as_posix()


def with_manifest(files: Mapping[Path, str]) -> dict[str, str]:
    """`files` keyed by POSIX path, plus the manifest listing them.

    Refuses paths that leave the directory or that a file system cannot hold.
    """
    problems = []
    out: dict[str, str] = {}
    for relative, text in files.items():
        path = _posix(relative)
        parts = PurePosixPath(path).parts
        if PurePosixPath(path).is_absolute() or ".." in parts or not parts:
            problems.append(f"{path}: rendered paths must stay inside the output directory")
        for part in parts:
            if len(part.encode()) > MAX_COMPONENT_BYTES:
                problems.append(
                    f"{path}: the name {part[:40]!r}... is {len(part.encode())} bytes; "
                    f"file systems allow {MAX_COMPONENT_BYTES}"
                )
        out[path] = text
    if problems:
        raise TreeProblem(problems)
    listing = "".join(f"{path}\n" for path in sorted(out))
    out[MANIFEST] = "# Written by `jsb-infra render`; this directory is replaced on every render.\n" + listing
    return dict(sorted(out.items()))


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, keyed by POSIX path relative to it."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class Difference:
    """How a committed tree differs from a fresh render."""

    changed: list[str]
    missing: list[str]
    stale: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.stale)

    def lines(self) -> list[str]:
        return (
            [f"changed  {p}" for p in self.changed]
            + [f"missing  {p}" for p in self.missing]
            + [f"stale    {p}  (its pair or app is gone; a render removes it)" for p in self.stale]
        )


def compare(root: Path, files: Mapping[str, str]) -> Difference:
    """Compare the tree under `root` with `files` (from with_manifest)."""
    present = read_tree(root)
    return Difference(
        changed=[p for p, text in files.items() if p in present and present[p] != text.encode()],
        missing=[p for p in files if p not in present],
        stale=[p for p in present if p not in files],
    )


def _check_owned(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TreeProblem([f"{out}: exists and is not a directory"])
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise TreeProblem(
            [
                f"{out}: holds files that `jsb-infra render` did not write (no {MANIFEST}); render "
                "replaces its output directory, so give it an empty or new one"
            ]
        )


def write_tree(out: Path, files: Mapping[str, str]) -> None:
    """Write `files` (from with_manifest) as the whole content of `out`, atomically per directory swap.

    Everything is written into a temp directory beside `out` first; only when every file is written is
    the old tree moved aside and the new one renamed into place. Any failure before the swap removes
    the temp directory and leaves `out` as it was.
    """
    _check_owned(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.render-", dir=out.parent))
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the output is ordinary files for review
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
