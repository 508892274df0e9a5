"""End-to-end on a 3-node cluster: the real `pulumi up` rides through a meta-leader election in one run,
and a replica change 1 -> 3 -> 1 returns only when the stream's and the consumers' peers are current."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pulumi.automation as auto
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER
from e2e_support import copy_project, offline_env, pulumi_bin_dir, pulumi_command, set_admin, set_plain_config

from jsb_infra.local.cluster import LocalNatsCluster

pytestmark = pytest.mark.e2e

STREAM = "cluster-orders-billing"
DURABLES = ("orders-workers", "billing-workers")


def pair(replicas: int) -> dict[str, Any]:
    return {
        "stream": STREAM,
        "apps": ["orders", "billing"],
        "protect": False,
        "stream_options": {"replicas": replicas},
    }


def current(cluster: LocalNatsCluster, replicas: int) -> None:
    """The stream and both consumers report `replicas` current peers right now (no waiting)."""
    asyncio.run(cluster.wait_for_current(STREAM, replicas, DURABLES, timeout=0))


def test_up_rides_through_a_meta_election_and_replicas_change_for_real(nats_cluster, tmp_path: Path):
    cluster = nats_cluster
    bin_dir = pulumi_bin_dir()
    options = auto.LocalWorkspaceOptions(
        work_dir=str(copy_project(tmp_path / "project")),
        env_vars=offline_env(tmp_path, bin_dir, "cluster-e2e"),
        pulumi_home=str(tmp_path / "home"),
        pulumi_command=pulumi_command(bin_dir, tmp_path),
    )
    stack = auto.create_or_select_stack(stack_name="cluster", work_dir=options.work_dir, opts=options)
    set_plain_config(stack, {"jsb:servers": cluster.urls, "jsb:pairs": [pair(1)]})
    set_admin(stack, ADMIN_USER, ADMIN_PASSWORD)

    # The meta leader and one more node crash as the up starts and come back 3 s later: no meta leader
    # can exist before they are back and an election (4-9 s) has run, so every management call of the
    # up meets the election. One up, no error.
    meta = cluster.meta_leader()
    assert meta is not None
    down = [meta, next(n.name for n in cluster.nodes if n.name != meta)]
    started = time.monotonic()
    for name in down:
        cluster.stop_node(name, kill=True)
    restarts = [
        threading.Timer(3.0, cluster.start_node, args=(n,), kwargs={"wait_healthy": None}) for n in down
    ]
    for timer in restarts:
        timer.start()
    try:
        first = stack.up(color="never")
    finally:
        for timer in restarts:
            timer.join()
    assert first.summary.result == "succeeded"
    first_up = time.monotonic() - started
    assert first_up > 7.0, "the up should have waited for the election"
    current(cluster, 1)

    set_plain_config(stack, {"jsb:pairs": [pair(3)]})
    started = time.monotonic()
    up = stack.up(color="never")
    scale_up = time.monotonic() - started
    assert (up.summary.resource_changes or {}).get("update", 0) >= 1 and "replace" not in (
        up.summary.resource_changes or {}
    ), up.stdout
    current(cluster, 3)  # the up returned only once every peer was there

    set_plain_config(stack, {"jsb:pairs": [pair(1)]})
    started = time.monotonic()
    stack.up(color="never")
    scale_down = time.monotonic() - started
    current(cluster, 1)
    print(f"up through the election {first_up:.1f}s, 1 -> 3 {scale_up:.1f}s, 3 -> 1 {scale_down:.1f}s")
