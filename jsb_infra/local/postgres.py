"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb into a temp dir, a unix socket only.

The server binaries come from PATH (`initdb`), else from Debian's layout `/usr/lib/postgresql/<v>/bin`
(the `postgresql` package; `.ci/run` installs it where missing). PostgreSQL refuses to run as root, so
when this process is root the cluster's directory is given to an unprivileged user (`nobody` unless
told otherwise) and every server command runs as that user through `runuser`. No TCP port is opened:
clients connect through the socket in the cluster's directory.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

DEBIAN_LAYOUT = Path("/usr/lib/postgresql")


def postgres_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres are; raises FileNotFoundError saying how to get them."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    if DEBIAN_LAYOUT.is_dir():

        def version(path: Path) -> tuple[int, ...]:
            return tuple(int(p) for p in re.findall(r"\d+", path.name)) or (0,)

        for candidate in sorted(DEBIAN_LAYOUT.iterdir(), key=version, reverse=True):
            if (candidate / "bin" / "initdb").exists():
                return candidate / "bin"
    raise FileNotFoundError(
        "PostgreSQL server binaries not found (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
        "install them, e.g. `apt-get install -y postgresql`"
    )


@dataclass
class LocalPostgres:
    """`start()` (or use as a context manager); then connect with `url` (SQLAlchemy, psycopg 3)."""

    run_as: str = "nobody"  # used only when this process is root
    database: str = "postgres"
    user: str = "jsb"
    port: int = 5432  # names the socket file only; nothing listens on TCP
    settings: dict[str, str] = field(
        # Tests kill the app, never the database: durability of the server's own files is not under test.
        default_factory=lambda: {"fsync": "off", "full_page_writes": "off", "max_connections": "50"}
    )
    base_dir: Path | None = field(default=None, init=False)
    paused: bool = field(default=False, init=False)

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None, "not started"
        return self.base_dir / "sock"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@/{self.database}?host={self.socket_dir}&port={self.port}"

    def _command(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", self.run_as, "--", *argv]
        return argv

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(self._command(argv), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        bin_dir = postgres_bin_dir()
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(self.run_as)
            except KeyError:
                raise RuntimeError(
                    f"run_as: PostgreSQL refuses to run as root and there is no user {self.run_as!r} to run "
                    "it as; create one or pass run_as= an unprivileged user"
                ) from None
        # A short path of its own under /tmp: unix socket paths are limited to ~107 bytes, and the
        # unprivileged user must be able to reach it (pytest's tmp dirs are private to root).
        self.base_dir = Path(tempfile.mkdtemp(prefix="jsb-pg-", dir="/tmp"))
        try:
            self._init_and_start(bin_dir, owner, timeout)
        except BaseException:
            log = self.base_dir / "postgres.log"
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
            if detail:
                raise RuntimeError(f"PostgreSQL did not start; its log ends:\n{detail}") from None
            raise
        return self

    def _init_and_start(self, bin_dir: Path, owner: pwd.struct_passwd | None, timeout: float) -> None:
        assert self.base_dir is not None
        data = self.base_dir / "data"
        self.socket_dir.mkdir()
        if owner is not None:
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        self._start_server(bin_dir, timeout)

    def _start_server(self, bin_dir: Path, timeout: float) -> None:
        assert self.base_dir is not None
        data = self.base_dir / "data"
        options = [f"-p {self.port}", "-c listen_addresses=''", f"-k {self.socket_dir}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.base_dir / "postgres.log"),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ]
        )

    def pause(self) -> None:
        """Stop the server and keep its data (a database outage for fault tests); `resume()` restarts it."""
        assert self.base_dir is not None, "not started"
        self._run(
            [str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.base_dir / "data"), "-m", "fast", "stop"]
        )
        self.paused = True

    def resume(self, timeout: float = 30.0) -> None:
        """Start the server `pause()` stopped, with the same settings and data."""
        assert self.base_dir is not None, "not started"
        self._start_server(postgres_bin_dir(), timeout)
        self.paused = False

    def stop(self) -> None:
        """Stop the server (immediate: its data is thrown away) and delete the cluster."""
        if self.base_dir is None:
            return
        try:
            if self.paused:  # nothing runs: only the files are left to delete
                return
            self._run(
                [
                    str(postgres_bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.base_dir / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ]
            )
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
