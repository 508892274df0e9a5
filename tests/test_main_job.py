"""The main job (`make up` / `make down`: python -m jsb_infra.local.dev) on a throwaway copy.

It runs the real Pulumi CLI on the committed dev stack config, on a free port given as JSB_DEV_PORT
alone (the one setting: the stack file is not edited), then checks what an app would rely on, by
running the doctor command `up` prints, and that `down` leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import copy_project, pulumi_bin_dir

from jsb_infra.local.server import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _project_copy(tmp: Path) -> Path:
    """The project plus the committed dev stack file, as it is (its jsb:servers is the default port)."""
    root = copy_project(tmp / "project")
    dev = (REPO / "stacks" / "Pulumi.dev.yaml").read_text()
    assert "nats://127.0.0.1:4222" in dev
    (root / "stacks" / "Pulumi.dev.yaml").write_text(dev)
    return root


def _dev(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsb_infra.local.dev", command],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )


def test_up_then_down_provisions_and_leaves_nothing_running(tmp_path: Path) -> None:
    port = free_port()
    root = _project_copy(tmp_path)
    committed = (root / "stacks" / "Pulumi.dev.yaml").read_bytes()
    env = dict(os.environ)
    env.update(
        JSB_DEV_ROOT=str(root),
        JSB_DEV_PORT=str(port),
        PATH=f"{pulumi_bin_dir()}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    up = _dev("up", env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Provisioned on the dev nats-server" in up.stdout
    # The admin user's name is no secret, so Pulumi masks it nowhere: in its event stream (what the
    # Automation API and `up --json` read) it replaces the text of every secret config value, and the
    # accounts include names the deploy user.
    state = root / ".jsb"
    shown = subprocess.run(
        # the stack config `make up` ran with: the committed file, jsb:servers set from JSB_DEV_PORT
        [
            "pulumi",
            "up",
            "--yes",
            "--json",
            "--stack",
            "dev",
            "--config-file",
            str(state / "Pulumi.dev.yaml"),
        ],
        cwd=root,
        env={
            **env,
            "PULUMI_BACKEND_URL": f"file://{state / 'state'}",
            "PULUMI_HOME": str(state / "pulumi-home"),
            "PULUMI_CONFIG_PASSPHRASE": "jsb-local-dev",
        },
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert 'user: \\"[secret]\\"' not in shown.stdout
    assert '{user: \\"admin\\", password: $JSB_DEPLOY_PASSWORD}' in shown.stdout
    out = root / ".jsb" / "out" / "orders-billing-sync"
    for app in ("orders", "billing"):
        assert f"app {app}: publishes {app}.sync." in up.stdout
        bridge = json.loads((out / "bridges" / f"{app}.json").read_text())
        assert bridge["servers"] == [f"nats://127.0.0.1:{port}"] and bridge["durable"] == f"{app}-workers"
        assert (out / "permissions" / f"{app}.conf").exists()
        credentials = root / ".jsb" / "out" / "credentials" / f"{app}.json"  # one identity per app
        assert (credentials.stat().st_mode & 0o777) == 0o600
    # the server runs on exactly the account layout the stack wrote
    accounts = (root / ".jsb" / "out" / "accounts.conf").read_text()
    assert (
        (root / ".jsb" / "nats" / "nats-server.conf").read_text().endswith('include "../out/accounts.conf"\n')
    )
    assert 'nkey: "' in accounts and '"APP_orders"' in accounts
    pid = int((root / ".jsb" / "nats.pid").read_text())

    assert (root / "stacks" / "Pulumi.dev.yaml").read_bytes() == committed, "JSB_DEV_PORT edits no file"

    # The reloaded server knows each app: the doctor command `up` prints, run as printed from the
    # project directory, connects, publishes and pulls with the app's files alone.
    bridges = ".jsb/out/orders-billing-sync/bridges"
    printed = up.stdout.split("Check that an app can work")[1].splitlines()[1:3]
    assert sorted(line.split()[1:] for line in printed) == [
        ["doctor", "--bridge", f"{bridges}/{app}.json", "--credentials", f".jsb/out/credentials/{app}.json"]
        for app in ("billing", "orders")
    ], up.stdout
    for line in printed:
        checked = subprocess.run(shlex.split(line), cwd=root, text=True, capture_output=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"ok      connect: nats://127.0.0.1:{port}" in checked.stdout
        assert "ok      pull orders-billing-sync/" in checked.stdout

    again = _dev("up", env)
    # Nothing changes on a second `up`: the stack, the AppPair with its Stream, 2 Consumers and 2
    # PermissionDocuments, and the AppAccounts with 2 AppCredentials and the ServerDocuments.
    assert again.returncode == 0 and "11 unchanged" in again.stdout, again.stdout + again.stderr
    changed = (" created", " updated", " replaced", " deleted")
    assert not any(word in again.stdout for word in changed), again.stdout

    down = _dev("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (root / ".jsb" / "nats.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not list(out.glob("permissions/*"))
    # the destroyed identities' seeds are not left on disk
    credentials_dir = root / ".jsb" / "out" / "credentials"
    assert not credentials_dir.exists(), list(credentials_dir.iterdir())
    assert "removed .jsb/out/credentials/orders.json" in down.stdout
