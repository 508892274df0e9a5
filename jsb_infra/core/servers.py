"""Server URL rules: what the deploy connects to and what apps are told (both plain, never secret)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

SERVER_SCHEMES = ("nats", "tls", "ws", "wss")
UNREADABLE = object()
"""A config value that could not be decoded; its problem is already listed."""


def check_servers(value: Any, problems: list[str], key: str = "jsb:servers") -> tuple[str, ...]:
    """The server URLs in `value`, each checked; a problem (naming `key`) for each bad one."""
    if value is UNREADABLE:
        return ()
    if value is None:
        problems.append(f"{key}: required; list the NATS server URLs, e.g. ['nats://127.0.0.1:4222']")
        return ()
    if not isinstance(value, list) or not value:
        problems.append(f"{key}: must be a non-empty list of server URLs, got {value!r}")
        return ()
    servers: list[str] = []
    for i, url in enumerate(value):
        if not isinstance(url, str) or not url.strip():
            problems.append(f"{key}[{i}]: must be a non-empty string, got {url!r}")
            continue
        parts = urlsplit(url)
        if parts.username or parts.password:  # the URL is not echoed: it holds a secret
            problems.append(
                f"{key}[{i}]: must not contain credentials (they would reach every app's bridge config, "
                f"which is not secret); put the admin's in the secret jsb:admin"
            )
            continue
        if parts.scheme not in SERVER_SCHEMES or not parts.hostname:
            problems.append(
                f"{key}[{i}]: {url!r} is not a server URL; write scheme://host:port with scheme one of "
                f"{', '.join(SERVER_SCHEMES)}"
            )
            continue
        servers.append(url)
    return tuple(servers)
