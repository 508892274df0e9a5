"""Whether a nats-server applied a reload: its monitoring endpoint's `config_load_time`.

nats-server re-reads its config on SIGHUP (`nats-server --signal reload=<pid file>` sends it and exits
0 at once). A config it refuses (a syntax error, a user defined twice, an option a reload cannot
change) is logged and dropped: the server keeps running the previous config and nothing else tells
the sender. `/varz` reports `config_load_time`; a reload the server applied (or a restart) moves it
forward, a refused one leaves it as it was (nats-server `server/reload.go`: the time is set only
after the new options were applied). So "did the reload take" is: read it before, reload, wait until
it changes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

POLL = 0.1


def read_varz(varz: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's /varz; None when it does not answer."""
    try:
        with urllib.request.urlopen(varz, timeout=timeout) as reply:
            value = json.loads(reply.read())
    except (OSError, ValueError):  # URLError is an OSError
        return None
    return value if isinstance(value, dict) else None


def load_time(answer: dict[str, Any] | None) -> str | None:
    """A /varz answer's `config_load_time`; None without an answer."""
    value = (answer or {}).get("config_load_time")
    return str(value) if value else None


def config_load_time(varz: str, timeout: float = 2.0) -> str | None:
    """The server's `config_load_time` from its /varz; None when it does not answer."""
    return load_time(read_varz(varz, timeout))


def jetstream_store(answer: dict[str, Any]) -> tuple[int, int]:
    """A /varz answer's JetStream store limits (max_storage, max_memory); 0 when it has no JetStream."""
    config = (answer.get("jetstream") or {}).get("config") or {}
    return int(config.get("max_storage") or 0), int(config.get("max_memory") or 0)


class NotApplied(RuntimeError):
    """The server did not show the new config in time; the message says which way. `down`: its
    monitoring endpoint stopped answering (a restart that did not come back); otherwise it answered
    with the old `config_load_time` (it refused the config and runs the previous one)."""

    def __init__(self, message: str, down: bool):
        super().__init__(message)
        self.down = down


def confirm_reload(varz: str, before: str, timeout: float) -> str:
    """Poll /varz until `config_load_time` differs from `before` (a restart's brief silence is waited
    out); returns the new value. Raises NotApplied after `timeout` seconds, judged by the last poll."""
    started = time.monotonic()
    while True:
        now = config_load_time(varz)
        if now is not None and now != before:
            return now
        if time.monotonic() - started > timeout:
            break
        time.sleep(POLL)
    if now is None:
        raise NotApplied(
            f"{varz} stopped answering and did not come back within {timeout:g}s: the server may have "
            "failed to start on the new include (see its log)",
            down=True,
        )
    raise NotApplied(
        f"the server did not apply the new include within {timeout:g}s (config_load_time at {varz} "
        f"stayed {before}): it refused the config (see its log) and runs the previous one",
        down=False,
    )
