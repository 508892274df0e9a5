"""Stream bounds, reservations and the declared capacity: derived as the server counts, shown by
`render`, and a layout that does not fit refused (naming the field and the rule) before anything
touches a server. The server's side of it is in test_volume_attacks.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from jsb_infra.cli import main
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.capacity import (
    STORED_MSG_OVERHEAD,
    capacity_report,
    derived_max_bytes,
    isolation_problems,
    jetstream_limits,
    stream_max_bytes,
)
from jsb_infra.core.spec import (
    DEFAULT_MAX_MSG_SIZE,
    STORED_CONTEXT,
    Capacity,
    ConfigError,
    Pair,
    parse_config,
)
from jsb_infra.core.topology import stream_config
from jsb_infra.deploy.stack_settings import parse_stack_settings

AB = {"stream": "a-b", "apps": ["a", "b"]}


def config(*pairs: dict[str, Any], capacity: Any = None) -> Any:
    return parse_config({"pairs": list(pairs), "capacity": capacity})


def problems(*pairs: dict[str, Any], capacity: Any = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config(*pairs, capacity=capacity)
    return err.value.problems


def test_max_bytes_is_derived_so_that_no_subject_can_fill_the_stream() -> None:
    pair = config(AB).pairs[0]
    opts = pair.stream_options
    per_subject = [
        opts.max_msgs_per_subject * (DEFAULT_MAX_MSG_SIZE + len(s) + STORED_MSG_OVERHEAD)
        for s in pair.subjects()
    ]
    assert stream_max_bytes(pair) == derived_max_bytes(opts, pair.subjects()) == sum(per_subject)
    rendered = stream_config(pair)
    assert rendered["max_bytes"] == sum(per_subject)
    assert (rendered["discard"], rendered["discard_new_per_subject"]) == ("new", True)
    assert isolation_problems(pair) == []
    no_dlq = config({**AB, "dlq": False}).pairs[0]
    assert stream_max_bytes(no_dlq) == sum(per_subject[:2]), "two subjects without a DLQ"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"discard": "old"}, "discard old"),
        ({"max_msgs_per_subject": -1, "max_bytes": 10**6}, "max_msgs_per_subject -1"),
        ({"max_bytes": 1000}, "max_bytes 1000 is less than its subjects' bounds"),
        ({"max_msgs": 10}, "max_msgs 10 is less than its subjects' bounds"),
    ],
)
def test_explicit_settings_that_let_one_subject_harm_another_are_named(
    options: dict[str, Any], reason: str
) -> None:
    pair = config({**AB, "stream_options": options}).pairs[0]
    assert any(reason in p for p in isolation_problems(pair)), isolation_problems(pair)
    shown = capacity_report([pair], None).lines()
    assert any(line.startswith("not isolated: stream 'a-b': ") and reason in line for line in shown), shown


def test_max_bytes_must_be_given_when_it_cannot_be_derived() -> None:
    found = problems({**AB, "stream_options": {"max_msg_size": -1}})
    assert found == [
        "pairs[0].stream_options: max_bytes: give it (a size in bytes, or -1 for an unbounded stream) when "
        "max_msg_size is -1: the stream's size is derived from both"
    ]
    for bad in (0, -2):
        assert any(
            "max_msgs_per_subject must be -1 (unlimited) or positive" in p
            for p in problems({**AB, "stream_options": {"max_msgs_per_subject": bad}})
        )
    assert config({**AB, "stream_options": {"max_msg_size": -1, "max_bytes": -1}}).pairs[0]


def test_a_derived_max_bytes_beyond_what_pulumi_carries_exactly_is_refused() -> None:
    huge = {"max_msgs_per_subject": 2**40, "max_msg_size": 2**20}
    [found] = problems({**AB, "stream_options": huge})
    assert found.startswith(
        "pairs[0]: stream_options.max_bytes: derived from max_msgs_per_subject x max_msg_size"
    )
    assert "more than 2^53-1" in found
    assert config({**AB, "stream_options": {**huge, "max_bytes": 2**40}}).pairs, "given explicitly: fine"


def test_a_pair_stored_before_the_bounds_reads_as_it_was_deployed() -> None:
    """State written by an earlier version lacks discard and max_msgs_per_subject: it was deployed
    with discard old and no per-subject limit, so that is what re-reading it must give."""
    stored = Pair.model_validate(
        {**AB, "stream_options": {"max_bytes": -1, "max_msg_size": -1, "max_msgs": -1}},
        context=STORED_CONTEXT,
    )
    rendered = stream_config(stored)
    assert (rendered["discard"], rendered["max_msgs_per_subject"], rendered["max_bytes"]) == ("old", -1, -1)
    assert "discard_new_per_subject" not in rendered, "left out when false, as the server reports it"


@pytest.mark.parametrize(
    ("text", "size"), [(1024, 1024), ("512MiB", 512 * 2**20), ("20GiB", 20 * 2**30), (" 7 B ", 7), (8.0, 8)]
)
def test_capacity_sizes(text: Any, size: int) -> None:
    assert Capacity.model_validate({"file": text}).file == size


@pytest.mark.parametrize("bad", ["20GB", "1.5GiB", "lots", True, 0, -5])
def test_a_capacity_that_is_not_a_size_is_refused_naming_the_field(bad: Any) -> None:
    found = problems(AB, capacity={"file": bad})
    assert found and all(p.startswith("capacity.file") for p in found), found


def test_pairs_that_do_not_fit_the_capacity_are_refused_with_the_totals() -> None:
    reserved = stream_max_bytes(config(AB).pairs[0])
    assert config(AB, capacity={"file": reserved}).capacity.file == reserved, "exactly full fits"
    [found] = problems(AB, {"stream": "c-d", "apps": ["c", "d"]}, capacity={"file": reserved})
    assert found.startswith(f"capacity.file: the pairs reserve {2 * reserved} bytes of file storage")
    assert f"more than the declared {reserved}" in found and "err 10047" in found
    replicated = {**AB, "stream_options": {"replicas": 3}}
    [found] = problems(replicated, capacity={"file": 2 * reserved})
    assert f"reserve {3 * reserved} bytes" in found, "a reservation counts every replica"
    memory = {**AB, "stream_options": {"storage": "memory"}}
    assert config(memory, capacity={"file": 1}).pairs, "file capacity does not limit memory streams"
    [found] = problems(memory, capacity={"memory": 1024})
    assert found.startswith("capacity.memory: ")


def test_an_unbounded_stream_is_an_explicit_choice_the_report_names() -> None:
    unbounded = {"stream": "c-d", "apps": ["c", "d"], "stream_options": {"max_bytes": -1}}
    cfg = config(AB, unbounded)
    report = capacity_report(cfg.pairs, None)
    assert "unbounded (max_bytes -1, no reservation; the account cannot require one): c-d" in report.lines()
    assert jetstream_limits(cfg.pairs).max_bytes_required is False, "the server would refuse c-d"
    assert "jetstream: enabled" in render_accounts_conf(account_layout(cfg.pairs))
    [found] = problems(AB, unbounded, capacity={"file": "100GiB"})
    assert "c-d have max_bytes -1 and reserve nothing, so no capacity can be guaranteed" in found


def test_the_account_limits_are_the_capacity_not_todays_sum() -> None:
    """So a pair added within the capacity needs no account change before its stream is created."""
    cfg = config(AB, capacity={"file": "10GiB", "memory": "1GiB"})
    limits = jetstream_limits(cfg.pairs, cfg.capacity)
    assert (limits.max_file, limits.max_mem, limits.max_bytes_required) == (10 * 2**30, 2**30, True)
    assert limits.conf() == f"{{max_file: {10 * 2**30}, max_mem: {2**30}, max_bytes_required: true}}"
    assert limits.claims() == {"disk_storage": 10 * 2**30, "mem_storage": 2**30, "max_bytes_required": True}


def test_jwt_claims_carry_the_limits_and_keep_the_operators_tiers() -> None:
    limits = {"disk_storage": 5000, "mem_storage": -1, "max_bytes_required": True}
    fresh = jc.jetstream_account_claims("JS", "A" * 56, [], [], limits)["nats"]["limits"]
    assert (fresh["disk_storage"], fresh["mem_storage"], fresh["max_bytes_required"]) == (5000, -1, True)
    live = jc.jetstream_account_claims("JS", "A" * 56, [], [])
    flat = jc.reissued_jetstream_account(live, [], set(), "B" * 56, set(), limits)["nats"]["limits"]
    assert (flat["disk_storage"], flat["max_bytes_required"]) == (5000, True)
    tiered = json.loads(json.dumps(live))
    tiered["nats"]["limits"]["tiered_limits"] = {"R1": {"disk_storage": 777, "mem_storage": 0}}
    out = jc.reissued_jetstream_account(tiered, [], set(), "B" * 56, set(), limits)["nats"]["limits"]
    assert out["tiered_limits"]["R1"] == {"disk_storage": 777, "mem_storage": 0, "max_bytes_required": True}
    relaxed = {"disk_storage": -1, "mem_storage": -1}
    again = jc.reissued_jetstream_account(
        jc.reissued_jetstream_account(live, [], set(), "B" * 56, set(), limits),
        [],
        set(),
        "B" * 56,
        set(),
        relaxed,
    )["nats"]["limits"]
    assert "max_bytes_required" not in again and again["disk_storage"] == -1


def test_render_shows_the_totals_and_refuses_a_layout_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "pairs.json"
    reserved = stream_max_bytes(config(AB).pairs[0])
    spec.write_text(json.dumps({"pairs": [AB], "capacity": {"file": reserved + 1}}))
    assert main(["render", str(spec), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"capacity: file storage: {reserved} bytes reserved by 1 stream(s), {reserved + 1} declared" in err
    conf = (tmp_path / "out" / "accounts.conf").read_text()
    assert f"jetstream: {{max_file: {reserved + 1}, max_bytes_required: true}}" in conf

    spec.write_text(json.dumps({"pairs": [AB], "capacity": {"file": reserved - 1}}))
    assert main(["render", str(spec), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "capacity.file: the pairs reserve" in err
    assert not (tmp_path / "refused").exists(), "nothing written"


def test_stack_settings_read_jsb_capacity() -> None:
    settings = parse_stack_settings([AB], ["nats://127.0.0.1:4222"], capacity={"file": "8GiB"})
    assert settings.capacity == Capacity(file=8 * 2**30)
    with pytest.raises(ConfigError) as err:
        parse_stack_settings([AB], ["nats://127.0.0.1:4222"], capacity={"file": 10})
    assert [p for p in err.value.problems if p.startswith("jsb:capacity.file: the pairs reserve")]
    with pytest.raises(ConfigError) as err:
        parse_stack_settings([AB], ["nats://127.0.0.1:4222"], capacity={"disk": 10})
    assert any(p.startswith("jsb:capacity.disk") for p in err.value.problems), err.value.problems


def test_capacity_is_strict() -> None:
    with pytest.raises(ValidationError):
        Capacity.model_validate({"file": 1, "files": 2})


def test_render_stack_reads_jsb_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = tmp_path / "Pulumi.test.yaml"
    stack.write_text(json.dumps({"config": {"jsb:pairs": [AB], "jsb:capacity": {"file": "1MiB"}}}))
    assert main(["render", "--stack", str(stack), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "jsb:capacity.file: the pairs reserve" in err and "more than the declared 1048576" in err
    assert not (tmp_path / "out").exists()


def test_app_accounts_args_refuse_pairs_that_do_not_fit_their_capacity() -> None:
    from jsb_infra.deploy.app_accounts import AppAccountsArgs

    pairs = [config(AB).pairs[0]]
    assert AppAccountsArgs(pairs=pairs, capacity=Capacity(file=stream_max_bytes(pairs[0]))).specs() == pairs
    with pytest.raises(ConfigError) as err:
        AppAccountsArgs(pairs=pairs, capacity=Capacity(file=1024)).specs()
    [found] = err.value.problems
    assert found.startswith("AppAccountsArgs.capacity.file: the pairs reserve")
