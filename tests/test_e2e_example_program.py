"""The documented example of jsb-infra in a user's own program (examples/program) runs as written.

The example's directory is copied as is (only the venv is named, as its README tells a user to make
one), its stack config set as its README says, and the real CLI runs `up` and `destroy` against two
real nats-servers: each pair lands on the server of its connection, the credentials are secret.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pulumi.automation as auto
import pytest
from conftest import ADMIN_USER
from e2e_support import offline_env, pulumi_bin_dir, pulumi_command, run_cli

from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import AdminConnection, admin_session

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "program"
PASSWORDS = {"east": "east-example-secret", "west": "west-example-secret"}


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalNatsServer]]:
    started = {
        side: LocalNatsServer(
            store_dir=tmp_path_factory.mktemp(side),
            extra_config=f'authorization {{ users: [ {{user: "{ADMIN_USER}", password: "{pw}"}} ] }}\n',
        ).start()
        for side, pw in PASSWORDS.items()
    }
    yield started
    for server in started.values():
        server.stop()


async def stream_names(server: LocalNatsServer, password: str) -> list[str]:
    async with admin_session(AdminConnection(servers=[server.url], user=ADMIN_USER, password=password)) as js:
        reply = await js.nc.request("$JS.API.STREAM.NAMES", b"", timeout=5)
    return list(json.loads(reply.data).get("streams") or [])


async def test_the_example_program_deploys_each_pair_to_its_own_server(tmp_path, servers):
    bin_dir = pulumi_bin_dir()
    project = tmp_path / "platform"
    shutil.copytree(EXAMPLE, project)
    manifest = (project / "Pulumi.yaml").read_text()
    assert "toolchain: pip" in manifest
    (project / "Pulumi.yaml").write_text(
        manifest.replace("toolchain: pip", f"toolchain: pip\n    virtualenv: {sys.prefix}")
    )
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project),
        env_vars={
            **offline_env(tmp_path, bin_dir, "example-passphrase"),
            "EAST_NATS_PASSWORD": PASSWORDS["east"],
        },
        pulumi_home=str(tmp_path / "home"),
        pulumi_command=pulumi_command(bin_dir, tmp_path),
    )
    stack = auto.create_or_select_stack(stack_name="dev", work_dir=str(project), opts=options)
    stack.set_config("platform:eastServers[0]", auto.ConfigValue(servers["east"].url), path=True)
    stack.set_config("platform:westServers[0]", auto.ConfigValue(servers["west"].url), path=True)
    stack.set_config("platform:eastAdmin.user", auto.ConfigValue(ADMIN_USER), path=True)
    stack.set_config("platform:eastAdmin.password.env", auto.ConfigValue("EAST_NATS_PASSWORD"), path=True)
    stack.set_config("platform:westUser", auto.ConfigValue(ADMIN_USER))
    stack.set_config("platform:westPassword", auto.ConfigValue(PASSWORDS["west"], secret=True))
    stack.set_config("platform:protect", auto.ConfigValue("false"))
    stack.set_config("platform:outputDir", auto.ConfigValue(str(tmp_path / "out")))

    up = stack.up(color="never")
    assert up.summary.result == "succeeded", up.stdout
    assert await stream_names(servers["east"], PASSWORDS["east"]) == ["orders-billing-sync"]
    assert await stream_names(servers["west"], PASSWORDS["west"]) == ["inventory-shipping-sync"]
    outputs = stack.outputs()
    assert outputs["credentials"].secret and not outputs["bridges"].secret
    seed = outputs["credentials"].value["east"]["orders"]["seed"]
    assert seed.startswith("SU")
    state = run_cli(stack, "stack", "export")  # as stored: secrets encrypted
    assert seed not in state and PASSWORDS["west"] not in state and PASSWORDS["east"] not in state
    assert '"ciphertext"' in state
    decrypted = run_cli(stack, "stack", "export", "--show-secrets")
    assert PASSWORDS["east"] not in decrypted  # named, not stored; west's is a secret Input: stored
    assert (tmp_path / "out" / "east" / "accounts.conf").exists()
    assert (tmp_path / "out" / "west" / "inventory-shipping-sync" / "stream.json").exists()

    stack.destroy(color="never")
    assert await stream_names(servers["east"], PASSWORDS["east"]) == []
    assert await stream_names(servers["west"], PASSWORDS["west"]) == []
