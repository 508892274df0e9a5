"""The admin adapter's failure modes: a clear error that names where and as whom, never the secret."""

import subprocess
from pathlib import Path

import pytest

from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.local.server import accounts_config
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


# -- every admin credential kind the stack config accepts (jsb:admin) reaches a real server ------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(name: str, cn: str, tmp: Path, san: str | None = None) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-subj",
        f"/CN={cn}",
        "-out",
        f"{name}.csr",
        cwd=tmp,
    )
    ext = tmp / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.pem",
        cwd=tmp,
    )


def make_tls_files(tmp: Path) -> Path:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert, made with the openssl CLI."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-subj",
        "/CN=jsb-test-ca",
        "-days",
        "1",
        "-out",
        "ca.pem",
        cwd=tmp,
    )
    _signed("server", "127.0.0.1", tmp, san="IP:127.0.0.1")
    _signed("client", "jsb-admin", tmp)
    return tmp


def _auth_block(kind: str, tls: Path | None) -> tuple[str, dict[str, str]]:
    """Server config for one credential kind, and the matching jsb:admin fields."""
    if kind == "token":
        return 'authorization { token: "tok-123" }\n', {"token": "tok-123"}
    if kind == "nkey":
        seed, public = new_user_keypair()
        return f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n', {"nkey_seed": seed}
    assert tls is not None
    server_tls = (
        f'tls {{ cert_file: "{tls}/server.pem", key_file: "{tls}/server.key", ca_file: "{tls}/ca.pem"'
        + (", verify: true }\n" if kind == "mtls" else " }\n")
    )
    fields = {"user": "admin", "password": "pw", "tls_ca": str(tls / "ca.pem")}
    if kind == "mtls":
        fields |= {"tls_cert": str(tls / "client.pem"), "tls_key": str(tls / "client.key")}
    return server_tls + accounts_config([], "admin", "pw"), fields


@pytest.mark.parametrize("kind", ["token", "nkey", "tls", "mtls"])
async def test_each_admin_credential_kind_connects(kind, make_server, tmp_path):
    tls = make_tls_files(tmp_path) if kind in ("tls", "mtls") else None
    config, fields = _auth_block(kind, tls)
    server = make_server(config)
    scheme = "tls" if tls else "nats"
    conn = AdminConnection(servers=[f"{scheme}://127.0.0.1:{server.port}"], **fields)
    async with admin_session(conn) as js:
        assert await js.stream_info("absent") is None
    if kind == "mtls":  # the server really demands the client certificate
        without_cert = conn.model_copy(update={"tls_cert": None, "tls_key": None})
        with pytest.raises(AdminConnectError):
            async with admin_session(without_cert):
                pass
