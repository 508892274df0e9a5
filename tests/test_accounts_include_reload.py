"""The accounts include's reload hook with `varz`, at the edges the e2e test does not reach: a restart
hook whose server does not come back, a hook that fails, and a monitoring endpoint that does not answer
before anything is written. Each on a real nats-server that includes the file, through the provider's
own function; every failure leaves the file the server can start on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jsb_infra.config_load import config_load_time
from jsb_infra.deploy.providers.accounts_include import apply_and_reload
from jsb_infra.deploy.providers.base import ProviderError
from jsb_infra.local.server import LocalNatsServer, free_port, nats_server_binary
from jsb_infra.ops.ship_include import Host, ShipProblem, ship

GOOD = 'accounts { A { users: [{user: a, password: "a-pw"}] } }\n'
# nats-server refuses it: a user twice (at start as on reload)
REFUSED = 'accounts { A { users: [{user: a, password: "a-pw"}] }, B { users: [{user: a, password: "b"}] } }\n'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalNatsServer, Path, str]]:
    include = tmp_path / "accounts.conf"
    include.write_text(GOOD)
    http = free_port()
    # include paths are relative to the including file (store_dir/nats-server.conf)
    config = f'http: "127.0.0.1:{http}"\ninclude "../accounts.conf"\n'
    with LocalNatsServer(store_dir=tmp_path / "nats", extra_config=config) as server:
        yield server, include, f"http://127.0.0.1:{http}/varz"


def starts_on(server: LocalNatsServer) -> bool:
    test = subprocess.run([nats_server_binary(), "-t", "-c", str(server.config_file)], capture_output=True)
    return test.returncode == 0


def test_a_restart_hook_whose_server_does_not_come_back_is_named_and_the_file_put_back(served):
    server, include, varz = served
    assert server.process is not None
    stop = {"command": ["kill", str(server.process.pid)], "varz": varz, "apply_timeout": 1}
    with pytest.raises(ProviderError) as failed:
        apply_and_reload(str(include), REFUSED, stop)
    assert "stopped answering" in str(failed.value) and "runs the previous one" not in str(failed.value)
    assert include.read_text() == GOOD and starts_on(server)
    # control: the file the hook was given is one the server cannot start on
    include.write_text(REFUSED)
    assert not starts_on(server)


def test_a_rollout_whose_restart_leaves_a_host_down_says_so_and_stops_there(served, tmp_path):
    """The multi-host rollout tells the same truth: a host whose restart never brings the server back
    is reported as down, not as running the previous config, and the next host is not touched."""
    server, include, varz = served
    assert server.process is not None
    staged = tmp_path / "staged.conf"
    staged.write_text(GOOD)
    down = Host("h1", ("kill", str(server.process.pid)), varz, path=str(include))
    untouched = tmp_path / "h2.conf"
    nxt = Host("h2", ("true",), varz, path=str(untouched))
    with pytest.raises(ShipProblem) as failed:
        ship(staged, [down, nxt], apply_timeout=1)
    assert "h1:" in str(failed.value) and "stopped answering" in str(failed.value)
    assert "runs the previous one" not in str(failed.value) and "not touched: h2" in str(failed.value)
    assert not untouched.exists()
    assert config_load_time(varz) is None  # the server is down indeed


def test_a_failing_hook_puts_the_previous_file_back(served):
    _, include, varz = served
    with pytest.raises(ProviderError, match="reload command 'false' exited with 1"):
        apply_and_reload(str(include), REFUSED, {"command": ["false"], "varz": varz})
    assert include.read_text() == GOOD


def test_an_endpoint_that_does_not_answer_stops_before_the_file_is_written(served):
    include = served[1]
    down = f"http://127.0.0.1:{free_port()}/varz"
    with pytest.raises(ProviderError, match="does not answer; nothing written"):
        apply_and_reload(str(include), REFUSED, {"command": ["true"], "varz": down})
    assert include.read_text() == GOOD


def test_an_applied_include_is_confirmed_on_varz(served):
    server, include, varz = served
    before = config_load_time(varz)
    added = GOOD.replace("] } }", '] }, C { users: [{user: c, password: "c-pw"}] } }')
    assert server.process is not None
    said = apply_and_reload(
        str(include), added, {"command": ["kill", "-HUP", str(server.process.pid)], "varz": varz}
    )
    assert said.startswith("ran kill; applied (config_load_time ") and config_load_time(varz) != before
    assert include.read_text() == added


def test_a_host_whose_file_cannot_be_written_is_named_and_no_host_is_reloaded(served, tmp_path):
    """A `path` host whose directory is missing: the rollout stops there naming it and where things
    stand, sends no reload, and leaves the next host's file unwritten (not a bare OSError)."""
    server, _, varz = served
    assert server.process is not None
    before = config_load_time(varz)
    staged = tmp_path / "staged.conf"
    staged.write_text(GOOD)
    hup = ("kill", "-HUP", str(server.process.pid))
    untouched = tmp_path / "h2.conf"
    hosts = [
        Host("h1", hup, varz, path=str(tmp_path / "missing" / "accounts.conf")),
        Host("h2", hup, varz, path=str(untouched)),
    ]
    with pytest.raises(ShipProblem) as failed:
        ship(staged, hosts, apply_timeout=1)
    said = str(failed.value)
    assert said.startswith("h1: cannot write ") and "applied on: none; not touched: h2" in said, said
    assert not untouched.exists() and config_load_time(varz) == before  # no host was reloaded


def test_the_rollout_hook_runs_for_its_command_timeout_and_its_account_reaches_the_up(served, tmp_path):
    """`ship_include` as the reload command, against a host that refuses the include: with a
    `command_timeout` that covers the rollout the `up` fails with the rollout's own account (which
    host, what was applied, what was not touched); the control, a timeout shorter than the rollout
    (as the fixed 30 s was against the default 30 s per host), stops it and says how to give it longer."""
    server, include, varz = served
    assert server.process is not None
    before = config_load_time(varz)
    staged, untouched, hosts = tmp_path / "staged.conf", tmp_path / "h2.conf", tmp_path / "hosts.json"
    hup = ["kill", "-HUP", str(server.process.pid)]
    hosts.write_text(
        json.dumps(
            [
                {"name": "h1", "path": str(include), "reload": hup, "varz": varz},
                {"name": "h2", "path": str(untouched), "reload": ["true"], "varz": varz},
            ]
        )
    )
    rollout = [sys.executable, "-m", "jsb_infra.ops.ship_include", "--include", str(staged)]
    rollout += ["--hosts", str(hosts), "--apply-timeout", "2"]

    with pytest.raises(ProviderError) as cut:
        apply_and_reload(str(staged), REFUSED, {"command": rollout, "command_timeout": 1})
    assert "did not finish within 1s and was stopped" in str(cut.value), cut.value
    assert "jsb:auth.reload.command_timeout gives it longer" in str(cut.value)

    with pytest.raises(ProviderError) as refused:
        apply_and_reload(str(staged), REFUSED, {"command": rollout, "command_timeout": 30})
    said = str(refused.value)
    assert "h1: the server did not apply the new include within 2s" in said, said
    assert "applied on: none; not touched: h2" in said
    assert not untouched.exists()
    assert (
        config_load_time(varz) == before and starts_on(server) is False
    )  # runs the old config; its file is the new one


STORE = 10 * 1024 * 1024  # the server's max_file_store


def jetstream_include(max_file: int) -> str:
    return (
        f"accounts {{ JS {{ jetstream: {{max_file: {max_file}, max_bytes_required: true}}, "
        'users: [{user: js, password: "js-pw"}] } }\n'
    )


def account_storage_limit(http: int) -> int:
    """The JetStream account's storage limit as the server runs it (/jsz)."""
    answer = json.loads(
        urllib.request.urlopen(f"http://127.0.0.1:{http}/jsz?accounts=true", timeout=2).read()
    )
    [account] = [a for a in answer["account_details"] if a["name"] == "JS"]
    return int(account["reserved_storage"])


@pytest.fixture
def jetstream_served(tmp_path: Path) -> Iterator[tuple[LocalNatsServer, Path, str, int]]:
    include = tmp_path / "accounts.conf"
    include.write_text(jetstream_include(1_000_000))
    http = free_port()
    config = f'http: "127.0.0.1:{http}"\ninclude "../accounts.conf"\n'
    with LocalNatsServer(store_dir=tmp_path / "nats", extra_config=config, max_file_store=STORE) as server:
        yield server, include, f"http://127.0.0.1:{http}/varz", http


def test_a_capacity_above_the_servers_store_is_refused_before_the_include_is_written(jetstream_served):
    """nats-server reloads an account limit above its store 'successfully' (config_load_time moves)
    but keeps the previous limit, and its next start exits ("insufficient storage resources"). So a
    declared capacity above the store is refused, naming it, with nothing written; the control shows
    the same include applied without the check: 'applied', and the server still on the old limit."""
    server, include, varz, http = jetstream_served
    assert server.process is not None
    hup = {"command": ["kill", "-HUP", str(server.process.pid)], "varz": varz, "apply_timeout": 5}
    before, too_big = config_load_time(varz), jetstream_include(10 * STORE)
    with pytest.raises(ProviderError) as refused:
        apply_and_reload(str(include), too_big, hup, {"file": 10 * STORE})
    said = str(refused.value)
    assert f"capacity.file: {10 * STORE} bytes is more than server" in said and f"({STORE} bytes)" in said, (
        said
    )
    assert said.endswith("nothing written")
    assert include.read_text() == jetstream_include(1_000_000) and config_load_time(varz) == before

    fits = jetstream_include(STORE // 2)
    assert "applied (config_load_time" in apply_and_reload(str(include), fits, hup, {"file": STORE // 2})
    assert account_storage_limit(http) == STORE // 2

    # control: without a declared capacity the reload "applies" and the server keeps the old limit
    assert "applied (config_load_time" in apply_and_reload(str(include), too_big, hup)
    assert account_storage_limit(http) == STORE // 2
