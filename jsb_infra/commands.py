"""Run an operator's command (an argv list, no shell) and turn a failure into one line naming it: what
the reload hook of the accounts include and the multi-host include rollout both run."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class CommandFailed(RuntimeError):
    """The command did not run, exited non-zero or ran out of time; the message names it (and ends
    with its stderr)."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run `argv`; returns its stdout, raises CommandFailed (`command 'x' exited with 1: ...`)."""
    command = list(argv)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        raise CommandFailed(
            f"command {command[0]!r} did not finish within {timeout:g}s and was stopped"
            + (f": {said.strip()[-500:]}" if said.strip() else ""),
            timed_out=True,
        ) from None
    except OSError as err:
        raise CommandFailed(f"command {command[0]!r} failed to run: {err}") from None
    if done.returncode != 0:
        raise CommandFailed(
            f"command {command[0]!r} exited with {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return done.stdout
