"""`Nats-Msg-Id`s the peer app cannot predict: keyed by a secret only the publishing app holds.

Both apps of a pair publish into one stream and share its `Nats-Msg-Id` dedupe window. A publish whose
id is already in the window is not stored; the server answers it with a PubAck marked `duplicate`.
An id the peer can predict (an event id it can guess, or `dlq:<stream>:<seq>` built from a sequence it
sees) can therefore be published by the peer first, and the real publish is silently dropped.

Every id here is a keyed BLAKE2b (a MAC by construction, RFC 7693; 128 bits, hex: 1 us per id, a third
of HMAC-SHA256's cost, on the publish path) keyed by a key derived with HMAC-SHA256 from the app's own
credential secret (its NKey seed, the seed of its `.creds`, its password or token), over a stable input:
the event id for an event, stream and stream sequence for a dead letter. Every instance of the same app
derives the same key, so a publish retried by another process is still deduplicated; the peer, which
does not hold the secret, cannot compute the id. Each kind of id has its own domain (BLAKE2b's
personalization), so no event id can ever produce a dead letter's id.

A client certificate's private key (mutual TLS, mapped to a user) is such a secret too. Without any
secret (an open server, where any client may do anything to the stream anyway) the key is a public
constant: retries from any process still deduplicate, but the ids are predictable, so the client
marks them not private and does not take a duplicate dead-letter PubAck for its own write.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from jsb_infra.core.jwt_claims import JwtError, parse_creds

if TYPE_CHECKING:
    from jsb_infra.runtime.config import Credentials

KEY_CONTEXT = b"jsb-infra Nats-Msg-Id key v1"
NO_SECRET = b"jsb-infra: no credential secret"  # public: ids of a client without credentials
EVENT_PREFIX = "ev1-"
DEAD_LETTER_PREFIX = "dl1-"
ONE_OFF_PREFIX = "dl1x-"
TAG_BYTES = 16  # 128 bits: no guessing, no accidental collision within any dedupe window


def _tag(key: bytes, domain: bytes, value: str) -> str:
    return hashlib.blake2b(value.encode(), key=key, digest_size=TAG_BYTES, person=domain).hexdigest()


def credential_secret(credentials: Credentials) -> bytes | None:
    """The secret of the app's credentials the key derives from, or None without one.

    Raises ValueError when a `.creds` file or text cannot be read (the connect would fail on it too).
    """
    method = credentials.method
    try:
        creds = credentials.creds_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"creds_file: cannot read {credentials.creds_file!r}: {err}") from None
    if creds is not None:
        return _creds_seed(creds)
    if method == "nkey" and credentials.nkey_seed:
        return b"nkey\0" + credentials.nkey_seed.encode()
    if method == "user/password" and credentials.password:
        return b"user\0" + (credentials.user or "").encode() + b"\0" + credentials.password.encode()
    if method == "token" and credentials.token:
        return b"token\0" + credentials.token.encode()
    if credentials.tls is not None and credentials.tls.key_file:
        try:
            return b"tls\0" + Path(credentials.tls.key_file).read_bytes()
        except OSError as err:
            raise ValueError(f"tls.key: cannot read {credentials.tls.key_file!r}: {err}") from None
    return None


def _creds_seed(text: str) -> bytes:
    try:
        seed = parse_creds(text)[1]
    except JwtError as err:
        raise ValueError(f"creds: {err}") from None
    return b"nkey\0" + seed.encode()


class MsgIds:
    """The `Nats-Msg-Id`s one app writes.

    Every instance of the app derives the same key, so they all write the same ids. `private`: nobody
    without this app's key can write them (false for the public key of a client without credentials).
    """

    __slots__ = ("_key", "private")

    def __init__(self, key: bytes, *, private: bool = True):
        if len(key) < 16:
            raise ValueError("key: must be at least 16 bytes")
        self._key = key
        self.private = private

    @classmethod
    def for_credentials(cls, credentials: Credentials) -> MsgIds:
        """Keyed by the credentials' secret; without one, by a public constant (`private` false)."""
        secret = credential_secret(credentials)
        if secret is None:
            return cls(hmac.digest(NO_SECRET, KEY_CONTEXT, "sha256"), private=False)
        return cls(hmac.digest(secret, KEY_CONTEXT, "sha256"))

    def event(self, event_id: str) -> str:
        """The id of an event's publish: the same for every publish of this event id by this app."""
        return EVENT_PREFIX + _tag(self._key, b"event", event_id)

    def dead_letter(self, stream: str, sequence: int) -> str:
        """The id of the dead letter of message `sequence` of `stream`: one per stored message."""
        return DEAD_LETTER_PREFIX + _tag(self._key, b"dead-letter", f"{stream}\0{sequence}")

    @staticmethod
    def one_off() -> str:
        """A fresh random id, never reused: for a dead letter whose stable id was taken by another."""
        return ONE_OFF_PREFIX + uuid.UUID(bytes=os.urandom(16)).hex
