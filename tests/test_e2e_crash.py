"""A `pulumi up` killed halfway, then run again, converges: the proof that skipping checkpoints is safe.

With `PULUMI_SKIP_CHECKPOINTS=true` the file backend writes state once, at the end of an update, so a
SIGKILL mid-`up` leaves state without anything the run created. The next `up` creates it all again:
streams and consumers already on the server are adopted (create-first answers an equal config with its
info), and credentials and permission documents are made afresh. Asserted: the server holds exactly
the pairs' streams and consumers, state holds each resource once, every app has one identity, and the
permission documents on disk are those of the identities in state.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from e2e_support import copy_project, kill_tree, offline_env, pulumi_bin_dir

from jsb_infra.core import names
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.server import LocalNatsServer, accounts_config

ADMIN_USER, ADMIN_PASSWORD = "admin", "crash-test-admin"
PAIRS = 20
KILL_AT = PAIRS // 2


def pairs() -> list[dict[str, Any]]:
    specs = [
        {"stream": f"crash{i:02d}-sync", "apps": [f"left{i:02d}", f"right{i:02d}"], "protect": False}
        for i in range(PAIRS)
    ]
    return [p.model_dump(mode="json") for p in parse_pairs(specs).pairs]


async def api(url: str, subject: str) -> dict[str, Any]:
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        reply: dict[str, Any] = json.loads((await nc.request(subject, b"", timeout=5)).data)
        return reply
    finally:
        await nc.close()


def stream_names(url: str) -> list[str]:
    return sorted(asyncio.run(api(url, "$JS.API.STREAM.NAMES")).get("streams") or [])


def consumer_names(url: str, stream: str) -> list[str]:
    return sorted(asyncio.run(api(url, f"$JS.API.CONSUMER.NAMES.{stream}")).get("consumers") or [])


@pytest.fixture
def server(tmp_path: Path) -> Any:
    with LocalNatsServer(
        store_dir=tmp_path / "nats", extra_config=accounts_config([], ADMIN_USER, ADMIN_PASSWORD)
    ) as s:
        yield s


def test_up_killed_halfway_then_up_again_converges(tmp_path: Path, server: LocalNatsServer) -> None:
    project = copy_project(tmp_path / "project")
    out = tmp_path / "out"
    env = {
        **os.environ,
        **offline_env(tmp_path, pulumi_bin_dir(), "crash-test"),
        "PULUMI_SKIP_CHECKPOINTS": "true",
    }
    config = {
        "jsb:servers": [server.url],
        "jsb:admin": {"user": ADMIN_USER, "password": ADMIN_PASSWORD},
        "jsb:outputDir": str(out),
        "jsb:pairs": pairs(),
    }
    (project / "stacks" / "Pulumi.crash.yaml").write_text(json.dumps({"config": config}))

    def pulumi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pulumi", *args], cwd=project, env=env, capture_output=True, text=True)

    assert pulumi("stack", "init", "crash").returncode == 0
    up = ["up", "--yes", "--skip-preview", "--stack", "crash"]
    first = subprocess.Popen(
        ["pulumi", *up], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while len(stream_names(server.url)) < KILL_AT and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_tree(first.pid)  # the CLI and its plugins, as a crash of the machine or container would
    first.wait()
    made_before_kill = stream_names(server.url)
    assert KILL_AT <= len(made_before_kill) < PAIRS, "the kill must land halfway through the create"

    cancelled = pulumi("cancel", "--yes", "--stack", "crash")  # the killed run's lock, as the CLI advises
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    second = pulumi(*up)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "adopted stream" in second.stdout + second.stderr, "adoption is reported in the up output"

    wanted = [p["stream"] for p in pairs()]
    assert stream_names(server.url) == sorted(wanted)
    for p in pairs():
        keeper = [names.DLQ_KEEPER] if p.get("dlq", True) else []
        assert consumer_names(server.url, p["stream"]) == sorted(
            [*(f"{app}-workers" for app in p["apps"]), *keeper]
        )

    exported = json.loads(pulumi("stack", "export", "--stack", "crash").stdout)
    deployment = exported["deployment"]
    assert not deployment.get("pending_operations")
    resources = deployment["resources"]
    kinds = Counter(r["type"].rsplit(":", 1)[-1] for r in resources if "dynamic" in r["type"])
    assert kinds == {
        "Stream": PAIRS,
        "Consumer": 2 * PAIRS,
        "PermissionDocument": 2 * PAIRS,
        "AppCredential": 2 * PAIRS,
        "ServerDocuments": 1,
    }
    components = Counter(r["type"] for r in resources if r["type"].startswith("jsb:index:"))
    assert components == {"jsb:index:AppPair": PAIRS, "jsb:index:AppAccounts": 1}
    urns = [r["urn"] for r in resources]
    assert len(urns) == len(set(urns))
    # every stream and consumer of the adopted half is in state exactly once, under its pair
    by_urn = {r["urn"]: r for r in resources}
    for r in resources:
        kind = r["type"].rsplit(":", 1)[-1]
        if kind in ("Stream", "Consumer", "PermissionDocument"):
            assert by_urn[r["parent"]]["type"] == "jsb:index:AppPair", r["urn"]
        if kind in ("AppCredential", "ServerDocuments"):
            assert by_urn[r["parent"]]["type"] == "jsb:index:AppAccounts", r["urn"]
    streams_in_state = sorted(r["outputs"]["name"] for r in resources if r["type"].endswith(":Stream"))
    assert streams_in_state == sorted(wanted)

    credentials = [r for r in resources if r["type"].endswith(":AppCredential")]
    keys = {r["outputs"]["app"]: r["outputs"]["public_key"] for r in credentials}
    assert sorted(keys) == sorted(app for p in pairs() for app in p["apps"])
    assert len(keys) == len(set(keys.values())) == 2 * PAIRS, "one identity per app"
    # the account layout written to disk names exactly the identities in state, each app its own
    accounts = (out / "accounts.conf").read_text()
    for app, key in keys.items():
        block = accounts.split(f'"{names.app_account(app)}" {{', 1)[1].split("imports:", 1)[0]
        assert re.findall(r'nkey: "(U[A-Z0-9]+)"', block) == [key], f"{app}'s account holds another identity"
