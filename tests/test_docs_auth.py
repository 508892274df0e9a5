"""docs/auth.md's operator commands, run as written: every `<!-- docs-test: NAME -->` bash block of it,
with a real nsc (scripts/ensure-nsc), a real nats-server in operator mode with the full resolver that
`nsc generate config` writes, and the real Pulumi CLI on a throwaway project.

In the order an operator follows: nsc makes the operator, accounts and creds; the server starts on
the generated resolver config; the deploy block pushes, points the stack at the secrets (names only)
and runs `pulumi up`, which issues every app's account; the state and stack file hold none of the
secrets; the documented way to set a `.creds` value works; a spec change previewed with the
read-only identities the doc makes shows the pending change, while their writes are refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from e2e_support import REPO, copy_project, ensure_nsc, pulumi_bin_dir
from nats.aio.client import RawCredentials

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.accounts import READ_ONLY_PUBLISH, READ_ONLY_SUBSCRIBE
from jsb_infra.core.names import READ_ONLY_INBOX_PREFIX
from jsb_infra.local.server import LocalNatsServer, free_port

pytestmark = pytest.mark.e2e

DOC = REPO / "docs" / "auth.md"
BLOCK = re.compile(r"<!-- docs-test: (\w+) -->\n```bash\n(.*?)```", re.DOTALL)


def doc_blocks() -> dict[str, str]:
    """The doc's runnable blocks by name, exactly as the reader sees them."""
    return dict(BLOCK.findall(DOC.read_text()))


@pytest.fixture(scope="module")
def nsc_dir() -> Path:
    return ensure_nsc().parent


class Shell:
    """bash in the project directory, with nsc, the Pulumi CLI and a private nsc store and backend."""

    def __init__(self, work: Path, scratch: Path, nsc_dir: Path, url: str):
        self.work = work
        self.env = {
            "PATH": os.pathsep.join(
                [str(nsc_dir), str(pulumi_bin_dir()), str(Path(sys.prefix) / "bin"), os.environ["PATH"]]
            ),
            "HOME": str(scratch / "home"),
            "XDG_CONFIG_HOME": str(scratch / "xdg-config"),
            "XDG_DATA_HOME": str(scratch / "xdg-data"),
            "NATS_URL": url,
            "PULUMI_BACKEND_URL": f"file://{scratch / 'state'}",
            "PULUMI_HOME": str(scratch / "pulumi-home"),
            "PULUMI_CONFIG_PASSPHRASE": "docs-auth-passphrase",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }
        (scratch / "state").mkdir(parents=True, exist_ok=True)

    def run(self, script: str) -> str:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.work,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs-auth")


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shell(scratch: Path, nsc_dir: Path, port: int) -> Shell:
    work = copy_project(scratch / "project")
    sh = Shell(work, scratch, nsc_dir, f"nats://127.0.0.1:{port}")
    pair = {"stream": "docs-orders-billing", "apps": ["orders", "billing"], "protect": False}
    sh.run(
        "pulumi stack init docs\n"
        "pulumi config set --path 'jsb:servers[0]' \"$NATS_URL\"\n"
        f"pulumi config set --path 'jsb:pairs[0].stream' {pair['stream']}\n"
        "pulumi config set --path 'jsb:pairs[0].apps[0]' orders\n"
        "pulumi config set --path 'jsb:pairs[0].apps[1]' billing\n"
        "pulumi config set --path 'jsb:pairs[0].protect' false\n"
    )
    return sh


@pytest.fixture(scope="module")
def server(shell: Shell, scratch: Path, port: int) -> Iterator[LocalNatsServer]:
    shell.run(doc_blocks()["operator"])
    store = scratch / "nats"
    include = os.path.relpath(shell.work / "resolver.conf", store)  # relative to the including file
    nats_server = LocalNatsServer(store_dir=store, port=port, extra_config=f"include {json.dumps(include)}\n")
    cwd = Path.cwd()
    os.chdir(shell.work)  # the generated resolver dir ('./jwt') is relative to the server's directory
    try:
        nats_server.start()
    finally:
        os.chdir(cwd)
    yield nats_server
    nats_server.stop()


def test_the_doc_has_the_blocks_this_test_runs() -> None:
    assert set(doc_blocks()) == {"operator", "deploy", "value", "preview"}


async def test_operator_commands_deploy_every_app_with_no_secret_in_the_state(shell, server, scratch):
    shell.run(doc_blocks()["deploy"])
    work = shell.work
    system_creds = (work / "sys.creds").read_text()
    key = json.loads(shell.run("pulumi stack output credentials --show-secrets --json"))
    assert sorted(key) == ["billing", "orders"]
    async with resolver.system_session([server.url], system_creds) as nc:
        for entry in key.values():
            assert await resolver.lookup(nc, entry["account"])  # pushed and held by the resolver
    for entry in key.values():  # the server takes each app's creds
        nc = await nats.connect(server.url, user_credentials=RawCredentials(entry["creds"]))
        await nc.close()
    state = shell.run("pulumi stack export --show-secrets")
    stack_file = (work / "stacks" / "Pulumi.docs.yaml").read_text()
    secrets = {
        "operator signing key": (work / "operator-signing.nk").read_text().strip(),
        "system user seed": jc.parse_creds(system_creds)[1],
        "deploy user seed": jc.parse_creds((work / "deploy.creds").read_text())[1],
    }
    assert secrets["operator signing key"].startswith("SO")
    for name, secret in secrets.items():
        assert secret not in state, f"the {name} is in the state"
        assert secret not in stack_file, f"the {name} is in the stack file"
    assert "secure:" not in stack_file
    issuer = json.loads(shell.run("nsc describe operator --json"))["nats"]["signing_keys"][0]
    async with resolver.system_session([server.url], system_creds) as nc:
        token = await resolver.lookup(nc, key["orders"]["account"])
    assert token and jc.decode(token)["iss"] == issuer  # signed with the key the doc exported


def test_a_creds_value_set_as_the_doc_says_is_the_whole_file(shell, server):
    shell.run("pulumi stack init docs-value")
    try:
        shell.run(doc_blocks()["value"])
        held = shell.run("pulumi config get jsb:systemCreds")
    finally:
        shell.run("pulumi stack select docs")
    assert held.rstrip("\n") == (shell.work / "sys.creds").read_text().rstrip("\n")
    # The control: the form the doc used to give is refused by the CLI (the text starts with dashes).
    old = subprocess.run(
        ["bash", "-c", 'pulumi config set --secret jsb:systemCreds "$(cat sys.creds)" --stack docs'],
        cwd=shell.work,
        env=shell.env,
        text=True,
        capture_output=True,
    )
    assert old.returncode != 0 and "bad flag syntax" in old.stderr


def test_the_jetstream_account_key_is_set_without_the_quotes_nsc_prints(shell, server):
    printed = shell.run("nsc describe account JETSTREAM --field sub").strip()
    assert printed.startswith('"') and printed.endswith('"')  # why the doc strips them
    assert shell.run("pulumi config get --path jsb:auth.jetstream_account").strip() == printed.strip('"')


async def test_a_preview_with_the_read_only_identities_shows_the_change_and_they_cannot_write(shell, server):
    shell.run("pulumi config set --path 'jsb:auth.rotate.orders' docs-1")
    shown = shell.run(doc_blocks()["preview"])
    assert "AppAccountJwt::accounts-orders-account" in shown and '"docs-1"' in shown, shown[-3000:]
    work = shell.work
    preview, lookup = ((work / name).read_text() for name in ("preview.creds", "lookup.creds"))
    # nsc's flags give the permission lists jsb-infra defines for these identities
    claims: dict[str, Any] = jc.decode(jc.parse_creds(preview)[0], verify=False)["nats"]
    assert sorted(claims["pub"]["allow"]) == sorted(READ_ONLY_PUBLISH)
    assert claims["sub"]["allow"] == list(READ_ONLY_SUBSCRIBE) and "deny" not in claims["pub"]
    claims = jc.decode(jc.parse_creds(lookup)[0], verify=False)["nats"]
    assert claims["pub"]["allow"] == [jc.CLAIMS_LOOKUP]

    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    stream = "docs-orders-billing"
    assert jc.creds_inbox_prefix(preview) == jc.creds_inbox_prefix(lookup) == READ_ONLY_INBOX_PREFIX
    nc = await nats.connect(
        server.url,
        user_credentials=RawCredentials(preview),
        inbox_prefix=READ_ONLY_INBOX_PREFIX,
        error_cb=on_error,
    )
    assert json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)).data)["config"]
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=0.5)
    await nc.close()
    nc = await nats.connect(
        server.url,
        user_credentials=RawCredentials(lookup),
        inbox_prefix=READ_ONLY_INBOX_PREFIX,
        error_cb=on_error,
    )
    token = await resolver.lookup(nc, json.loads(shell.run("nsc describe account JETSTREAM --json"))["sub"])
    assert token
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request("$SYS.REQ.CLAIMS.UPDATE", token.encode(), timeout=0.5)
    await nc.close()
    assert any(f'publish to "$js.api.stream.delete.{stream}"' in e for e in errors), errors
    assert any('publish to "$sys.req.claims.update"' in e for e in errors), errors
    admin = await nats.connect(server.url, user_credentials=str(work / "deploy.creds"))
    info = json.loads((await admin.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)).data)
    await admin.close()
    assert info["config"]["name"] == stream  # still there
    sniffed, errors = await _sniff_while_others_work(
        server.url, work, (preview, lookup), READ_ONLY_INBOX_PREFIX
    )
    assert sniffed == []
    assert sum('subscription to "_inbox.>"' in e for e in errors) == 2, errors
    # The control: the same user issued with the old `_INBOX.>` right reads the deploy's message body.
    shell.run(
        "nsc add user --account JETSTREAM sniffer --allow-sub '_INBOX.>' --allow-pub '$JS.API.INFO'\n"
        "nsc generate creds --account JETSTREAM --name sniffer > sniffer.creds"
    )
    sniffed, _ = await _sniff_while_others_work(
        server.url, work, ((work / "sniffer.creds").read_text(),), "_INBOX"
    )
    assert base64.b64encode(DEAD_LETTER) in b"".join(sniffed)


DEAD_LETTER = b"docs-dead-letter-body"


async def _sniff_while_others_work(
    url: str, work: Path, readers: tuple[str, ...], prefix: str
) -> tuple[list[bytes], list[str]]:
    """What these identities receive, subscribed to all they may (and `_INBOX.>`, `>`), while the
    deploy user reads a message body and the system user looks an account JWT up; and their errors."""
    sniffed: list[bytes] = []
    errors: list[str] = []

    async def on_msg(msg: Any) -> None:
        sniffed.append(msg.data)

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    conns = []
    for creds in readers:
        nc = await nats.connect(
            url, user_credentials=RawCredentials(creds), inbox_prefix=prefix, error_cb=on_error
        )
        for subject in (*READ_ONLY_SUBSCRIBE, "_INBOX.>", ">"):
            await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        conns.append(nc)
    deploy = await nats.connect(url, user_credentials=str(work / "deploy.creds"))
    await deploy.jetstream().publish("orders.sync.billing", DEAD_LETTER)
    stream = "docs-orders-billing"
    got = await deploy.request(f"$JS.API.STREAM.MSG.GET.{stream}", b'{"last_by_subj": "orders.sync.billing"}')
    assert base64.b64decode(json.loads(got.data)["message"]["data"]) == DEAD_LETTER
    await deploy.close()
    system = await nats.connect(url, user_credentials=str(work / "sys.creds"))
    claims = jc.decode(jc.parse_creds(readers[0])[0], verify=False)
    assert await resolver.lookup(system, claims["nats"].get("issuer_account") or claims["iss"])
    await system.close()
    await asyncio.sleep(0.3)
    for nc in conns:
        await nc.flush()
        await nc.close()
    return sniffed, errors
