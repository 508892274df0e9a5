"""`jsb-infra doctor` against a server enforcing the generated permissions."""

from __future__ import annotations

import argparse
import asyncio
import json

from jsb_infra.runtime import doctor


def doctor_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    return parser.parse_args(list(argv))


def write_bridges(pp, tmp_path) -> str:
    path = tmp_path / "bridges.json"
    bridges = {pp.pair.stream: {app: b.model_dump(mode="json") for app, b in pp.bridges.items()}}
    path.write_text(json.dumps(bridges))
    return str(path)


async def stream_messages(pp) -> int:
    admin = await pp.admin()
    info = await admin.jetstream().stream_info(pp.pair.stream)
    await admin.close()
    return info.state.messages


async def test_doctor_passes_with_the_apps_credentials(provisioned_pair, tmp_path, capsys):
    pp = provisioned_pair
    args = doctor_args(
        "--bridge", write_bridges(pp, tmp_path), "--app", "orders", "--nkey-seed", pp.seeds["orders"]
    )
    code = await asyncio.to_thread(doctor.run, args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert (
        "ok      publish orders.sync.billing" in out
        and "ok      pull orders-billing-sync/orders-workers" in out
    )
    assert "FAILED" not in out
    assert await stream_messages(pp) == 0  # the dry-run probes stored nothing


async def test_doctor_pull_probe_moves_no_delivery_count(provisioned_pair, tmp_path, capsys):
    pp = provisioned_pair
    admin = await pp.admin()
    await admin.jetstream().publish("billing.sync.orders", b"{}")
    await admin.close()
    args = doctor_args(
        "--bridge", write_bridges(pp, tmp_path), "--app", "orders", "--nkey-seed", pp.seeds["orders"]
    )
    assert await asyncio.to_thread(doctor.run, args) == 0
    assert "messages waiting; nothing delivered" in capsys.readouterr().out
    admin = await pp.admin()
    info = await admin.jetstream().consumer_info(pp.pair.stream, "orders-workers")
    await admin.close()
    assert info.num_pending == 1 and info.num_ack_pending == 0 and info.delivered.stream_seq == 0


async def test_doctor_names_what_is_denied_with_the_wrong_credentials(provisioned_pair, tmp_path, capsys):
    pp = provisioned_pair
    # orders' bridge, billing's seed: connects, but may use none of orders' subjects
    args = doctor_args(
        "--bridge", write_bridges(pp, tmp_path), "--app", "orders", "--nkey-seed", pp.seeds["billing"],
        "--timeout", "0.5",
    )  # fmt: skip
    code = await asyncio.to_thread(doctor.run, args)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAILED  publish orders.sync.billing: DENIED" in out
    assert 'permissions violation for publish to "orders.sync.billing"' in out.lower()
    assert "FAILED  pull orders-billing-sync/orders-workers" in out
    assert "_inbox_orders" in out.lower()  # billing may not subscribe to orders' inbox


async def test_doctor_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bridge.json"
    path.write_text(json.dumps({"schema_version": 2}))
    code = await asyncio.to_thread(doctor.run, doctor_args("--bridge", str(path)))
    assert code == 1
    assert "FAILED  config: bridge.schema_version" in capsys.readouterr().out


async def test_doctor_reports_a_refused_connection(provisioned_pair, tmp_path, capsys):
    pp = provisioned_pair
    args = doctor_args(
        "--bridge", write_bridges(pp, tmp_path), "--app", "orders", "--user", "x", "--password", "y"
    )
    code = await asyncio.to_thread(doctor.run, args)
    out = capsys.readouterr().out
    assert code == 1 and "FAILED  connect" in out and "authorization violation" in out.lower()
