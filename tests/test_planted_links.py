"""A symlink planted beside a file the deploy writes cannot redirect the write.

The documents (`jsb:outputDir`), the accounts include (`jsb:auth.accounts_file`) and a multi-host
include copy (`ship_include` `path`) were written to a fixed temp name `.<name>.tmp`, then renamed over
the target. Whoever can write to that directory (a shared output directory, a group-writable config
directory) could put a link there: the include text landed in the file the link points to, and the
rename then made the target itself that link. Now the temp file has a random name and is created
exclusively without following links. The control runs the former write and shows the victim file
overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from jsb_infra.deploy.providers.accounts_include import apply_and_reload
from jsb_infra.deploy.providers.documents import write_files
from jsb_infra.ops.ship_include import Host, _place

TEXT = "accounts { A { users: [] } }\n"


def via_documents(target: Path) -> None:
    write_files({str(target): TEXT})


def via_accounts_include(target: Path) -> None:
    assert apply_and_reload(str(target), TEXT, None) == "no reload hook"


def via_ship_include(target: Path) -> None:
    source = target.parent.parent / "staged.conf"
    source.write_text(TEXT)
    _place(Host("h1", ("true",), "http://127.0.0.1:1/varz", path=str(target)), source)


def former_write(target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(TEXT, encoding="utf-8")
    os.replace(tmp, target)


def plant(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's content\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / ".accounts.conf.tmp").symlink_to(victim)
    return victim, shared / "accounts.conf"


@pytest.mark.parametrize("write", [via_documents, via_accounts_include, via_ship_include])
def test_a_link_planted_at_the_temp_name_gets_nothing(tmp_path, write: Callable[[Path], None]):
    victim, target = plant(tmp_path)
    target.write_text("the previous include\n")
    write(target)
    assert victim.read_text() == "the victim's content\n"
    assert not target.is_symlink() and target.read_text() == TEXT
    assert sorted(p.name for p in target.parent.iterdir()) == [".accounts.conf.tmp", "accounts.conf"]


def test_control_the_former_write_follows_the_planted_link(tmp_path):
    victim, target = plant(tmp_path)
    former_write(target)
    assert victim.read_text() == TEXT, "the include text landed in the victim"
    assert target.is_symlink() and os.readlink(target) == str(victim)
