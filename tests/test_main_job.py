"""The main job (`make up` / `make down`: python -m jsb_infra.local.dev) on a throwaway copy.

It runs the real Pulumi CLI on the committed dev stack config (only the port is moved to a free one),
then checks what an app would rely on, and that `down` leaves nothing running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import copy_project, pulumi_bin_dir

from jsb_infra.local.server import free_port
from jsb_infra.runtime import doctor

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _project_copy(tmp: Path, port: int) -> Path:
    """The project plus the committed dev stack file, its server moved to `port`."""
    root = copy_project(tmp / "project")
    dev = (REPO / "stacks" / "Pulumi.dev.yaml").read_text()
    assert "nats://127.0.0.1:4222" in dev
    (root / "stacks" / "Pulumi.dev.yaml").write_text(dev.replace(":4222", f":{port}"))
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
    root = _project_copy(tmp_path, port)
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
        ["pulumi", "up", "--yes", "--json", "--stack", "dev"],
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

    # The reloaded server knows the app: doctor connects, publishes and pulls with its files alone.
    args = [
        "--bridge",
        str(out / "bridges" / "orders.json"),
        "--credentials",
        str(root / ".jsb" / "out" / "credentials" / "orders.json"),
    ]
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    assert doctor.run(parser.parse_args(args)) == 0

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
