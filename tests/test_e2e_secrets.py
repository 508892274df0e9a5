"""End-to-end: the admin credentials stay out of the state, and a preview runs with a read-only identity.

The real Pulumi CLI and a real nats-server whose JetStream account holds the deploy user and the
read-only user `jsb:previewUser` renders (`core.accounts.read_only_conf_entry`). One stack, in order:

1. the previous way (`jsb:admin` values as secret stack config): the engine keeps them in the state
   (the dynamic providers' default provider inputs). The control: the check below can see them.
2. the same stack moved to references (`{env: NAME}`): one `up` drops them from the state, replacing
   and re-creating nothing; create, update, refresh and `--replace` never write them again, neither in
   the exported state nor in any file the backend writes (checkpoints, backups, history).
3. a spec change previewed (`preview --refresh --diff`) holding only the read-only identity shows the
   pending change; with the same identity every write the server knows is refused and the stream is
   unchanged, while the deploy user's same request does change it (the control).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pulumi.automation as auto
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV
from e2e_support import (
    local_stack,
    preview_copy,
    run_cli,
    server_with_reader,
    set_admin,
    set_plain_config,
)

from jsb_infra.core.accounts import DeployUser
from jsb_infra.local.server import LocalNatsServer

pytestmark = pytest.mark.e2e

STACK = "secrets"
PASSPHRASE = "e2e-secrets-passphrase"
STREAM = "sec-orders-billing"
PAIR: dict[str, Any] = {
    "stream": STREAM,
    "apps": ["orders", "billing"],
    "protect": False,
    "allow_destroy_with_messages": True,
    "consumer": {"max_deliver": 3, "backoff": ["1s", "2s"], "max_ack_pending": 100},
    "stream_options": {"retention": "workqueue", "max_age": "1h"},
}
READER_PASSWORD_ENV = "JSB_PREVIEW_PASSWORD"
READER = DeployUser(user="preview", password_env=READER_PASSWORD_ENV)
READER_PASSWORD = "pv-3Kq8-read-only-password"
USER_ENV, PASSWORD_ENV = "JSB_NATS_USER", "JSB_NATS_PASSWORD"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-secrets")


@pytest.fixture(scope="module")
def server(scratch: Path) -> Iterator[LocalNatsServer]:
    passwords = {DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD, READER_PASSWORD_ENV: READER_PASSWORD}
    nats_server = server_with_reader(scratch / "nats", [PAIR], DEPLOY, READER, passwords)
    yield nats_server
    nats_server.stop()


@pytest.fixture(scope="module")
def stack(scratch: Path, server: LocalNatsServer) -> auto.Stack:
    stack = local_stack(scratch, STACK, PASSPHRASE, {USER_ENV: ADMIN_USER, PASSWORD_ENV: ADMIN_PASSWORD})
    set_plain_config(
        stack,
        {
            "jsb:servers": [server.url],
            "jsb:pairs": [PAIR],
            "jsb:outputDir": str(scratch / "out"),
            "jsb:deployUser": {"user": ADMIN_USER, "password_env": DEPLOY_PASSWORD_ENV},
            "jsb:previewUser": {"user": READER.user, "password_env": READER_PASSWORD_ENV},
        },
    )
    return stack


@pytest.fixture(scope="module")
def memo() -> dict[str, Any]:
    return {}


def exported(stack: auto.Stack) -> str:
    """`pulumi stack export --show-secrets`: the state with every secret decrypted."""
    return run_cli(stack, "stack", "export", "--show-secrets")


def backend_files(scratch: Path) -> dict[Path, str]:
    """Every file of the local backend (checkpoint, backups, history) with its content's hash."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (scratch / "state").rglob("*")
        if path.is_file()
    }


def encrypted_admin(value: Any) -> bool:
    """Whether a backend document holds `jsb:admin` as a secret (a ciphertext: the value form)."""
    if isinstance(value, dict):
        admin = value.get("jsb:admin")
        if isinstance(admin, dict) and "ciphertext" in admin:
            return True
        return any(encrypted_admin(v) for v in value.values())
    if isinstance(value, list):
        return any(encrypted_admin(v) for v in value)
    return False


def holds_admin_secret(path: Path, secret: str) -> bool:
    """The password in plain text, or `jsb:admin` encrypted, in a file of the backend."""
    data = path.read_bytes()
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    return secret.encode() in data or encrypted_admin(document)


def assert_written_without(scratch: Path, since: dict[Path, str], secret: str) -> int:
    """No backend file written (new or changed) since `since` holds the admin secret, in plain text
    or encrypted; returns how many were written."""
    written = [p for p, digest in backend_files(scratch).items() if since.get(p) != digest]
    for path in written:
        assert not holds_admin_secret(path, secret), f"the admin password is in {path}"
    return len(written)


def resource_ids(stack: auto.Stack) -> dict[str, str]:
    return {r["urn"]: r.get("id", "") for r in stack.export_stack().deployment["resources"]}


def set_pair(stack: auto.Stack, **stream_options: Any) -> None:
    pair = {**PAIR, "stream_options": {**PAIR["stream_options"], **stream_options}}
    set_plain_config(stack, {"jsb:pairs": [pair]})


def test_01_admin_values_in_the_stack_config_land_in_the_state(stack, scratch, memo):
    """The previous version's set-up (`jsb:admin` user and password as secret config values): the
    engine copies them into the state. This is the state an existing stack has before it upgrades."""
    set_admin(stack, ADMIN_USER, ADMIN_PASSWORD)
    stack.up(on_output=lambda _: None)
    state = exported(stack)
    assert ADMIN_PASSWORD in state  # the control: the check of the next tests can see it
    provider = next(
        r
        for r in json.loads(state)["deployment"]["resources"]
        if r["type"] == "pulumi:providers:pulumi-python"
    )
    assert "jsb:admin" in provider["inputs"]
    # ... and so in the backend's files, encrypted: what the file check of the next tests looks for
    assert any(holds_admin_secret(path, ADMIN_PASSWORD) for path in backend_files(scratch))
    memo["ids"] = resource_ids(stack)
    assert len(memo["ids"]) >= 8


def test_02_references_drop_the_admin_secret_from_the_state_without_replacing_anything(stack, scratch, memo):
    before = backend_files(scratch)
    stack.remove_config("jsb:admin")
    stack.set_config("jsb:admin.user.env", auto.ConfigValue(USER_ENV), path=True)
    stack.set_config("jsb:admin.password.env", auto.ConfigValue(PASSWORD_ENV), path=True)
    result = stack.up(on_output=lambda _: None)
    changes = result.summary.resource_changes or {}
    assert set(changes) <= {"same", "update"}, changes
    assert changes.get("update", 0) <= 1, changes  # at most the default provider's config
    assert resource_ids(stack) == memo["ids"]  # the same resources, the same server objects
    state = exported(stack)
    assert ADMIN_PASSWORD not in state
    assert PASSWORD_ENV in state  # only where the provider reads it
    stack_file = (scratch / "project" / "stacks" / f"Pulumi.{STACK}.yaml").read_text()
    assert ADMIN_PASSWORD not in stack_file and "secure:" not in stack_file
    assert assert_written_without(scratch, before, ADMIN_PASSWORD) >= 1
    memo["since"] = backend_files(scratch)


def test_03_create_update_refresh_and_replace_never_write_it(stack, scratch, memo):
    set_pair(stack, max_age="90m")  # an in-place update of the stream
    stack.up(on_output=lambda _: None)
    assert ADMIN_PASSWORD not in exported(stack)
    stack.refresh(on_output=lambda _: None)
    assert ADMIN_PASSWORD not in exported(stack)
    credential = next(u for u in resource_ids(stack) if u.endswith("::accounts-orders-credential"))
    replaced = stack.up(replace=[credential], on_output=lambda _: None)
    assert (replaced.summary.resource_changes or {}).get("replace") == 1
    assert ADMIN_PASSWORD not in exported(stack)
    assert assert_written_without(scratch, memo["since"], ADMIN_PASSWORD) >= 3


def preview_as(stack: auto.Stack, user: str, password: str) -> str:
    """`pulumi preview --refresh --diff` with only `user`'s password in the environment."""
    env = stack.workspace.env_vars
    saved = dict(env)
    env.update({USER_ENV: user, PASSWORD_ENV: password})
    try:
        return run_cli(stack, "preview", "--refresh", "--diff")
    finally:
        env.clear()
        env.update(saved)


def test_04_a_preview_with_the_read_only_identity_shows_a_pending_change(stack, server, memo):
    set_pair(stack, max_age="3h")
    shown = preview_as(stack, READER.user or "", READER_PASSWORD)
    assert re.search(r"~ max_age +: 5400000000000 => 10800000000000", shown), shown[-3000:]
    assert "~ 2 to update" in shown, shown[-3000:]  # the stream and the rendered documents
    # The refresh did read the server as that user: with a wrong password the same preview fails.
    with pytest.raises(auto.CommandError, match="Authorization Violation"):
        preview_as(stack, READER.user or "", "not-the-password")
    memo["stream"] = asyncio.run(stream_info(server.url, ADMIN_USER, ADMIN_PASSWORD))
    assert memo["stream"]["config"]["max_age"] == 90 * 60 * 10**9  # a preview changes nothing


async def stream_info(url: str, user: str, password: str) -> dict[str, Any]:
    nc = await nats.connect(url, user=user, password=password)
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=2)
        return dict(json.loads(reply.data))
    finally:
        await nc.close()


WRITES: dict[str, dict[str, Any]] = {
    "$JS.API.STREAM.CREATE.sec-intruder": {"name": "sec-intruder", "subjects": ["intruder.>"]},
    f"$JS.API.STREAM.UPDATE.{STREAM}": {"name": STREAM, "max_age": 1},
    f"$JS.API.STREAM.DELETE.{STREAM}": {},
    f"$JS.API.STREAM.PURGE.{STREAM}": {},
    f"$JS.API.STREAM.MSG.DELETE.{STREAM}": {"seq": 1},
    f"$JS.API.CONSUMER.CREATE.{STREAM}.intruder": {
        "stream_name": STREAM,
        "config": {"durable_name": "intruder", "ack_policy": "explicit"},
    },
    f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.intruder": {
        "stream_name": STREAM,
        "config": {"durable_name": "intruder", "ack_policy": "explicit"},
    },
    f"$JS.API.CONSUMER.DELETE.{STREAM}.orders-workers": {},
}


async def attempt_writes(url: str, user: str, password: str) -> tuple[dict[str, str], list[str]]:
    """Each write request once; returns {subject: the answer or "no answer"} and the server's errors."""
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(url, user=user, password=password, error_cb=on_error)
    answers: dict[str, str] = {}
    try:
        for subject, body in WRITES.items():
            try:
                reply = await nc.request(subject, json.dumps(body).encode(), timeout=0.5)
                answers[subject] = reply.data.decode()
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                answers[subject] = "no answer"
        await nc.flush()
    finally:
        await nc.close()
    return answers, errors


async def test_05_the_read_only_identity_cannot_write_and_the_stream_stays_as_it_was(server, memo):
    nc = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    subject = memo["stream"]["config"]["subjects"][0].replace("*", "x").replace(">", "x")
    await nc.jetstream().publish(subject, b"held")
    await nc.close()
    before = await stream_info(server.url, ADMIN_USER, ADMIN_PASSWORD)
    assert before["state"]["messages"] >= 1

    answers, errors = await attempt_writes(server.url, READER.user or "", READER_PASSWORD)
    assert set(answers.values()) == {"no answer"}, answers
    for subject in WRITES:
        refusal = f'permissions violation for publish to "{subject.lower()}"'
        assert any(refusal in e.lower() for e in errors), (subject, errors)
    after = await stream_info(server.url, ADMIN_USER, ADMIN_PASSWORD)
    assert after["config"] == before["config"] and after["state"]["messages"] == before["state"]["messages"]
    assert after["state"].get("consumer_count") == before["state"].get("consumer_count")

    # The control: the deploy user's purge, sent the same way, empties the stream.
    nc = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    await nc.request(f"$JS.API.STREAM.PURGE.{STREAM}", b"{}", timeout=2)
    await nc.close()
    assert (await stream_info(server.url, ADMIN_USER, ADMIN_PASSWORD))["state"]["messages"] == 0


def test_05b_a_preview_stack_without_secrets_previews_the_same_change(stack, scratch):
    """`python -m jsb_infra.ops.preview_state`: the state copied into `<stack>-preview` with every
    secret redacted and its own passphrase; previewed with the read-only identity, it shows the
    pending change, and nothing in it (decrypted) is a seed."""
    seeds = [
        e["seed"]
        for e in json.loads(
            run_cli(stack, "stack", "output", "credentials", "--show-secrets", "--json")
        ).values()
    ]
    assert len(seeds) == 2 and all(seed in exported(stack) for seed in seeds)  # the control
    preview_env = {**stack.workspace.env_vars, USER_ENV: READER.user or "", PASSWORD_ENV: READER_PASSWORD}
    # A link planted where the copy's state file used to be written (a fixed name) gets nothing.
    victim = scratch / "victim.txt"
    victim.write_text("the victim's content\n")
    (Path(stack.workspace.work_dir) / f".{STACK}-preview.import.json").symlink_to(victim)
    on_preview = preview_copy(stack, "preview-only-passphrase", preview_env)
    assert victim.read_text() == "the victim's content\n"
    state = on_preview("stack", "export", "--show-secrets")
    assert not [seed for seed in seeds if seed in state] and ADMIN_PASSWORD not in state
    assert state.count('\\"redacted\\"') >= 3  # the two seeds and the credentials output
    shown = on_preview("preview", "--refresh", "--diff")
    assert re.search(r"~ max_age +: 5400000000000 => 10800000000000", shown), shown[-3000:]
    assert "~ 2 to update" in shown, shown[-3000:]


def test_06_destroy(stack):
    stack.destroy(on_output=lambda _: None)
