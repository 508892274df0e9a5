"""`jsb-infra render --stack`: the documents `pulumi up` writes for a stack file, from the program's own
settings reader. Under the mock engine of test_program_mocks, the program's `ServerDocuments` input and
`render --stack` of the same settings are compared file by file, in config mode (the generated keys
given to render) and in JWT mode, with every document-shaping key set; and the committed tree of the
old behaviour (pairs alone) fails the check. The real CLI and server: tests/test_e2e_config_reload.py.
"""

# ruff: noqa: F811  (the `monitor` fixture is imported from test_program_mocks and used as a parameter)
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nkeys
import pulumi
import pytest
import yaml
from test_program_mocks import (  # noqa: F401  (monitor is a fixture)
    CREDENTIAL_T,
    DOCUMENTS_T,
    TWO_PAIRS,
    RecordingMonitor,
    monitor,
    run_build,
)

from jsb_infra.cli import main
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.documents import DocumentShape
from jsb_infra.deploy.app_accounts import AppAccountsArgs
from jsb_infra.deploy.stack_settings import StackFile, StackSettings, read_stack_settings
from jsb_infra.ops.rendered_tree import MANIFEST

ACCOUNT = jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
DEPLOY_NKEY = new_user_keypair()[1]
PREVIEW_NKEY = new_user_keypair()[1]
SETTINGS: dict[str, Any] = {
    "jsb:servers": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
    "jsb:appServers": ["nats://apps.example:4222"],
    "jsb:jetstreamAccount": "STREAMS",
    "jsb:deployUser": {"nkey": DEPLOY_NKEY},
    "jsb:pairs": TWO_PAIRS,
    "jsb:outputDir": "/srv/nats/documents",
    "jsb:previewUser": {"nkey": PREVIEW_NKEY},
    "jsb:capacity": {"file": "20GiB", "memory": "1GiB"},
    "jsb:appLimits": {"connections": 50, "overrides": {"billing": {"subscriptions": 200}}},
}
CONFIG_AUTH = {"mode": "config", "accounts_file": "/etc/nats/accounts.conf", "reload": {"command": ["true"]}}
JWT_AUTH = {"mode": "jwt", "jetstream_account": ACCOUNT}
ADMIN = {
    "jsb:admin": {"password": {"secure": "v1:C56S1xX+ZQzHWGB3:T/HotDDEkqtEFcdJ2nTAq/ZRcAPePhjpu+RNgcc="}}
}


def write_stack(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"config": values}, sort_keys=False))
    return path


def engine_config(values: dict[str, Any]) -> None:
    """The stack config as the Pulumi engine hands it to a program: structured values as JSON text."""
    pulumi.runtime.set_all_config(
        {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}
    )


def rendered(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@pytest.mark.parametrize("auth", [CONFIG_AUTH, JWT_AUTH], ids=["config", "jwt"])
def test_render_stack_is_what_the_program_writes_file_by_file(
    monitor: RecordingMonitor, tmp_path: Path, auth: dict[str, Any]
) -> None:
    values = {**SETTINGS, "jsb:auth": auth}
    engine_config(values)
    run_build()
    [documents] = monitor.of_type(DOCUMENTS_T)
    written: dict[str, str] = documents.inputs["documents"]
    keys = [f"{r.inputs['app']}={monitor.state(r)['public_key']}" for r in monitor.of_type(CREDENTIAL_T)]

    stack = write_stack(tmp_path / "Pulumi.prod.yaml", {**values, **ADMIN})
    out = tmp_path / "rendered"
    nkey_args = [arg for key in keys for arg in ("--nkey", key)]
    assert main(["render", "--stack", str(stack), "--out", str(out), *nkey_args]) == 0
    assert rendered(out) == written  # every file, byte for byte
    conf = written["accounts.conf"]
    assert '"STREAMS" {' in conf and "JETSTREAM" not in conf and DEPLOY_NKEY in conf and PREVIEW_NKEY in conf
    assert (
        json.loads(written["orders-billing-sync/bridges/orders.json"])["servers"]
        == SETTINGS["jsb:appServers"]
    )
    if auth["mode"] == "config":
        assert len(keys) == 3 and all(key.split("=")[1] in conf for key in keys)
    else:
        assert not keys and 'nkey: "U' not in conf.replace(DEPLOY_NKEY, "").replace(PREVIEW_NKEY, "")
    assert main(["render", "--stack", str(stack), "--out", str(out), "--check", *nkey_args]) == 0


def test_a_tree_rendered_from_the_pairs_alone_fails_the_check(tmp_path: Path, capsys) -> None:
    """The old `render --stack` read `jsb:pairs` only: its tree (JETSTREAM, no deploy user, no bridges)
    passed the check. Now the check lists what `up` would write differently."""
    stack = write_stack(tmp_path / "Pulumi.prod.yaml", {**SETTINGS, "jsb:auth": JWT_AUTH})
    config = tmp_path / "pairs.yaml"
    config.write_text(yaml.safe_dump({"pairs": TWO_PAIRS}))
    out = tmp_path / "rendered"
    assert main(["render", str(config), "--out", str(out)]) == 0  # the pairs alone, as before
    assert '"JETSTREAM" {' in (out / "accounts.conf").read_text()
    capsys.readouterr()
    assert main(["render", "--stack", str(stack), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "changed  accounts.conf" in err and "changed  orders-billing-sync/permissions/orders.conf" in err
    assert "missing  orders-billing-sync/bridges/orders.json" in err
    # control: the same stack without the document-shaping keys renders what the pairs alone render
    plain = write_stack(
        tmp_path / "Pulumi.plain.yaml", {"jsb:servers": SETTINGS["jsb:servers"], "jsb:pairs": TWO_PAIRS}
    )
    assert main(["render", "--stack", str(plain), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "accounts.conf").read_text() == (out / "accounts.conf").read_text()


@pytest.mark.parametrize(
    ("values", "args", "expected"),
    [
        (
            {"jsb:jetstreamAccount": {"secure": "v1:abc"}},
            [],
            "jsb:jetstreamAccount: is a secret (`secure:`)",
        ),
        ({"jsb:auth": {"mode": "ldap"}}, [], "jsb:auth.mode: must be one of config, jwt"),
        ({"jsb:auth": "jwt"}, [], "jsb:auth: must be an object"),
        ({"jsb:deployUser": {"nkey": "nope"}}, [], "jsb:deployUser.nkey: must be an NKey user public key"),
        ({"jsb:jetstreamAccount": "APP_x"}, [], "jsb:jetstreamAccount:"),
        ({}, ["--jetstream-account", "OTHER"], "--jetstream-account: not with --stack"),
        ({}, ["--server", "nats://x:4222"], "--server: not with --stack"),
        (
            {"jsb:auth": JWT_AUTH},
            ["--nkey", f"orders={DEPLOY_NKEY}"],
            "--nkey/--nkeys-file: the stack's jsb:auth",
        ),
    ],
)
def test_a_bad_stack_setting_or_option_exits_2_naming_it_and_writes_nothing(
    tmp_path: Path, capsys, values: dict[str, Any], args: list[str], expected: str
) -> None:
    stack = write_stack(tmp_path / "Pulumi.prod.yaml", {**SETTINGS, **values})
    out = tmp_path / "rendered"
    assert main(["render", "--stack", str(stack), "--out", str(out), *args]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_the_keys_file_gives_the_app_users_and_names_a_bad_line(tmp_path: Path, capsys) -> None:
    stack = write_stack(tmp_path / "Pulumi.prod.yaml", {**SETTINGS, "jsb:auth": CONFIG_AUTH})
    orders, billing = new_user_keypair()[1], new_user_keypair()[1]
    keys = tmp_path / "prod.nkeys"
    keys.write_text(f"# app keys `pulumi up` generated\norders={orders}\n\nbilling={billing}\n")
    out = tmp_path / "rendered"
    assert main(["render", "--stack", str(stack), "--out", str(out), "--nkeys-file", str(keys)]) == 0
    conf = (out / "accounts.conf").read_text()
    assert orders in conf and billing in conf and "render with --nkey shipping=U..." in conf
    keys.write_text(f"orders={orders}\nbilling=UNOTAKEY\n")
    assert (
        main(["render", "--stack", str(stack), "--out", str(out), "--nkeys-file", str(keys), "--check"]) == 2
    )
    assert (
        f"{keys}:2 'billing=UNOTAKEY': 'UNOTAKEY' is not an NKey user public key" in capsys.readouterr().err
    )


def test_a_jsb_key_set_for_every_stack_in_pulumi_yaml_is_refused(tmp_path: Path, capsys) -> None:
    """The program would see a project-level value that the stack file does not hold: refuse rather
    than render documents `up` would not write. A declaration without a value sets nothing (control)."""
    (tmp_path / "stacks").mkdir()
    stack = write_stack(tmp_path / "stacks" / "Pulumi.prod.yaml", SETTINGS)
    project = tmp_path / "Pulumi.yaml"
    project.write_text("name: jsb\nruntime: python\nconfig:\n  jsb:jetstreamAccount:\n    default: OTHER\n")
    out = tmp_path / "rendered"
    assert main(["render", "--stack", str(stack), "--out", str(out)]) == 2
    assert f"jsb:jetstreamAccount: set in the project file {project}" in capsys.readouterr().err
    assert not out.exists()
    project.write_text("name: jsb\nruntime: python\nconfig:\n  jsb:jetstreamAccount:\n    type: string\n")
    assert main(["render", "--stack", str(stack), "--out", str(out)]) == 0
    assert '"STREAMS" {' in (out / "accounts.conf").read_text()


DOCUMENT_SHAPING = {
    "pairs",
    "servers",
    "app_servers",
    "jetstream_account",
    "deploy",
    "auth",
    "app_limits",
    "reader",
    "capacity",
}
"""Every StackSettings field, each reaching the documents through `accounts_args()` (servers as the
bridges' default) or, for pairs, directly."""


def test_every_stack_setting_is_known_to_reach_render() -> None:
    """A tripwire for new `jsb:` keys: a field added to StackSettings must be passed on by
    `accounts_args()` (so `render --stack` and the program both get it) before it is listed here."""
    fields = {f.name for f in dataclasses.fields(StackSettings)}
    assert fields == DOCUMENT_SHAPING, (
        f"new StackSettings field(s) {sorted(fields - DOCUMENT_SHAPING)}: pass them on in accounts_args() "
        "and deployment_documents() if they shape a document, then list them here"
    )
    settings = read_stack_settings(StackFile("s", {**SETTINGS, "jsb:auth": JWT_AUTH}))
    args = settings.accounts_args()
    assert args == {
        "app_servers": SETTINGS["jsb:appServers"],
        "jetstream_account": "STREAMS",
        "deploy_user": settings.deploy,
        "auth": settings.auth,
        "app_limits": settings.app_limits,
        "reader": settings.reader,
        "capacity": settings.capacity,
    }
    assert settings.app_limits.connections == 50
    assert set(args) == set(DocumentShape.__annotations__)
    assert set(args) <= {f.name for f in dataclasses.fields(AppAccountsArgs)}
