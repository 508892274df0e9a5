"""`jsb-infra export`: one app's bridge and credentials as shell exports, dotenv, or a Kubernetes Secret.

The shell form is proven by running `jsb-infra doctor` with nothing but the exported variables against
a server that enforces the generated permissions; the other forms must carry the same variables.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_PAIR
from dotenv import dotenv_values

from jsb_infra.cli import main
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.runtime.config import load_bridge, load_credentials

CLI = Path(sys.executable).parent / "jsb-infra"
PAIR = parse_pairs([DEFAULT_PAIR]).pairs[0]


def stack_outputs(pair: Pair, seeds: dict[str, str], servers: list[str], per_stream: bool = False) -> dict:
    """What `pulumi stack output --json --show-secrets` prints for one pair."""
    bridges = {
        pair.stream: {app: bridge_outputs(pair, app, servers).model_dump(mode="json") for app in pair.apps}
    }
    identities = {app: {"public_key": public_key_of(seed), "seed": seed} for app, seed in seeds.items()}
    credentials = {pair.stream: identities} if per_stream else identities
    return {"bridges": bridges, "credentials": credentials, "permissions": {}}


def write_outputs(tmp_path: Path, outputs: dict) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return path


@pytest.fixture
def seeds() -> dict[str, str]:
    return {app: new_user_keypair()[0] for app in PAIR.apps}


@pytest.fixture
def outputs_file(tmp_path, seeds) -> Path:
    return write_outputs(tmp_path, stack_outputs(PAIR, seeds, ["tls://nats.example:4222"]))


async def test_shell_export_is_all_an_app_needs(provisioned_pair, tmp_path):
    pp = provisioned_pair
    outputs = write_outputs(tmp_path, stack_outputs(pp.pair, pp.seeds, [pp.url]))
    env_file = tmp_path / "orders.env"
    assert main(["export", "--outputs", str(outputs), "--app", "orders", "--out", str(env_file)]) == 0
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    doctor = subprocess.run(
        ["bash", "-c", f'. "{env_file}" && exec "{CLI}" doctor --timeout 5'],
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"ok      auth: nkey {public_key_of(pp.seeds['orders'])}" in doctor.stdout.splitlines()
    assert "ok      pull orders-billing-sync/orders-workers" in doctor.stdout


@pytest.mark.parametrize("per_stream", [False, True])
def test_dotenv_and_k8s_secret_carry_the_same_variables(tmp_path, capsys, seeds, per_stream):
    servers = ["tls://nats.example:4222"]
    outputs = write_outputs(tmp_path, stack_outputs(PAIR, seeds, servers, per_stream=per_stream))
    assert main(["export", "--outputs", str(outputs), "--app", "billing", "--format", "dotenv"]) == 0
    dotenv_file = tmp_path / "billing.env"
    dotenv_file.write_text(capsys.readouterr().out)
    variables = {k: v or "" for k, v in dotenv_values(dotenv_file).items()}
    assert sorted(variables) == ["JSB_APP", "JSB_BRIDGE_JSON", "JSB_NKEY_SEED", "JSB_STREAM"]
    assert load_bridge(env=variables) == bridge_outputs(PAIR, "billing", servers)
    assert load_credentials(env=variables).nkey_seed == seeds["billing"]

    assert main(["export", "--outputs", str(outputs), "--app", "billing", "--format", "k8s-secret",
                 "--namespace", "shop"]) == 0  # fmt: skip
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["apiVersion"] == "v1" and manifest["kind"] == "Secret" and manifest["type"] == "Opaque"
    assert manifest["metadata"]["name"] == "jsb-billing" and manifest["metadata"]["namespace"] == "shop"
    assert manifest["stringData"] == variables


def test_secret_names_follow_kubernetes_rules(capsys, outputs_file):
    assert main(["export", "--outputs", str(outputs_file), "--app", "orders", "--format", "k8s-secret",
                 "--name", "Orders_Secret"]) == 2  # fmt: skip
    assert "--name: 'Orders_Secret' is not a Kubernetes object name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--app", "shipping"], "app: 'shipping' is not an app of stream 'orders-billing-sync'"),
        (["--app", "orders", "--stream", "other"], "stream: 'other' is not in bridges"),
        (["--app", "orders", "--bridges", "b.json"], "give either --outputs or --bridges with --credentials"),
    ],
)
def test_export_problems_exit_2_naming_the_field(capsys, outputs_file, args, problem):
    assert main(["export", "--outputs", str(outputs_file), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot export:") and problem in err


def test_hidden_secrets_are_refused(tmp_path, capsys, outputs_file):
    outputs = json.loads(outputs_file.read_text())
    outputs["credentials"] = "[secret]"
    path = tmp_path / "hidden.json"
    path.write_text(json.dumps(outputs))
    assert main(["export", "--outputs", str(path), "--app", "orders"]) == 2
    assert "hidden; run `pulumi stack output` with --show-secrets" in capsys.readouterr().err


def export_to(outputs_file: Path, out: Path) -> int:
    return main(["export", "--outputs", str(outputs_file), "--app", "orders", "--out", str(out)])


def test_out_dash_is_stdout_and_leaves_no_file_named_dash(tmp_path, capsys, outputs_file, seeds, monkeypatch):
    """`--out - | kubectl apply -f -`: the export goes to the pipe, no seed is left in a file `-`."""
    monkeypatch.chdir(tmp_path)
    assert export_to(outputs_file, Path("-")) == 0
    assert seeds["orders"] in capsys.readouterr().out
    assert not (tmp_path / "-").exists()


def test_out_through_a_symlink_is_refused_and_its_target_untouched(tmp_path, capsys, outputs_file, seeds):
    """A link planted where the export goes (pointing at a file the attacker can read, or one whose
    content matters) gets nothing: exit 2, the target and the link unchanged, no seed anywhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "readable-by-others.txt"
    target.write_text("original content\n")
    target.chmod(0o644)
    link = tmp_path / "orders.env"
    link.symlink_to(target)
    assert export_to(outputs_file, link) == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot export:") and "--out:" in err and "is a symlink" in err
    assert target.read_text() == "original content\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert link.is_symlink() and os.readlink(link) == str(target)
    # a dangling link (which O_CREAT would follow to create its target) is refused the same way
    dangling = tmp_path / "dangling.env"
    dangling.symlink_to(elsewhere / "created-by-the-export")
    assert export_to(outputs_file, dangling) == 2
    assert not (elsewhere / "created-by-the-export").exists()
    every_file = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != outputs_file]
    assert every_file == [target]
    assert not any(seeds["orders"] in p.read_text() for p in every_file), "the seed was written somewhere"


def test_control_the_former_open_follows_the_symlink(tmp_path, outputs_file, seeds):
    """What `export` did before: open(O_WRONLY|O_CREAT|O_TRUNC) writes the seed into the link's target."""
    target = tmp_path / "target.txt"
    target.write_text("original content\n")
    link = tmp_path / "orders.env"
    link.symlink_to(target)
    descriptor = os.open(link, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"JSB_NKEY_SEED={seeds['orders']}\n")
    assert seeds["orders"] in target.read_text()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_out_that_is_not_a_regular_file_is_refused(tmp_path, capsys, outputs_file, kind):
    out = tmp_path / "orders.env"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        out.mkdir()
    assert export_to(outputs_file, out) == 2  # returns: a FIFO is never opened (that would block)
    assert "exists and is not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(out).st_mode) if kind == "fifo" else out.is_dir() and not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["orders.env", "outputs.json"])


def test_out_replaces_a_regular_file_whole_with_mode_0600(tmp_path, outputs_file, seeds):
    """An existing file (wider mode, longer content, a second hard link) is replaced by a new 0600 file:
    the other link keeps the old content, nothing of the old text remains, no temp file is left."""
    out = tmp_path / "orders.env"
    out.write_text("x" * 10_000)
    out.chmod(0o644)
    other_link = tmp_path / "hard-link"
    os.link(out, other_link)
    assert export_to(outputs_file, out) == 0
    text = out.read_text()
    assert text.startswith("export ") and "x" * 10 not in text and seeds["orders"] in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_nlink == 1
    assert other_link.read_text() == "x" * 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["hard-link", "orders.env", "outputs.json"])
