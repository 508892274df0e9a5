"""The pure parts of replica and placement changes: when a stream or consumer counts as settled, and how
a change of both replicas and placement is split (the server refuses both in one update, err 10123).

The INFO shapes are those nats-server 2.15.1 returned on the 3-node cluster of tests/test_cluster.py."""

from __future__ import annotations

from jsb_infra.replication import consumer_replicas, first_step, placement_changes, settle_problem

SCALING = {
    "config": {"num_replicas": 3},
    "cluster": {
        "name": "jsb",
        "leader": "n1",
        "replicas": [{"name": "n2", "current": False}],
        "desired": {"replicas": [{"name": "n1"}, {"name": "n2"}, {"name": "n3"}]},
    },
}


def test_settled_means_a_leader_and_every_follower_current_with_nothing_pending():
    assert settle_problem(SCALING, 3) == "a reconfiguration (scale or move) is still in progress"
    catching_up = {"cluster": {"leader": "n1", "replicas": [{"name": "n2", "current": True}, {"name": "n3"}]}}
    assert settle_problem(catching_up, 3) == "peer(s) n3 not current yet"
    two_of_three = {"cluster": {"leader": "n1", "replicas": [{"name": "n2", "current": True}]}}
    assert settle_problem(two_of_three, 3) == "2 of 3 peers"
    assert settle_problem({"cluster": {"replicas": []}}, 3) == "no leader"
    done = {
        "cluster": {
            "leader": "n1",
            "replicas": [{"name": "n2", "current": True}, {"name": "n3", "current": True}],
        }
    }
    assert settle_problem(done, 3) is None
    offline = {"cluster": {"leader": "n1", "replicas": [{"name": "n2", "current": True, "offline": True}]}}
    assert settle_problem(offline, 2) == "peer(s) n2 not current yet"
    assert settle_problem({"config": {}}, 1) is None  # a single server reports no cluster section
    # a new R3 stream while one node is down: a majority is current, enough for a create only
    one_down = {
        "cluster": {"leader": "n1", "replicas": [{"name": "n2", "current": True}, {"name": "n3", "lag": 1}]}
    }
    assert settle_problem(one_down, 3, quorum_only=True) is None
    assert settle_problem(one_down, 3) == "peer(s) n3 not current yet"
    assert settle_problem(catching_up, 3, quorum_only=True) is None
    two_down = {"cluster": {"leader": "n1", "replicas": [{"name": "n2"}, {"name": "n3"}]}}
    assert settle_problem(two_down, 3, quorum_only=True) == "peer(s) n2, n3 not current yet"


def test_a_consumer_runs_with_its_own_replicas_or_the_streams():
    assert consumer_replicas({"config": {"num_replicas": 0}}, 3) == 3
    assert consumer_replicas({"config": {"num_replicas": 1}}, 3) == 1
    assert consumer_replicas({"config": {"num_replicas": 5}}, 3) == 3


def test_a_change_of_both_moves_before_scaling_up_and_scales_down_before_moving():
    small = {"name": "s", "num_replicas": 1, "placement": {"tags": ["zone-b"]}}
    wide = {"name": "s", "num_replicas": 3, "placement": {"cluster": "jsb"}}
    assert placement_changes(small, wide) == {"num_replicas", "placement"}
    # up: only the wider placement offers three servers, so move first (still R1)
    assert first_step(small, wide) == {"name": "s", "num_replicas": 1, "placement": {"cluster": "jsb"}}
    # down: scale first under the old placement, then move the single replica
    assert first_step(wide, small) == {"name": "s", "num_replicas": 1, "placement": {"cluster": "jsb"}}
    # down to no placement at all: scale under the old one; dropping it afterwards moves nothing
    assert first_step(wide, {"name": "s", "num_replicas": 1}) == {
        "name": "s",
        "num_replicas": 1,
        "placement": {"cluster": "jsb"},
    }
    assert placement_changes(small, {**small, "num_replicas": 3}) == {"num_replicas"}
    assert placement_changes({"num_replicas": 1}, {"num_replicas": 1, "placement": None}) == set()
