"""Replace a file's whole content atomically, never writing through a link planted beside it.

The content goes into a new file beside the target, created exclusively (`O_EXCL`) and without
following a link (`O_NOFOLLOW`) under a random name, then renamed over the target (a rename replaces a
link itself, never its target). A fixed temp name (`.<name>.tmp`) opened for writing follows a symlink
someone put there: the write lands in the file it points to, and the rename then makes the target that
link. Readers (a reloading nats-server) never see half a file; a failure leaves the target as it was
and no temp file behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def replace_file(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Make `data` the whole content of `path`. `mode`: set exactly (0o600 for a secret); None: the
    default permissions of a new file (0o666 less the umask)."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 if mode is None else mode
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            if mode is not None:
                os.fchmod(file.fileno(), mode)  # whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
