"""The admin adapter's failure modes: a clear error that names where and as whom, never the secret."""

import pytest

from jsb_infra.local_server import accounts_config
from jsb_infra.nats_admin import AdminConnectError, AdminConnection, admin_session, differences


async def test_wrong_admin_password_names_server_and_user_not_password(make_server):
    server = make_server(accounts_config([], "admin", "right-password"))
    conn = AdminConnection(servers=[server.url], user="admin", password="wrong-password-xyz")
    with pytest.raises(AdminConnectError) as err:
        async with admin_session(conn):
            pass
    text = str(err.value)
    assert server.url in text and "user 'admin'" in text and "jsb:admin" in text
    assert "wrong-password-xyz" not in text


async def test_admin_session_round_trip(make_server):
    server = make_server(accounts_config([], "admin", "pw"))
    conn = AdminConnection(servers=[server.url], user="admin", password="pw")
    async with admin_session(conn) as js:
        assert await js.stream_info("absent") is None
        assert await js.delete_stream("absent") is False


def test_differences_ignore_server_defaults_and_float_ints():
    desired = {"max_age": 60_000_000_000, "subjects": ["a.sync.b"], "description": ""}
    live = {"max_age": 6e10, "subjects": ["a.sync.b"], "max_waiting": 512}
    assert differences(desired, live) == {}
    assert differences({"max_deliver": 5}, {"max_deliver": 4}) == {"max_deliver": (5, 4)}
