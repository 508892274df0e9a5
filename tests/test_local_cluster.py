"""The cluster harness itself: real processes, routes, per-node stores, leaders read from the API."""

from __future__ import annotations

from jsb_infra.local_cluster import LocalNatsCluster


async def test_r3_stream_spans_three_nodes_and_a_follower_restart_keeps_it(
    nats_cluster: LocalNatsCluster,
) -> None:
    config = {"name": "S", "subjects": ["s.>"], "num_replicas": 3, "storage": "file"}
    await nats_cluster.admin_call(lambda admin: admin.create_stream(config))
    await nats_cluster.wait_for_current("S", 3, timeout=20)

    state = await nats_cluster.stream_state("S")
    assert state is not None and state.leader is not None
    assert {state.leader, *state.peers} == {"n1", "n2", "n3"}
    meta = nats_cluster.meta_leader()
    assert meta in {"n1", "n2", "n3"}

    follower = sorted(state.peers)[0]
    nats_cluster.restart_node(follower, kill=True)
    await nats_cluster.wait_for_current("S", 3, timeout=20)
    after = await nats_cluster.stream_state("S")
    assert after is not None and follower in {after.leader, *after.peers}
    assert nats_cluster.node(follower).running
