"""The `jsb-infra` CLI: render writes exactly the documented layout, deterministically; an invalid
config exits 2, names each bad field and writes nothing; schema prints the JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jsb_infra.cli import main
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.permissions import app_permissions, render_claims_json
from jsb_infra.core.spec import load_config
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.ops.rendered_tree import MANIFEST

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pairs.yaml"
CLI = Path(sys.executable).parent / "jsb-infra"

EXPECTED_LAYOUT = sorted(
    ["accounts.conf", *(f"apps/{app}.json" for app in ("orders", "billing", "shipping"))]
    + [
        f"{stream}/{leaf}"
        for stream, apps in [
            ("orders-billing-sync", ("orders", "billing")),
            ("billing-shipping-sync", ("billing", "shipping")),
        ]
        for leaf in [
            "stream.json",
            *(f"consumers/{app}-workers.json" for app in apps),
            *(["consumers/dlq-keeper.json"] if stream == "orders-billing-sync" else []),  # dlq: true
            *(f"permissions/{app}.json" for app in apps),
            *(f"permissions/{app}.conf" for app in apps),
        ]
    ]
)


def tree(root: Path) -> dict[str, bytes]:
    """The rendered documents under `root` (without render's manifest)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def test_render_writes_exactly_the_layout(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["render", str(EXAMPLE), "--out", str(out)]) == 0
    files = tree(out)
    assert sorted(files) == EXPECTED_LAYOUT
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).relative_to(out).as_posix() for p in printed) == EXPECTED_LAYOUT

    pair = load_config(EXAMPLE).pairs[0]
    stream = json.loads(files["orders-billing-sync/stream.json"])
    assert stream == stream_config(pair)
    consumer = json.loads(files["orders-billing-sync/consumers/orders-workers.json"])
    assert consumer == consumer_configs(pair)["orders-workers"]
    assert consumer["ack_wait"] == 1_000_000_000, "derived from backoff[0]"
    claims = files["orders-billing-sync/permissions/orders.json"].decode()
    assert claims == render_claims_json(app_permissions(pair, "orders"))
    assert (
        files["orders-billing-sync/stream.json"].decode()
        == json.dumps(stream, indent=2, sort_keys=True) + "\n"
    )
    conf = files["orders-billing-sync/permissions/orders.conf"].decode()
    assert '"_INBOX_orders.>"' in conf and '"$JS.ACK.orders-billing-sync.orders-workers.*.*.*.*.*"' in conf
    billing = json.loads(files["apps/billing.json"])  # one identity across both of billing's pairs
    assert billing["account"] == "APP_billing"
    assert billing["streams"] == ["orders-billing-sync", "billing-shipping-sync"]
    assert "billing.sync.orders" in billing["publish"] and "billing.sync.shipping" in billing["publish"]


def test_render_is_byte_identical_on_a_second_run(tmp_path):
    assert main(["render", str(EXAMPLE), "--out", str(tmp_path / "a")]) == 0
    assert main(["render", str(EXAMPLE), "--out", str(tmp_path / "b")]) == 0
    first = tree(tmp_path / "a")
    assert main(["render", str(EXAMPLE), "--out", str(tmp_path / "a")]) == 0  # over its own output
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == first


def test_nkey_option_gives_the_app_account_its_user(tmp_path):
    _, public = new_user_keypair()
    assert main(["render", str(EXAMPLE), "--out", str(tmp_path), "--nkey", f"billing={public}"]) == 0
    conf = (tmp_path / "accounts.conf").read_text()
    assert conf.count(f'nkey: "{public}"') == 1, "one user for billing, across its two pairs"
    assert "users: none yet; render with --nkey orders=U..." in conf


@pytest.mark.parametrize(
    ("nkey", "message"),
    [
        ("nobody=UABC", "'nobody' is not an app of this config"),
        ("orders=SUAAA", "is not an NKey user public key"),
        ("orders", "write APP=UPUBKEY"),
    ],
)
def test_bad_nkey_option_exits_2_and_writes_nothing(tmp_path, capsys, nkey, message):
    out = tmp_path / "out"
    assert main(["render", str(EXAMPLE), "--out", str(out), "--nkey", nkey]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid config:") and message in err
    assert not out.exists()


BAD_CONFIG = """\
pairs:
  - stream: orders.billing
    apps: [orders, orders]
    consumer: {ack_wait: 30s, backoff: [1s, 5s]}
  - stream: fine
    apps: [a, b]
    stream_options: {replicas: 7, colour: blue}
"""


def test_invalid_config_exits_2_names_each_field_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(BAD_CONFIG)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["render", str(config), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"invalid config: {config}"
    problems = [line.strip() for line in lines[1:]]
    assert [p.split(":")[0] for p in problems] == [
        "pairs[0].stream",
        "pairs[0].apps",
        "pairs[0].consumer",
        "pairs[1].stream_options.replicas",
        "pairs[1].stream_options.colour",
    ]
    assert "contradicts backoff[0]" in problems[2]
    assert list(out.iterdir()) == []


def test_a_config_valid_per_pair_but_overlapping_writes_nothing(tmp_path, capsys):
    config = tmp_path / "overlap.yaml"
    config.write_text("pairs:\n  - {stream: s1, apps: [a, b]}\n  - {stream: s2, apps: [a, c]}\n")
    out = tmp_path / "out"
    assert main(["render", str(config), "--out", str(out)]) == 2
    assert "'a.sync.dlq'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pairs: [\n  - stream: x\n", "not valid YAML"),
        ("", "Input should be a valid dictionary"),
        ("- just a list\n", "Input should be a valid dictionary"),
    ],
)
def test_unparseable_configs_exit_2(tmp_path, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["render", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid config:") and message in err
    assert not (tmp_path / "out").exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["render", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid config:") and "cannot read the config file" in err
    assert not (tmp_path / "out").exists()


def test_schema_prints_the_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "pairs" in schema["properties"] and "Pair" in schema["$defs"]


def test_doctor_is_registered():
    """`doctor` exists as a subcommand whether or not its module is ready (it then explains why not)."""
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--help"])
    assert exit_.value.code == 0


def test_console_script_in_a_subprocess(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [str(CLI), "render", str(EXAMPLE), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert sorted(tree(out)) == EXPECTED_LAYOUT

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG)
    failed = subprocess.run(
        [str(CLI), "render", str(bad), "--out", str(tmp_path / "o2")], capture_output=True, text=True
    )
    assert failed.returncode == 2
    assert "invalid config:" in failed.stderr and "pairs[1].stream_options.replicas" in failed.stderr
    assert not (tmp_path / "o2").exists()

    schema = subprocess.run([str(CLI), "schema"], capture_output=True, text=True, check=True)
    assert "pairs" in json.loads(schema.stdout)["properties"]


def test_render_and_schema_work_when_the_doctor_cannot_load(tmp_path, capsys, monkeypatch):
    import jsb_infra.runtime

    monkeypatch.setitem(sys.modules, "jsb_infra.runtime.doctor", None)  # makes its import fail
    monkeypatch.delattr(jsb_infra.runtime, "doctor", raising=False)
    assert main(["render", str(EXAMPLE), "--out", str(tmp_path)]) == 0
    assert main(["schema"]) == 0
    capsys.readouterr()
    assert main(["doctor"]) == 2
    assert "doctor is unavailable" in capsys.readouterr().err


def test_a_jetstream_account_named_like_an_app_account_is_refused(tmp_path, capsys):
    """`APP_billing` would be both the JetStream account and billing's: the server refuses the imports."""
    out = tmp_path / "out"
    assert main(["render", str(EXAMPLE), "--out", str(out), "--jetstream-account", "APP_billing"]) == 2
    err = capsys.readouterr().err
    assert "--jetstream-account: 'APP_billing' starts with 'APP_', the prefix of the app accounts" in err
    assert not out.exists()
