"""`jsb:auth` and the JWT-mode secrets: bad input gets an error naming the field and the rule, before
anything touches a server; the `.creds` credentials output loads into the runtime client."""

from __future__ import annotations

import json

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
    auth = parse_auth({"reload": {"command": ["ship"], "command_timeout": 600}})
    assert auth.reload is not None and auth.reload.as_input() == {
        "command": ["ship"],
        "command_timeout": 600.0,
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
        (
            {"reload": {"signal": "HUP", "pid_file": "/p", "command_timeout": 60}},
            "jsb:auth.reload.command_timeout: only with command",
        ),
        (
            {"reload": {"command": ["x"], "command_timeout": "10m"}},
            "jsb:auth.reload.command_timeout: must be a number of seconds in (0, 3600]",
        ),
        (
            {"reload": {"command": ["x"], "command_timeout": 0}},
            "jsb:auth.reload.command_timeout: must be a number of seconds in (0, 3600]",
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
    with pytest.raises(settings.ProviderSettingsError, match="jsb:operatorSigningKey is not set"):
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


def test_secret_settings_may_name_where_the_provider_reads_them(tmp_path, monkeypatch):
    """`{env: NAME}` / `{file: PATH}` instead of a value: the reference is all the stack config (and
    so the state) holds; the provider reads the value when it needs it, and a run that does not need
    it does not fail for it."""
    seed = jc.new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    creds = tmp_path / "sys.creds"
    creds.write_text(_entry()["creds"] + "\n")
    (tmp_path / "seed").write_text(seed + "\n")
    monkeypatch.setenv("JSB_TEST_PASSWORD", "pw-from-env")
    raw = Raw(
        {
            settings.SERVERS_KEY: '["nats://a:4222"]',
            settings.ADMIN_KEY: '{"user": "deploy", "password": {"env": "JSB_TEST_PASSWORD"}}',
            settings.OPERATOR_SIGNING_KEY: json.dumps({"file": str(tmp_path / "seed")}),
            settings.SYSTEM_CREDS_KEY: {"file": str(creds)},
        }
    )
    read = settings.settings_from_config(raw)
    assert "pw-from-env" not in read.model_dump_json() and seed not in read.model_dump_json()
    connection = read.admin_connection()
    assert (connection.user, connection.password) == ("deploy", "pw-from-env")
    assert read.signing_seed() == seed  # the file's trailing line break dropped
    assert read.system_user_creds() == creds.read_text().rstrip("\n")
    monkeypatch.setenv("JSB_TEST_PASSWORD", "rotated")
    assert read.admin_connection().password == "rotated"  # read at each use, not kept from configure

    monkeypatch.delenv("JSB_TEST_PASSWORD")
    with pytest.raises(settings.ProviderSettingsError) as err:
        read.admin_connection()
    assert "jsb:admin.password: the environment variable JSB_TEST_PASSWORD" in str(err.value)
    (tmp_path / "seed").write_text(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(settings.ProviderSettingsError, match="must be an operator NKey seed"):
        read.signing_seed()
    (tmp_path / "seed").unlink()
    with pytest.raises(settings.ProviderSettingsError, match=r"jsb:operatorSigningKey: cannot read the file"):
        read.signing_seed()
    for bad in ({"env": ""}, {"env": "A", "file": "b"}, {"path": "x"}, ["x"], 12345):
        with pytest.raises(settings.ProviderSettingsError) as err:
            settings.settings_from_config(Raw({settings.ADMIN_KEY: {"password": bad}}))
        assert "jsb:admin.password: must be the value as text, or where to read it" in str(err.value)
        assert "12345" not in str(err.value)


def test_the_preview_user_is_checked_like_the_deploy_user_and_rendered_read_only():
    from jsb_infra.core.accounts import READ_ONLY_PUBLISH, account_layout, render_accounts_conf
    from jsb_infra.core.spec import parse_pairs
    from jsb_infra.deploy.stack_settings import parse_stack_settings

    pairs = [{"stream": "s1", "apps": ["a", "b"]}]
    servers = ["nats://a:4222"]
    reader = parse_stack_settings(pairs, servers, preview_user={"user": "pv", "password_env": "PV"}).reader
    assert reader is not None and (reader.user, reader.password_env) == ("pv", "PV")
    for bad, rule in (
        ({"user": "pv"}, "jsb:previewUser.password_env: required with user"),
        ({"nkey": "nope"}, "jsb:previewUser.nkey: must be an NKey user public key"),
        ({"user": "pv", "nkey": "U" + "A" * 55}, "jsb:previewUser: give exactly one of nkey or user"),
        ({"foo": 1}, "(the read-only identity a preview connects as; nothing secret)"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_stack_settings(pairs, servers, preview_user=bad)
        assert rule in str(err.value) and "deploy's identity" not in str(err.value)
    with pytest.raises(ConfigError, match="jsb:previewUser: must be another user than jsb:deployUser"):
        same = {"user": "pv", "password_env": "PV"}
        parse_stack_settings(pairs, servers, deploy_user=same, preview_user=same)
    text = render_accounts_conf(account_layout(parse_pairs(pairs).pairs), {}, None, reader)
    [line] = [line for line in text.splitlines() if '"pv"' in line]
    assert "password: $PV" in line and all(f'"{s}"' in line for s in READ_ONLY_PUBLISH)
    assert '"$JS.API.>' not in line and "DELETE" not in line and "CREATE" not in line


async def test_a_connection_admin_stores_references_plain_and_values_as_a_secret():
    import pulumi

    from jsb_infra.deploy.connection import AdminCredentials, Connection

    named = Connection(
        "east", servers=["nats://e:4222"], admin=AdminCredentials(user="deploy", password={"env": "EAST_PW"})
    )
    assert named.as_input() == {
        "name": "east",
        "servers": ["nats://e:4222"],
        "admin": {"user": "deploy", "password": {"env": "EAST_PW"}},
    }  # plain: a user name and where the password is read
    valued = Connection("west", servers=["nats://w:4222"], admin=AdminCredentials(user="d", password="pw"))
    assert isinstance(valued.as_input(), pulumi.Output)  # the value form: a secret, as before
    for bad in ({"env": ""}, {"env": "A", "file": "b"}, {"path": "/x"}):
        with pytest.raises(ConfigError) as err:
            Connection("east", servers=["nats://e:4222"], admin={"password": bad})
        assert "Connection('east').admin.password: must be the value" in str(err.value)
