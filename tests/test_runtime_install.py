"""The runtime installs without Pulumi, and an app from that install talks to a TLS server.

A fresh venv gets `pip install <the package>` with no extras (from a copy of the package, so the
worktree gets no build/ dir; pip's cache supplies the wheels). In it: `import pulumi` fails, `jsb-infra
render` and `doctor` work, and two apps connect over mutual TLS configured only by environment
variables (JSB_BRIDGE_JSON, JSB_NKEY_SEED, JSB_TLS_*), publish and consume under their generated
permissions. Outside it, the import graph of the runtime, the outputs contract and the CLI is checked
in the dev venv (where Pulumi IS installed, so an accidental import would load it).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import nats
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, pair_server_config, provision
from test_nats_admin import make_tls_files

from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.nats_admin import JetStreamAdmin

REPO = Path(__file__).resolve().parent.parent
RUNTIME_MODULES = [
    "jsb_infra.runtime",
    "jsb_infra.runtime.doctor",
    "jsb_infra.core.outputs",
    "jsb_infra.cli",
    "jsb_infra.ops.export",
]
DEPLOY_ONLY = ("pulumi", "grpc", "semver", "debugpy", "dill")


def test_runtime_outputs_and_cli_never_import_pulumi():
    code = (
        f"import sys\nfor m in {RUNTIME_MODULES!r}: __import__(m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({DEPLOY_ONLY!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `pip install jsb-infra` (no extras) from a copy of the package."""
    root = tmp_path_factory.mktemp("runtime-install")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "jsb_infra", source / "jsb_infra", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    # No pip inside (saves ensurepip's ~3 s); the dev venv's pip installs into it with --python.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "install", "-q", str(source)], check=True, capture_output=True, text=True)
    return venv


def test_the_base_install_has_no_pulumi(runtime_venv):
    python = str(runtime_venv / "bin" / "python")
    failed = subprocess.run([python, "-c", "import pulumi"], capture_output=True, text=True)
    assert failed.returncode != 0 and "No module named 'pulumi'" in failed.stderr
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "list",
            "--format=json",
            "--disable-pip-version-check",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert not installed & {"pulumi", "grpcio", "debugpy", "protobuf", "dill"}
    assert {"jsb-infra", "nats-py", "pydantic", "nkeys", "pyyaml"} <= installed


def test_render_works_in_the_base_install(runtime_venv, tmp_path):
    cli = str(runtime_venv / "bin" / "jsb-infra")
    example = REPO / "examples" / "pairs.yaml"
    done = subprocess.run(
        [cli, "render", str(example), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "orders-billing-sync" / "stream.json").is_file()
    # `render --stack` reads the program's settings without Pulumi, and needs no passphrase
    stack = REPO / "stacks" / "Pulumi.dev.yaml"
    from_stack = subprocess.run(
        [cli, "render", "--stack", str(stack), "--out", str(tmp_path / "stack")],
        capture_output=True,
        text=True,
    )
    assert from_stack.returncode == 0, from_stack.stderr
    assert (tmp_path / "stack" / "orders-billing-sync" / "bridges" / "orders.json").is_file()


def test_migrate_state_in_the_base_install_asks_for_the_deploy_side(runtime_venv, tmp_path):
    """It converts Pulumi state (with the deploy side's providers): without them it stops at once,
    before running `pulumi`, saying what to install."""
    cli = str(runtime_venv / "bin" / "jsb-infra")
    done = subprocess.run(
        [cli, "migrate-state", "--stack", "dev", "--pulumi", str(tmp_path / "no-such-pulumi")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "migrate-state needs the deploy side (pip install 'jsb-infra[deploy]')" in done.stderr
    assert "Traceback" not in done.stderr


APP_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from jsb_infra.runtime import load_bridge, load_credentials, BridgeClient

    async def main():
        bridge = load_bridge()                 # JSB_BRIDGE_JSON
        credentials = load_credentials()       # JSB_NKEY_SEED + JSB_TLS_CA/CERT/KEY
        async with BridgeClient(bridge, credentials, connect_attempts=1) as client:
            if sys.argv[1] == "publish":
                ack = await client.publish("order.created", "order", "o-1", {"total": 42})
                print(json.dumps({"seq": ack.seq, "url": client.nc.connected_url.geturl(),
                                  "auth": credentials.describe()}))
                return
            got = []

            async def handle(event, delivery):
                got.append(event.payload)

            consumer = client.consumer(handle, fetch_timeout=0.5)
            task = asyncio.create_task(consumer.run())
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            await consumer.stop()
            await task
            print(json.dumps({"payloads": got}))

    asyncio.run(main())
    """
)


async def test_an_app_from_the_base_install_uses_mutual_tls(runtime_venv, make_server, tmp_path):
    tls = make_tls_files(tmp_path)
    pair = parse_pairs([{"stream": "orders-billing-sync", "apps": ["orders", "billing"]}]).pairs[0]
    seeds = {app: new_user_keypair()[0] for app in pair.apps}
    server_tls = (
        f'tls {{ cert_file: "{tls}/server.pem", key_file: "{tls}/server.key", '
        f'ca_file: "{tls}/ca.pem", verify: true }}\n'
    )
    server = make_server(server_tls + pair_server_config(pair, seeds))
    url = f"tls://127.0.0.1:{server.port}"
    admin_tls = {"ca_file": f"{tls}/ca.pem", "cert": f"{tls}/client.pem", "key": f"{tls}/client.key"}
    await provision(url, pair, tls=_admin_ssl(admin_tls))

    python = str(runtime_venv / "bin" / "python")
    script = tmp_path / "app.py"
    script.write_text(APP_SCRIPT)

    def app_env(app: str, with_cert: bool = True) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "JSB_BRIDGE_JSON": bridge_outputs(pair, app, [url]).model_dump_json(),
            "JSB_NKEY_SEED": seeds[app],
            "JSB_TLS_CA": str(tls / "ca.pem"),
        }
        if with_cert:
            env |= {"JSB_TLS_CERT": str(tls / "client.pem"), "JSB_TLS_KEY": str(tls / "client.key")}
        return env

    published = subprocess.run(
        [python, str(script), "publish"], env=app_env("orders"), capture_output=True, text=True, timeout=60
    )
    assert published.returncode == 0, published.stderr
    result = json.loads(published.stdout)
    assert result["seq"] == 1 and result["url"].startswith("tls://")
    assert "over mutual TLS" in result["auth"]

    consumed = subprocess.run(
        [python, str(script), "consume"], env=app_env("billing"), capture_output=True, text=True, timeout=60
    )
    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout) == {"payloads": [{"total": 42}]}
    assert await _stream_messages(url, pair.stream, admin_tls) == 0, "acked off the work queue"

    without_cert = subprocess.run(
        [python, str(script), "publish"],
        env=app_env("orders", with_cert=False),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert without_cert.returncode != 0, "the server demands the client certificate"

    doctor = subprocess.run(
        [str(runtime_venv / "bin" / "jsb-infra"), "doctor"],
        env=app_env("orders"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert f"ok      auth: nkey {public_key_of(seeds['orders'])}" in lines
    assert f"ok      tls: mutual TLS (CA {tls}/ca.pem, client certificate {tls}/client.pem)" in lines


def _admin_ssl(files: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["ca_file"])
    context.load_cert_chain(files["cert"], files["key"])
    return context


async def _stream_messages(url: str, stream: str, files: dict[str, str]) -> int:
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD, tls=_admin_ssl(files))
    try:
        info = await JetStreamAdmin(nc).stream_info(stream)
        assert info is not None
        return int(info["state"]["messages"])
    finally:
        await nc.close()
