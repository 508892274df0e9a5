"""The stored-nothing publish probe: does the stream's leader answer on this subject right now?

The probe is a plain publish to a stream subject carrying `Nats-Expected-Last-Subject-Sequence` with
an impossible value. The stream leader checks that header before it stores (or, in a cluster,
proposes) anything and answers "wrong last sequence" (err_code 10071, or 10164 while another publish
to the subject is in flight) on the reply inbox (nats-server
server/jetstream_batching.go `checkMsgHeadersPreClusteredProposal`, server/stream.go
`processJetStreamMsg`). So that answer proves, with nothing stored and no management call: the
publish was permitted, the subject is captured by the expected stream, the PubAck path works, and the
stream has a leader. Without a leader (an election, quorum lost) nobody subscribes to the subject and
the request ends at once with "no responders".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client as NATS

PROBE_HEADER = "Jsb-Probe"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
IMPOSSIBLE_SEQUENCE = str(2**63 - 1)
WRONG_LAST_SEQUENCE = 10071
# The same refusal without the sequence: a clustered stream leader answers so when a publish to the same
# subject is still in flight (server/jetstream_batching.go), i.e. whenever the app is busy publishing.
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164
LEADER_REFUSALS = frozenset({WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT})

Outcome = Literal["answered", "no_responders", "timeout", "unexpected"]


@dataclass(frozen=True)
class ProbeAnswer:
    """What came back: `answered` (parsed JSON in `answer`), or why nothing usable did."""

    outcome: Outcome
    answer: dict[str, Any] | None = None
    raw: bytes = b""

    @property
    def stream(self) -> str | None:
        return None if self.answer is None else self.answer.get("stream")

    @property
    def error_code(self) -> int | None:
        error = (self.answer or {}).get("error") or {}
        code = error.get("err_code")
        return int(code) if code is not None else None

    def leader_answered(self, stream: str) -> bool:
        """True when `stream` refused the probe as intended: its leader is there and nothing was stored."""
        return self.outcome == "answered" and self.stream == stream and self.error_code in LEADER_REFUSALS

    def describe(self, subject: str, timeout: float) -> str:
        if self.outcome == "no_responders":
            return f"no stream leader takes {subject} (no responders: an election, or no such stream)"
        if self.outcome == "timeout":
            return f"no answer on {subject} within {timeout}s"
        if self.outcome == "unexpected":
            return f"unexpected answer on {subject}: {self.raw[:200]!r}"
        return f"stream {self.stream!r} answered on {subject}: {self.answer}"


async def probe_publish(
    nc: NATS, subject: str, timeout: float, body: bytes = b"jsb-infra probe"
) -> ProbeAnswer:
    """Send the probe to `subject` and classify the answer; raises only for a closed connection."""
    headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: IMPOSSIBLE_SEQUENCE, PROBE_HEADER: "1"}
    try:
        reply = await nc.request(subject, body, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        return ProbeAnswer("no_responders")
    except (nats.errors.TimeoutError, TimeoutError):
        return ProbeAnswer("timeout")
    try:
        answer = json.loads(reply.data)
    except ValueError:
        return ProbeAnswer("unexpected", raw=reply.data)
    if not isinstance(answer, dict):
        return ProbeAnswer("unexpected", raw=reply.data)
    return ProbeAnswer("answered", answer=answer, raw=reply.data)
