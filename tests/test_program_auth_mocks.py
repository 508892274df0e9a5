"""`jsb:auth` in the program, under the mock engine of test_program_mocks: what each mode registers.

JWT mode: one JetStream signing key, the JetStream account's JWT, one account + user per app (after
the JetStream account), no NKey credentials, the seeds declared secret. Config mode with
`accounts_file`: the include resource with its reload hook. A bad `jsb:auth` stops the program
before anything registers.
"""

# ruff: noqa: F811  (the `monitor` fixture is imported from test_program_mocks and used as a parameter)
from __future__ import annotations

import json
from typing import Any

import nkeys
import pytest
from test_program_mocks import (  # noqa: F401  (monitor is a fixture)
    CREDENTIALS_T,
    SERVERS,
    TWO_PAIRS,
    RecordingMonitor,
    dynamic_type,
    monitor,
    run_program,
    set_stack_config,
)

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.accounts import account_layout
from jsb_infra.core.spec import ConfigError, parse_pairs
from jsb_infra.deploy.program import build
from jsb_infra.deploy.providers.accounts_include import AccountsInclude
from jsb_infra.deploy.providers.jwt_accounts import AccountSigningKey, AppAccountJwt, JetStreamAccountJwt

ACCOUNT = jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
SIGNING_T, JS_T, APP_T = (dynamic_type(c) for c in (AccountSigningKey, JetStreamAccountJwt, AppAccountJwt))
INCLUDE_T = dynamic_type(AccountsInclude)


def with_auth(auth: Any) -> None:
    set_stack_config(TWO_PAIRS, SERVERS, raw={"auth": json.dumps(auth)})


def test_jwt_mode_registers_accounts_and_users_not_nkey_credentials(monitor: RecordingMonitor) -> None:
    with_auth({"mode": "jwt", "jetstream_account": ACCOUNT, "rotate": {"billing": "1"}})

    async def check() -> None:
        build()

    run_program(check)
    layout = account_layout(parse_pairs(TWO_PAIRS).pairs)
    assert monitor.of_type(CREDENTIALS_T) == []
    [signing] = monitor.of_type(SIGNING_T)
    [jetstream] = monitor.of_type(JS_T)
    apps = {r.inputs["app"]: r for r in monitor.of_type(APP_T)}
    assert sorted(apps) == sorted(a.app for a in layout.apps)
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


def test_config_mode_with_an_accounts_file_registers_the_include_and_its_reload(
    monitor: RecordingMonitor,
) -> None:
    reload = {"signal": "HUP", "pid_file": "/run/nats.pid"}
    with_auth({"mode": "config", "accounts_file": "/etc/nats/accounts.conf", "reload": reload})

    async def check() -> None:
        build()

    run_program(check)
    [include] = monitor.of_type(INCLUDE_T)
    assert include.inputs["path"] == "/etc/nats/accounts.conf" and include.inputs["reload"] == reload
    assert [before for _, before in monitor.previous_outputs_reads()] == [0]
    [credentials] = monitor.of_type(CREDENTIALS_T)
    assert credentials.inputs["apps"] == ["billing", "orders", "shipping"] and monitor.of_type(APP_T) == []


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
