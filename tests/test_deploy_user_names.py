"""Whatever deploy user name `jsb:deployUser` accepts, the rendered `accounts.conf` loads and the server
holds it unchanged: the deploy connects with exactly that name and reaches the JetStream API.

The spec takes any non-empty name. The include quoted it as JSON, whose `\\u00e9` for a non-ASCII
character (and `\\u0001` for a control character) nats-server refuses ("Invalid escape character 'u'"),
so the server would not start on the include `up` writes. The control renders the same names the JSON
way and shows the refusal.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nats
import pytest

from jsb_infra.core import accounts
from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.stack_settings import parse_stack_settings
from jsb_infra.local.server import LocalNatsServer, nats_server_binary

PAIRS = parse_pairs([{"stream": "a-b", "apps": ["a", "b"]}]).pairs
NAMES = [
    "déploiement",
    "デプロイ",
    "ctl\x01name",
    'q"uote } ] evil {',
    "back\\slash",
    "tab\tname",
    "dollar$X",
]
ENV = "JSB_TEST_DEPLOY_PW"


def include_for(name: str) -> str:
    parse_stack_settings(  # the spec accepts the name
        [{"stream": "a-b", "apps": ["a", "b"]}],
        ["nats://h:4222"],
        None,
        None,
        {"user": name, "password_env": ENV},
        None,
        None,
    )
    return render_accounts_conf(account_layout(PAIRS, "STREAMS"), {}, DeployUser(user=name, password_env=ENV))


def loads(conf: str, where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    config = where / "server.conf"
    config.write_text(conf)
    test = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)], capture_output=True, env={ENV: "pw"}
    )
    return test.returncode == 0


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
async def test_the_server_starts_on_the_include_and_the_deploy_connects_as_named(tmp_path, name):
    with LocalNatsServer(
        store_dir=tmp_path / "nats", extra_config=include_for(name), env={ENV: "pw"}
    ) as server:
        nc = await nats.connect(server.url, user=name, password="pw", allow_reconnect=False)
        try:
            info = json.loads((await nc.request("$JS.API.INFO", b"", timeout=2)).data)
            assert "error" not in info, info
        finally:
            await nc.close()


def test_control_json_quoting_makes_an_include_the_server_refuses(tmp_path, monkeypatch):
    refused = [n for n in NAMES if not n.isascii() or any(ord(c) < 0x20 and c not in "\t\n\r" for c in n)]
    assert refused
    for i, name in enumerate(refused):
        assert loads(include_for(name), tmp_path / f"now{i}")
    monkeypatch.setattr(accounts, "_q", json.dumps)
    for i, name in enumerate(refused):
        assert not loads(include_for(name), tmp_path / f"json{i}"), name
