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

POLL = 0.1


def config_load_time(varz: str, timeout: float = 2.0) -> str | None:
    """The server's `config_load_time` from its /varz; None when it does not answer."""
    try:
        with urllib.request.urlopen(varz, timeout=timeout) as reply:
            value = json.loads(reply.read()).get("config_load_time")
    except (OSError, ValueError):  # URLError is an OSError
        return None
    return str(value) if value else None


def wait_for_new_config_load(varz: str, before: str, timeout: float) -> str | None:
    """Poll /varz until `config_load_time` differs from `before` (a restart's brief silence is waited
    out); returns the new value, or None when it stayed `before` for `timeout` seconds."""
    started = time.monotonic()
    while True:
        now = config_load_time(varz)
        if now is not None and now != before:
            return now
        if time.monotonic() - started > timeout:
            return None
        time.sleep(POLL)
