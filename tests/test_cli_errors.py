"""Every `jsb-infra` command (and `make up`/`down`) ends a failure with one line naming the problem.

The commands run as the operator runs them, as processes, so that whatever a library prints on its own
(nats-py's default error callback logs each connect failure with a traceback; logging's last-resort
handler prints warnings) would show in stderr. Against a real nats-server that refuses the credentials,
lacks the stream, lacks JetStream, or denies the JetStream API, and against a port where nothing
listens: stderr is exactly one line, `jsb-infra <command>: ...`, naming the server and the cause, and
the exit code is the documented one (1: the command could not do its job; 2: bad input, before any
connection). A control shows the raw lines the test would catch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from provider_host import ProviderCallError, ProviderHost, stack_config

from jsb_infra.cli import main
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.providers.stream import StreamProvider, stream_inputs
from jsb_infra.local.server import LocalNatsServer, free_port

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "jsb-infra")
EXAMPLE = REPO / "examples" / "pairs.yaml"
PASSWORD = "admin-pw-for-cli-errors"
SERVER_CONFIG = f"""accounts {{
  JS {{
    jetstream: enabled
    users = [
      {{ user: admin, password: "{PASSWORD}" }}
      {{ user: weak, password: "{PASSWORD}", permissions: {{ publish: {{ deny: "$JS.API.>" }} }} }}
    ]
  }}
  NOJS {{ users = [ {{ user: nojs, password: "{PASSWORD}" }} ] }}
}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(
        store_dir=tmp_path_factory.mktemp("cli-errors"), extra_config=SERVER_CONFIG
    ) as running:
        yield running


def run(
    *argv: str, env: dict[str, str] | None = None, program: tuple[str, ...] = (CLI,)
) -> subprocess.CompletedProcess[str]:
    """`program` with `argv` as a process, without the caller's JSB_ variables but with `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JSB_")}
    return subprocess.run(
        [*program, *argv], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )


def one_line(result: subprocess.CompletedProcess[str], command: str, code: int = 1) -> str:
    """The single stderr line of a failed command (asserted: nothing else, no traceback)."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"jsb-infra {command}: "), result.stderr
    return lines[0]


def admin(url: str, user: str = "admin", password: str = PASSWORD) -> list[str]:
    return ["--server", url, "--user", user, "--password", password, "--timeout", "1"]


@pytest.mark.parametrize(
    "command", [["status", "--stream", "s1"], ["dlq", "list", "--stream", "s1", "--app", "a"]]
)
def test_operator_commands_fail_in_one_line(server: LocalNatsServer, command: list[str]) -> None:
    name = command[0]
    down = f"nats://127.0.0.1:{free_port()}"
    cases = {
        "refused": admin(down),
        "wrong password": admin(server.url, password="wrong"),
        "no stream": admin(server.url),
        "no JetStream": admin(server.url, user="nojs"),
        "API denied": admin(server.url, user="weak"),
        "bad input": ["--server", down, "--password", "x"],
    }
    with ThreadPoolExecutor(len(cases)) as pool:  # each mostly waits on retries and timeouts
        results = dict(zip(cases, pool.map(lambda flags: run(*command, *flags), cases.values()), strict=True))

    refused = one_line(results["refused"], name)
    assert f"cannot connect to {down} as user 'admin': Connection refused; check --server" in refused
    assert results["refused"].stdout == ""

    wrong = one_line(results["wrong password"], name)
    assert f"cannot connect to {server.url} as user 'admin': Authorization Violation" in wrong
    assert "wrong" not in wrong.split("Violation")[1], "never the password"

    missing = one_line(results["no stream"], name)
    assert missing == f"jsb-infra {name}: --stream: no stream 's1' on {server.url}"

    assert "JetStream not enabled for account" in one_line(results["no JetStream"], name)

    denied = one_line(results["API denied"], name)
    assert denied == (
        f"jsb-infra {name}: the server denied the admin user: permissions violation for publish to "
        '"$js.api.stream.info.s1"; it needs publish rights on $JS.API.>'
    )

    bad_input = one_line(results["bad input"], name, code=2)
    assert bad_input == f"jsb-infra {name}: --password: needs --user (or JSB_ADMIN_USER)"


def test_control_nats_py_prints_tracebacks_without_an_error_callback() -> None:
    """What the one-line tests would catch: nats-py's default error callback logs every failed attempt
    with its traceback (the raw lines `status` used to print before its own message)."""
    script = (
        "import asyncio, nats\n"
        f"asyncio.run(nats.connect('nats://127.0.0.1:{free_port()}', max_reconnect_attempts=1, "
        "reconnect_time_wait=0.1))\n"
    )
    raw = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "nats: encountered error" in raw.stderr and "Traceback" in raw.stderr
    assert len(raw.stderr.splitlines()) > 10


def _bridge(tmp_path: Path, url: str) -> Path:
    rendered = tmp_path / "rendered"
    assert main(["render", str(EXAMPLE), "--out", str(rendered), "--server", url]) == 0
    return rendered / "orders-billing-sync" / "bridges" / "orders.json"


def test_doctor_reports_the_cause_without_library_lines(server: LocalNatsServer, tmp_path: Path) -> None:
    """doctor's report is its stdout; a connect failure is its FAILED line, and stderr stays empty."""
    down = f"nats://127.0.0.1:{free_port()}"
    for url, user, cause in [
        (down, "admin", "Connection refused"),
        (server.url, "admin", "Authorization Violation"),
    ]:
        result = run(
            "doctor", "--bridge", str(_bridge(tmp_path / user, url)), "--user", user, "--password", "no"
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr == ""
        failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 1, result.stdout
        assert failed[0].startswith(f"FAILED  connect: {url} as user {user}: {cause}"), result.stdout


def test_relay_ends_in_one_line_when_the_server_is_down(tmp_path: Path) -> None:
    """relay is a service and logs its attempts with timestamps; it still ends with one line, no trace."""
    seed, public_key = new_user_keypair()
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"public_key": public_key, "seed": seed}))
    down = f"nats://127.0.0.1:{free_port()}"
    result = run(
        "relay",
        "--bridge",
        str(_bridge(tmp_path, down)),
        "--credentials",
        str(credentials),
        "--db",
        f"sqlite:///{tmp_path / 'outbox.db'}",
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "nats: encountered error" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"jsb-infra relay: could not connect to {down}"), result.stderr
    assert seed not in result.stderr


def interrupted_while_connecting(program: tuple[str, ...], command: str) -> subprocess.CompletedProcess[str]:
    """`command` run against a server that accepts the TCP connection and never says INFO (a firewall
    or a hung host), Ctrl-C (SIGINT) once it waits; connect_timeout is 5 s, the signal comes at 1 s.
    (Popen leaves SIGINT at its default; a shell's background job would start with it ignored.)"""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        accepted: list[socket.socket] = []  # held open, never written to
        threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("JSB_")}
        argv = [*program, command, *admin(url), "--timeout", "5", "--stream", "s"]
        if command == "dlq":
            argv[len(program) + 1 : len(program) + 1] = ["list"]
            argv += ["--app", "a"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert accepted, "the command connected to the silent server"
        accepted[0].close()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


@pytest.mark.parametrize("command", ["status", "dlq"])
def test_ctrl_c_while_connecting_says_interrupted_in_one_line(command: str) -> None:
    """Ctrl-C while the connect waits (asyncio.run cancels the command; the CLI names it, exit 130)."""
    line = one_line(interrupted_while_connecting((CLI,), command), command, code=130)
    assert line == f"jsb-infra {command}: interrupted"
    # control: the command's handler without main() around it ends in a KeyboardInterrupt traceback
    bare = interrupted_while_connecting((sys.executable, "-c", BARE_HANDLER), command)
    assert bare.returncode != 0 and "Traceback" in bare.stderr and "KeyboardInterrupt" in bare.stderr


BARE_HANDLER = """import sys
from jsb_infra.cli import build_parser
args = build_parser().parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("not-a-url", "Could not parse SQLAlchemy URL"),
        ("postgresql+nosuchdriver://u@127.0.0.1/db", "Can't load plugin"),
        ("mysql://u:secret-pw@127.0.0.1/db", "its driver is not installed"),
    ],
    ids=["not-a-url", "unknown-driver", "driver-not-installed"],
)
def test_relay_with_a_bad_db_url_is_bad_input_naming_the_flag(tmp_path: Path, url: str, rule: str) -> None:
    """Before any connection: exit 2 naming --db (it was exit 1 and SQLAlchemy's class name), and the
    password in the URL is not printed."""
    result = run("relay", "--bridge", str(_bridge(tmp_path, f"nats://127.0.0.1:{free_port()}")), "--db", url)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("jsb-infra relay: --db: database url: ") and rule in line, line
    assert "secret-pw" not in line


def test_an_unexpected_failure_is_one_line_and_JSB_DEBUG_shows_the_traceback() -> None:
    # No command expects its stdout to fail: `schema` into a full device is an error nobody handles.
    full = ("sh", "-c", f"exec {CLI} schema > /dev/full")
    line = one_line(run(program=full), "schema")
    assert line.startswith("jsb-infra schema: OSError: ") and "(set JSB_DEBUG=1 for details)" in line
    debug = run(env={"JSB_DEBUG": "1"}, program=full)  # the control: the same failure, traceback shown
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("nul.yaml", b"pairs:\n  - stream: s\x00\n", "nul.yaml:2:14: a NUL byte; a YAML file is text"),
        ("bell.yaml", b"pairs: \x07\n", "bell.yaml:1:8: the control character U+0007"),
        ("binary.yaml", b"\x89PNG\r\n\x1a\n\x00", "binary.yaml:1: not UTF-8 (byte 0x89 at offset 0)"),
        (
            "latin1.yaml",
            b"pairs:\n  - stream: caf\xe9\n",
            "latin1.yaml:2: not UTF-8 (byte 0xe9 at offset 22)",
        ),
        ("a-directory", None, "a-directory: cannot read the config file: Is a directory"),
        ("missing.yaml", ..., "missing.yaml: cannot read the config file: No such file or directory"),
    ],
    ids=["nul", "control-character", "binary", "latin1", "directory", "missing"],
)
def test_unreadable_input_exits_2_with_one_line(tmp_path: Path, capsys, name, content, says) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    out = tmp_path / "out"
    assert main(["render", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"invalid config: {tmp_path}/{says}" + err.split(says, 1)[1], err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_unreadable_stack_file_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_bytes(b"config:\n  jsb:pairs: \x00\n")
    assert main(["render", "--stack", str(stack), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"invalid config: {stack}:2:14: a NUL byte; a YAML file is text " + (
        "without control characters (inside double quotes a value may hold one as an escape such as \\0)\n"
    )
    assert main(["render", "--stack", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err == f"invalid config: {tmp_path}: cannot read the stack file: Is a directory\n"
    )
    assert not (tmp_path / "out").exists()


def test_control_pyyaml_raises_on_a_nul_byte() -> None:
    """Before the strict loader caught it, PyYAML's reader error escaped `render` (exit 1, traceback)."""
    import yaml

    with pytest.raises(yaml.reader.ReaderError):
        yaml.safe_load("pairs:\n  - stream: s\x00\n")


# -- make up / make down ---------------------------------------------------------------------------
DEV = (sys.executable, "-m", "jsb_infra.local.dev")  # what `make up` / `make down` run


def _dev(command: str, root: Path, port: str) -> subprocess.CompletedProcess[str]:
    return run(command, env={"JSB_DEV_ROOT": str(root), "JSB_DEV_PORT": port}, program=DEV)


def test_make_up_and_down_on_a_taken_port_say_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    shutil.copy(REPO / "stacks" / "Pulumi.dev.yaml", tmp_path / "stacks" / "Pulumi.dev.yaml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in ("up", "down"):
            result = _dev(command, tmp_path, str(port))
            assert result.returncode == 1, result.stdout + result.stderr
            assert result.stderr.splitlines() == [
                f"the dev nats-server did not start on nats://127.0.0.1:{port}: Error listening on port: "
                f'127.0.0.1:{port}, "listen tcp 127.0.0.1:{port}: bind: address already in use"; another '
                f"server on port {port}? set JSB_DEV_PORT to a free port (log: .jsb/nats/nats-server.log)"
            ], result.stderr
    assert not (tmp_path / ".jsb" / "nats.pid").exists(), "nothing claims to run"


@pytest.mark.parametrize("port", ["abc", "70000"])
def test_make_up_refuses_a_dev_port_that_is_not_a_port(tmp_path: Path, port: str) -> None:
    result = _dev("up", tmp_path, port)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"JSB_DEV_PORT: must be a TCP port (1-65535), got {port!r}"]
    assert not (tmp_path / ".jsb" / "nats.pid").exists()


def test_make_up_on_another_port_than_the_running_dev_server_says_so(tmp_path: Path) -> None:
    """A dev server left running on one port and `make up` with another: one line naming both, and the
    stack never runs against a port where nothing listens."""
    (tmp_path / "stacks").mkdir()
    shutil.copy(REPO / "stacks" / "Pulumi.dev.yaml", tmp_path / "stacks" / "Pulumi.dev.yaml")
    running, other = free_port(), free_port()
    started = _dev("start-server", tmp_path, str(running))
    assert started.returncode == 0, started.stderr
    try:
        result = _dev("up", tmp_path, str(other))
        assert result.returncode == 1
        pid = (tmp_path / ".jsb" / "nats.pid").read_text()
        assert result.stderr.splitlines() == [
            f"the dev nats-server (pid {pid}) runs on port {running}, not {other}: run with "
            f"JSB_DEV_PORT={running}, or `make down JSB_DEV_PORT={running}` first"
        ]
        assert not (tmp_path / ".jsb" / "state" / ".pulumi").exists(), "no pulumi command ran"
    finally:
        assert _dev("stop-server", tmp_path, str(running)).returncode == 0


def test_the_provider_host_prints_nothing_when_the_admin_connect_fails() -> None:
    """The deploy side of the same promise: a `pulumi up` against a server that is down shows the
    provider's one error naming the cause, and the host writes no NATS client tracebacks (with nats-py's
    default error callback it wrote a traceback per connect attempt, which the engine printed)."""
    down = f"nats://127.0.0.1:{free_port()}"
    spec = parse_pairs([{"stream": "s", "apps": ["a", "b"], "protect": False}]).pairs[0]
    with ProviderHost() as host:
        host.configure(stack_config(down))
        with pytest.raises(ProviderCallError) as caught:
            host.up(StreamProvider(), stream_inputs(spec))
    assert f"cannot connect to {down} as user 'jsb-admin': Connection refused" in caught.value.details
    assert "Traceback" not in host.stderr and "Connect call failed" not in host.stderr, host.stderr
