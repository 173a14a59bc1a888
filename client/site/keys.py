"""A site's authentication key pair (ECDSA P-384), as Flower's node authentication expects.

The private key is written in OpenSSH format with mode 0600 (``flower-supernode
--auth-supernode-private-key`` reads it); the public key is one OpenSSH line that the
consortium operator registers with ``implantfl-server register --public-key``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteKeys:
    private_key: Path  # OpenSSH private key, mode 0600: stays on the site machine
    public_key: Path  # OpenSSH public key: send it to the consortium operator


def create_site_keys(out: Path, *, name: str = "site", overwrite: bool = False, comment: str = "") -> SiteKeys:
    """Create ``out/<name>.key`` and ``out/<name>.pub``.

    Parameters
    ----------
    out : Path
        Folder for the two files (created with mode 0700 if missing).
    name : str
        File name stem.
    overwrite : bool
        Replace existing keys (the operator must then register the new public key).
    comment : str
        Comment appended to the public key line (e.g. the site name).

    Returns
    -------
    SiteKeys
        Absolute paths of the two files.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not name or "/" in name or name.startswith("."):
        raise ConfigError("the key name must be a plain file name")
    out = out.expanduser().resolve()
    keys = SiteKeys(out / f"{name}.key", out / f"{name}.pub")
    if not overwrite and (keys.private_key.exists() or keys.public_key.exists()):
        raise ConfigError("a key pair with this name already exists there; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fd = os.open(keys.private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    os.chmod(keys.private_key, 0o600)
    line = public + (f" {comment}".encode() if comment else b"") + b"\n"
    keys.public_key.write_bytes(line)
    logger.info("site key pair written")
    return keys


def check_private_key(path: Path) -> None:
    """Raise ConfigError unless ``path`` is a private EC key in OpenSSH format that only its owner can read.

    Messages name the setting, never the path (they may be shown to the server side).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError("[auth] private-key: the file does not exist (create it with `implantfl-client keys`)") from None
    except OSError as e:
        raise ConfigError(f"[auth] private-key: the file cannot be read ({type(e).__name__})") from e
    if mode & 0o077:
        raise ConfigError("[auth] private-key: the file is readable by other users; run chmod 600 on it")
    try:
        key = load_ssh_private_key(data, None)
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise ConfigError("[auth] private-key: not an unencrypted OpenSSH private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("[auth] private-key: Flower needs an ECDSA key (use `implantfl-client keys`)")
