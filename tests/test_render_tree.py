"""`jsb-infra render` as a PR check: the output directory is replaced as a whole (files of removed pairs
pruned, nothing written on any refusal, even one found while writing), `--check` lists what differs, and
`--stack` reads `jsb:pairs` from a Pulumi stack file without touching its secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import EXAMPLE, EXPECTED_LAYOUT, tree

from jsb_infra import cli
from jsb_infra.ops.rendered_tree import MANIFEST

REPO = Path(__file__).resolve().parent.parent
DEV_STACK = REPO / "stacks" / "Pulumi.dev.yaml"
ONE_PAIR = "pairs:\n  - {stream: orders-billing-sync, apps: [orders, billing]}\n"


def render(*args: str) -> int:
    return cli.main(["render", *args])


def test_the_manifest_lists_exactly_the_rendered_files(tmp_path):
    assert render(str(EXAMPLE), "--out", str(tmp_path / "out")) == 0
    lines = (tmp_path / "out" / MANIFEST).read_text().splitlines()
    assert lines[0].startswith("# Written by `jsb-infra render`")
    assert lines[1:] == EXPECTED_LAYOUT


def test_a_render_prunes_the_files_of_removed_pairs(tmp_path):
    out = tmp_path / "out"
    assert render(str(EXAMPLE), "--out", str(out)) == 0
    assert (out / "billing-shipping-sync").is_dir()
    smaller = tmp_path / "one.yaml"
    smaller.write_text(ONE_PAIR)
    assert render(str(smaller), "--out", str(out)) == 0
    assert not (out / "billing-shipping-sync").exists()
    assert sorted({p.split("/")[0] for p in tree(out)}) == ["accounts.conf", "apps", "orders-billing-sync"]
    assert not (out / "apps" / "shipping.json").exists(), "the app of the removed pair is pruned too"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == [], "no temp dirs left"


def test_a_directory_render_did_not_write_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("mine\n")
    assert render(str(EXAMPLE), "--out", str(out)) == 2
    assert "holds files that `jsb-infra render` did not write" in capsys.readouterr().err
    assert tree(out) == {"README.md": b"mine\n"}


def test_a_refusal_found_late_writes_nothing(tmp_path, capsys, monkeypatch):
    """A path no file system can hold is only found after the config validated; the old tree stays."""
    out = tmp_path / "out"
    assert render(str(EXAMPLE), "--out", str(out)) == 0
    before = tree(out)
    real = cli.render_documents

    def with_a_long_name(config, nkeys=None, **options):
        files = real(config, nkeys, **options)
        files[Path("orders-billing-sync") / ("x" * 256 + ".json")] = "{}\n"
        return files

    monkeypatch.setattr(cli, "render_documents", with_a_long_name)
    assert render(str(EXAMPLE), "--out", str(out)) == 2
    assert "is 261 bytes; file systems allow 255" in capsys.readouterr().err
    assert tree(out) == before


def test_a_write_failing_half_way_leaves_the_old_tree(tmp_path, capsys, monkeypatch):
    """The last file cannot be written (its parent is a file): the staging dir goes, the old tree stays."""
    out = tmp_path / "out"
    assert render(str(EXAMPLE), "--out", str(out)) == 0
    before = tree(out)
    real = cli.render_documents

    def with_an_impossible_last_file(config, nkeys=None, **options):
        files = real(config, nkeys, **options)
        files[Path("orders-billing-sync") / "stream.json" / "zz.json"] = "{}\n"
        return files

    monkeypatch.setattr(cli, "render_documents", with_an_impossible_last_file)
    assert render(str(EXAMPLE), "--out", str(out)) == 1
    assert "the previous output is unchanged" in capsys.readouterr().err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging dir left behind"


def test_check_passes_on_a_fresh_render_and_lists_every_difference(tmp_path, capsys):
    out = tmp_path / "rendered"
    assert render(str(EXAMPLE), "--out", str(out)) == 0
    capsys.readouterr()
    assert render(str(EXAMPLE), "--out", str(out), "--check") == 0
    assert "is up to date" in capsys.readouterr().out

    (out / "orders-billing-sync" / "stream.json").write_text("{}\n")
    (out / "orders-billing-sync" / "permissions" / "orders.conf").unlink()
    smaller = tmp_path / "one.yaml"
    smaller.write_text(ONE_PAIR)
    before = tree(out)
    assert render(str(smaller), "--out", str(out), "--check") == 1
    err = capsys.readouterr().err
    assert "changed  orders-billing-sync/stream.json" in err
    assert "missing  orders-billing-sync/permissions/orders.conf" in err
    assert "stale    billing-shipping-sync/stream.json" in err
    assert "changed  .jsb-rendered" in err
    assert tree(out) == before, "--check writes nothing"


def test_check_of_a_missing_directory_lists_every_file(tmp_path, capsys):
    assert render(str(EXAMPLE), "--out", str(tmp_path / "none"), "--check") == 1
    err = capsys.readouterr().err
    assert err.count("missing  ") == len(EXPECTED_LAYOUT) + 1


def test_stack_file_renders_its_pairs_and_ignores_its_secrets(tmp_path):
    stack = tmp_path / "Pulumi.ci.yaml"
    stack.write_text(
        "config:\n"
        "  jsb:servers: [nats://127.0.0.1:4222]\n"
        "  jsb:admin:\n"
        "    password:\n"
        "      secure: v1:C56S1xX+ZQzHWGB3:T/HotDDEkqtEFcdJ2nTAq/ZRcAPePhjpu+RNgcc=\n"
        "  jsb:pairs:\n"
        "    - {stream: orders-billing-sync, apps: [orders, billing]}\n"
        "encryptionsalt: v1:Woy8m6jlRjM=:v1:xOC5oqvEUFjxU6AN:E1HJkd3U5oIAtbRc0mgi5MiZewfx3Q==\n"
    )
    plain = tmp_path / "one.yaml"
    plain.write_text(ONE_PAIR)
    assert render("--stack", str(stack), "--out", str(tmp_path / "a")) == 0
    # the stack's jsb:servers are also the URLs its apps are told: the bridges
    assert render(str(plain), "--server", "nats://127.0.0.1:4222", "--out", str(tmp_path / "b")) == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert render("--stack", str(stack), "--out", str(tmp_path / "b"), "--check") == 0


def test_the_dev_stack_file_renders(tmp_path):
    assert render("--stack", str(DEV_STACK), "--out", str(tmp_path)) == 0
    assert "orders-billing-sync/stream.json" in tree(tmp_path)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("  jsb:pairs:\n    - {stream: a.b, apps: [p, q]}\n", "jsb:pairs[0].stream: stream name 'a.b'"),
        (
            "  jsb:pairs:\n    secure: v1:abc\n",
            "jsb:pairs: is a secret (`secure:`)",
        ),
        ("  jsb:servers: [nats://x:4222]\n", "jsb:pairs: required; a list of app pairs"),
        ("  jsb:pairs:\n    - {stream: s, apps: [on, b]}\n", "YAML 1.1 reads on as a boolean"),
    ],
)
def test_stack_file_problems_name_the_stack_key(tmp_path, capsys, config, problem):
    stack = tmp_path / "Pulumi.ci.yaml"
    stack.write_text("config:\n" + config)
    assert render("--stack", str(stack), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"invalid config: {stack}") and problem in err
    assert not (tmp_path / "out").exists()


def test_config_and_stack_are_exclusive(tmp_path, capsys):
    assert render(str(EXAMPLE), "--stack", str(DEV_STACK), "--out", str(tmp_path / "o")) == 2
    assert render("--out", str(tmp_path / "o")) == 2
    assert "give a config file or --stack STACKFILE" in capsys.readouterr().err
