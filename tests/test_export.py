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
