"""NKey user identities for apps: the seed is the secret, the public key goes into permissions."""

from __future__ import annotations

import os

import nkeys


def new_user_keypair() -> tuple[str, str]:
    """A fresh NKey user as (seed, public key), from 32 bytes of OS randomness (like `nk -gen user`)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), public_key_of(seed.decode())


def public_key_of(seed: str) -> str:
    """The public `U...` key of a user seed; raises nkeys errors for a malformed seed."""
    return nkeys.from_seed(seed.encode()).public_key.decode()
