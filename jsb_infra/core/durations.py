"""Human durations (`500ms`, `1m30s`, `7d`, or plain seconds) <-> integer nanoseconds.

The JetStream API speaks integer nanoseconds; people write `30s`. Everything inside jsb-infra holds
nanoseconds, so a value is parsed once at the edge and never converted by hand again.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
}
# ASCII digits only (`\d` would take Arabic-Indic and other Unicode digits); plain seconds have no
# exponent, `_`, NaN or Infinity.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h|d))+$|^[0-9]+(\.[0-9]+)?$"
MAX_DURATION_NS = 2**63 - 1
"""The server holds durations as Go `time.Duration`: signed 64-bit nanoseconds (about 292 years)."""


def parse_duration(value: object) -> int:
    """Return nanoseconds for `value`: a number of seconds or a string such as `1m30s`.

    Raises ValueError with the accepted forms; negative values and values the server cannot hold
    (2^63 ns or more) are refused here, and each field decides whether zero is allowed.
    """
    ns = _parse(value)
    if ns > MAX_DURATION_NS:
        raise ValueError(
            f"duration {value!r} is {ns} ns; the server holds at most {MAX_DURATION_NS} ns (about 292 years)"
        )
    return ns


def _parse(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 500ms, 30s, 1m30s, 2h, 7d or seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"duration {value!r} is not a finite number of seconds")
        if value < 0:
            raise ValueError(f"duration {value!r} is negative; durations must not be negative")
        return int(Decimal(str(value)) * NS_PER_UNIT["s"])
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; write e.g. 500ms, 30s, 1m30s, 2h, 7d or seconds")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration {value!r} is negative; durations must not be negative")
    if _SECONDS.fullmatch(text):
        return int(Decimal(text) * NS_PER_UNIT["s"])
    pos, total = 0, Decimal(0)
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * NS_PER_UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration; write e.g. 500ms, 30s, 1m30s, 2h, 7d or seconds")
    return int(total)


def format_duration(ns: int) -> str:
    """Shortest exact human form of `ns` (`90s` -> `1m30s`); the inverse of parse_duration."""
    if ns == 0:
        return "0s"
    parts: list[str] = []
    rest = ns
    for unit in ("d", "h", "m", "s", "ms", "us", "ns"):
        size = NS_PER_UNIT[unit]
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
