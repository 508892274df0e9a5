"""`jsb:auth` and the JWT-mode secrets: bad input gets an error naming the field and the rule, before
anything touches a server; the `.creds` credentials output loads into the runtime client."""

from __future__ import annotations

import nkeys
import pytest

from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.auth import AuthSettings, Reload, parse_auth
from jsb_infra.core.spec import ConfigError
from jsb_infra.deploy.providers import settings
from jsb_infra.runtime import BridgeConfigError, load_credentials

ACCOUNT = jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))


def problems(value: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_auth(value)
    return err.value.problems


def test_default_is_config_mode_without_a_file():
    assert parse_auth(None) == AuthSettings()


def test_config_mode_with_a_signal_or_a_command():
    auth = parse_auth(
        {"accounts_file": "/etc/nats/accounts.conf", "reload": {"signal": "hup", "pid_file": "/p"}}
    )
    assert auth.reload == Reload(signal="HUP", pid_file="/p")
    auth = parse_auth({"mode": "config", "reload": {"command": ["nats-server", "--signal", "reload"]}})
    assert auth.reload is not None and auth.reload.as_input() == {
        "command": ["nats-server", "--signal", "reload"]
    }


def test_a_reload_confirmed_on_varz_carries_its_url_and_time_to_the_provider():
    varz = "http://127.0.0.1:8222/varz"
    auth = parse_auth({"reload": {"signal": "HUP", "pid_file": "/p", "varz": varz}})
    assert auth.reload is not None and auth.reload.as_input() == {
        "signal": "HUP",
        "pid_file": "/p",
        "varz": varz,
        "apply_timeout": 30.0,
    }
    auth = parse_auth(
        {"reload": {"command": ["systemctl", "restart", "nats"], "varz": varz, "apply_timeout": 90}}
    )
    assert auth.reload is not None and auth.reload.as_input() == {
        "command": ["systemctl", "restart", "nats"],
        "varz": varz,
        "apply_timeout": 90.0,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"mode": "nsc"}, "jsb:auth.mode: must be one of config, jwt"),
        ({"reload": {"signal": "HUP"}}, "jsb:auth.reload.pid_file: required with signal"),
        ({"reload": {"signal": "NOPE", "pid_file": "/p"}}, "jsb:auth.reload.signal: must be a signal name"),
        (
            {"reload": {"command": "nats-server --signal reload"}},
            "jsb:auth.reload.command: must be a non-empty list",
        ),
        ({"reload": {"command": ["x"], "pid_file": "/p"}}, "jsb:auth.reload: give either command or signal"),
        ({"reload": {"varz": "http://h:8222/varz"}}, "jsb:auth.reload: must be {command"),
        ({"reload": {"command": ["x"], "varz": "h:8222"}}, "jsb:auth.reload.varz: must be the server's"),
        ({"reload": {"command": ["x"], "apply_timeout": 5}}, "jsb:auth.reload.apply_timeout: only with varz"),
        (
            {"reload": {"command": ["x"], "varz": "http://h/varz", "apply_timeout": True}},
            "jsb:auth.reload.apply_timeout: must be a number of seconds",
        ),
        (
            {"reload": {"command": ["x"], "varz": "http://h/varz", "apply_timeout": 0}},
            "jsb:auth.reload.apply_timeout: must be a number of seconds",
        ),
        ({"mode": "jwt"}, "jsb:auth.jetstream_account: required in mode jwt"),
        ({"mode": "jwt", "jetstream_account": "U" + ACCOUNT[1:]}, "jsb:auth.jetstream_account: required"),
        (
            {"mode": "jwt", "jetstream_account": ACCOUNT, "accounts_file": "/x"},
            "accounts_file not allowed in mode jwt",
        ),
        (
            {"mode": "jwt", "jetstream_account": ACCOUNT, "signing_keys": ["x"]},
            "jsb:auth.signing_keys: must be",
        ),
        (
            {"mode": "jwt", "jetstream_account": ACCOUNT, "rotate": ["a"]},
            "jsb:auth.rotate: must map app names",
        ),
        ({"jetstream_account": ACCOUNT}, "jetstream_account not allowed in mode config"),
    ],
)
def test_bad_auth_settings_name_the_field_and_the_rule(value, expected):
    assert any(expected in p for p in problems(value)), problems(value)


def test_jwt_mode_settings():
    auth = parse_auth({"mode": "jwt", "jetstream_account": ACCOUNT, "rotate": {"orders": 2}, "adopt": True})
    assert (auth.mode, auth.jetstream_account, auth.rotate, auth.adopt) == (
        "jwt",
        ACCOUNT,
        {"orders": "2"},
        True,
    )


class Raw(dict[str, object]):
    """What the engine hands `configure`: an object with get(full_key)."""


def test_provider_secrets_are_checked_without_echoing_them():
    seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)  # an account seed where an operator seed belongs
    with pytest.raises(settings.ProviderSettingsError) as err:
        settings.settings_from_config(Raw({settings.OPERATOR_SIGNING_KEY: seed}))
    assert "jsb:operatorSigningKey: must be an operator NKey seed" in str(err.value) and seed not in str(
        err.value
    )
    not_creds = r"jsb:systemCreds: must be the text of a \.creds"
    with pytest.raises(settings.ProviderSettingsError, match=not_creds):
        settings.settings_from_config(Raw({settings.SYSTEM_CREDS_KEY: "/path/to/sys.creds"}))
    empty = settings.settings_from_config(Raw({}))
    with pytest.raises(
        settings.ProviderSettingsError, match="pulumi config set --secret jsb:operatorSigningKey"
    ):
        empty.signing_seed()
    with pytest.raises(settings.ProviderSettingsError, match="jsb:systemCreds is not set"):
        empty.system_user_creds()


def _entry() -> dict[str, str]:
    account_seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
    user_jwt = jc.encode(jc.user_claims("orders", jc.public_key(user_seed), ["a"], ["b"]), account_seed)
    return {
        "account": jc.public_key(account_seed),
        "public_key": jc.public_key(user_seed),
        "seed": user_seed,
        "creds": jc.creds_document(user_jwt, user_seed),
    }


def test_the_creds_output_loads_as_a_creds_credential():
    entry = _entry()
    creds = load_credentials(credentials={"orders": entry}, app="orders")
    assert creds.method == "creds" and creds.describe() == f"user JWT {entry['public_key']}"
    assert str(creds.connect_options()["user_credentials"]) == entry["creds"]
    assert jc.parse_creds(entry["creds"]) == (jc.parse_creds(entry["creds"])[0], entry["seed"])


def test_a_creds_document_of_another_user_is_refused():
    entry, other = _entry(), _entry()
    with pytest.raises(
        BridgeConfigError, match=r"credentials.orders.creds: its user is not the public_key/seed"
    ):
        load_credentials(credentials={"orders": {**entry, "creds": other["creds"]}}, app="orders")
    with pytest.raises(BridgeConfigError, match=r"credentials.orders.creds: not a .creds document"):
        load_credentials(credentials={"orders": {**entry, "creds": "garbage"}}, app="orders")
