"""Privacy-safe names for files in logs and errors.

A site must be able to find the file an error talks about, while nobody who only sees
the message (the server, a log aggregator) learns its path. Files are therefore named by
a salted hash: the salt stays at the site (``IMPLANTFL_LOG_SALT`` or a per-process
random salt), so the token cannot be reversed with a dictionary of likely paths.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

_PROCESS_SALT = secrets.token_hex(16)


def _salt() -> str:
    return os.environ.get("IMPLANTFL_LOG_SALT", _PROCESS_SALT)


def file_token(path: str | os.PathLike[str]) -> str:
    """Return a short salted hash naming ``path`` without revealing it, e.g. ``f:3fa2c1d09e``."""
    digest = hashlib.sha256((_salt() + "\0" + str(Path(path))).encode("utf-8")).hexdigest()
    return "f:" + digest[:10]
