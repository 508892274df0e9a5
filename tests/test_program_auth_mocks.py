"""`jsb:auth` in the program, under the mock engine of test_program_mocks: what each mode registers.

JWT mode: under the `accounts` AppAccounts component, one JetStream signing key, the JetStream
account's JWT, one account + user per app (after the JetStream account), no NKey credentials, the
seeds declared secret, the `credentials` output secret and holding each app's `.creds`. Config mode
with `accounts_file`: the `accounts-include` resource with its reload hook, beside one AppCredential
per app. A bad `jsb:auth` stops the program before anything registers.
"""

# ruff: noqa: F811  (the `monitor` fixture is imported from test_program_mocks and used as a parameter)
from __future__ import annotations

import json
from typing import Any

import nkeys
import pytest
from test_program_mocks import (  # noqa: F401  (monitor is a fixture)
    APP_ACCOUNTS_T,
    APP_T,
    CREDENTIAL_T,
    DOCUMENTS_T,
    INCLUDE_T,
    JS_T,
    SERVERS,
    SIGNING_T,
    TWO_PAIRS,
    RecordingMonitor,
    monitor,
    resolved,
    run_build,
    run_program,
    set_stack_config,
)

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.accounts import account_layout
from jsb_infra.core.outputs import AppCredentials
from jsb_infra.core.spec import ConfigError, parse_pairs
from jsb_infra.deploy.program import build

ACCOUNT = jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))


def with_auth(auth: Any) -> None:
    set_stack_config(TWO_PAIRS, SERVERS, raw={"auth": json.dumps(auth)})


def test_jwt_mode_registers_accounts_and_users_not_nkey_credentials(monitor: RecordingMonitor) -> None:
    with_auth({"mode": "jwt", "jetstream_account": ACCOUNT, "rotate": {"billing": "1"}})
    found: dict[str, Any] = {}

    async def check() -> None:
        found["credentials"] = await resolved(build()["credentials"])

    run_program(check)
    layout = account_layout(parse_pairs(TWO_PAIRS).pairs)
    assert monitor.of_type(CREDENTIAL_T) == [] and monitor.of_type(INCLUDE_T) == []
    [accounts] = monitor.of_type(APP_ACCOUNTS_T)
    [signing] = monitor.of_type(SIGNING_T)
    [jetstream] = monitor.of_type(JS_T)
    [documents] = monitor.of_type(DOCUMENTS_T)
    apps = {r.inputs["app"]: r for r in monitor.of_type(APP_T)}
    assert sorted(apps) == sorted(a.app for a in layout.apps)
    assert (signing.name, jetstream.name) == ("accounts-jetstream-signing-key", "accounts-jetstream-account")
    assert {app: r.name for app, r in apps.items()} == {app: f"accounts-{app}-account" for app in apps}
    assert {r.parent for r in [signing, jetstream, documents, *apps.values()]} == {accounts.urn}
    assert not any(r.protect or r.delete_before_replace for r in [signing, jetstream, *apps.values()])
    assert signing.secret_outputs == ("seed",) and signing.inputs["account"] == ACCOUNT
    assert jetstream.inputs["public_key"] == ACCOUNT
    assert sorted(e["subject"] for e in jetstream.inputs["exports"]) == sorted(
        s.subject for s, _ in layout.exports()
    )
    for account in layout.apps:
        reg = apps[account.app]
        assert set(reg.secret_outputs) == {"account_seed", "signing_seed", "user_seed", "creds"}
        assert jetstream.urn in reg.dependencies  # pushed after the exports and the signing key exist
        assert [i["subject"] for i in reg.inputs["imports"]] == [s.subject for s in account.services]
        assert reg.inputs["publish"] == list(account.publish)
        assert reg.inputs["name"] == account.account
    assert apps["billing"].inputs["rotate"] == "1" and apps["orders"].inputs["rotate"] == ""
    # read before any of them registered: a stack of an older layout registers none of them
    assert [before for _, before in monitor.previous_outputs_reads()] == [0]
    credentials, secret = found["credentials"]
    assert secret is True and sorted(credentials) == sorted(apps)
    for app, entry in credentials.items():
        creds = AppCredentials.model_validate(entry)
        state = monitor.state(apps[app])
        assert (creds.account, creds.public_key) == (state["account_key"], state["user_key"])
        assert (creds.seed, creds.creds) == (state["user_seed"], state["creds"])


def test_config_mode_with_an_accounts_file_registers_the_include_and_its_reload(
    monitor: RecordingMonitor,
) -> None:
    reload = {"signal": "HUP", "pid_file": "/run/nats.pid"}
    with_auth({"mode": "config", "accounts_file": "/etc/nats/accounts.conf", "reload": reload})
    found: dict[str, Any] = {}

    async def check() -> None:
        found["accounts_conf"] = await resolved(build()["accounts_conf"])

    run_program(check)
    [accounts] = monitor.of_type(APP_ACCOUNTS_T)
    [include] = monitor.of_type(INCLUDE_T)
    assert include.name == "accounts-include" and include.parent == accounts.urn
    assert include.inputs["path"] == "/etc/nats/accounts.conf" and include.inputs["reload"] == reload
    assert (include.inputs["text"], False) == found["accounts_conf"]  # what the servers include
    assert include.secret_outputs == () and not include.protect
    assert [before for _, before in monitor.previous_outputs_reads()] == [0]
    credentials = monitor.of_type(CREDENTIAL_T)
    assert sorted(r.inputs["app"] for r in credentials) == ["billing", "orders", "shipping"]
    assert {r.parent for r in credentials} == {accounts.urn} and monitor.of_type(APP_T) == []
    assert all(f'nkey: "{monitor.state(r)["public_key"]}"' in include.inputs["text"] for r in credentials)


def test_config_mode_without_an_accounts_file_registers_no_include(monitor: RecordingMonitor) -> None:
    with_auth({"mode": "config"})
    run_build()

    assert monitor.of_type(INCLUDE_T) == [] and monitor.of_type(JS_T) == []
    assert len(monitor.of_type(CREDENTIAL_T)) == 3


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"mode": "ldap"}, "jsb:auth.mode: must be one of config, jwt"),
        ({"mode": "jwt"}, "jsb:auth.jetstream_account: required in mode jwt"),
        ("jwt", "jsb:auth: must be an object"),
    ],
)
def test_a_bad_auth_setting_stops_the_program_before_anything_registers(
    monitor: RecordingMonitor, auth: Any, expected: str
) -> None:
    with_auth(auth)
    raised: list[ConfigError] = []

    async def check() -> None:
        with pytest.raises(ConfigError) as err:
            build()
        raised.append(err.value)

    run_program(check)
    assert monitor.registrations == []
    assert any(expected in p for p in raised[0].problems), raised[0].problems


def test_jwt_mode_app_accounts_carry_the_stack_configs_app_limits(monitor: RecordingMonitor) -> None:
    limits = {"subscriptions": 50, "data": 1_000_000, "overrides": {"orders": {"connections": 7}}}
    set_stack_config(
        TWO_PAIRS,
        SERVERS,
        raw={
            "auth": json.dumps({"mode": "jwt", "jetstream_account": ACCOUNT}),
            "appLimits": json.dumps(limits),
        },
    )
    run_build()
    given = {r.inputs["app"]: r.inputs["limits"] for r in monitor.of_type(APP_T)}
    base = {"connections": 100, "subscriptions": 50, "payload": 1048576, "data": 1_000_000}
    assert given == {"orders": {**base, "connections": 7}, "billing": base, "shipping": base}
