"""How a site reaches the consortium: the ``[superlink]``, ``[tls]`` and ``[auth]`` sections of site.toml.

Example (paths relative to the folder holding site.toml)::

    [superlink]
    address = "fl.consortium.example:9092"   # host:port of the SuperLink

    [tls]
    root-certificates = "ca.crt"             # the consortium CA (implantfl-server certs)

    [auth]
    private-key = "keys/site.key"            # implantfl-client keys; the .pub is registered

The other sections (``[site]``, ``[labels]``, ``[preprocess]``, ...) belong to
:mod:`client.site.config`. Error messages name the setting, never a path: they may end
up in logs that leave the site.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.toml_file import read_toml

SECTIONS = ("superlink", "tls", "auth")
KEYS = {"superlink": ("address",), "tls": ("root-certificates",), "auth": ("private-key",)}


@dataclass(frozen=True)
class SiteConnection:
    """Where and how this site's SuperNode connects."""

    address: str  # host:port of the SuperLink
    root_certificates: Path | None  # CA certificate (absolute); None only when insecure
    private_key: Path | None  # node authentication key (absolute); None only when insecure

    @classmethod
    def load(cls, path: Path, *, insecure: bool = False) -> SiteConnection:
        """Read the connection sections of a site TOML file."""
        raw = read_toml(path, what="the site config file")
        return cls.from_dict(raw, base=path.expanduser().resolve().parent, insecure=insecure)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base: Path, insecure: bool = False) -> SiteConnection:
        """Validate the sections; TLS and authentication files are required unless ``insecure``."""
        tables: dict[str, Mapping[str, Any]] = {}
        for section in SECTIONS:
            table = raw.get(section, {})
            if not isinstance(table, Mapping):
                raise ConfigError(f"[{section}] must be a table")
            unknown = sorted(set(table) - set(KEYS[section]))
            if unknown:
                raise ConfigError(f"[{section}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS[section])}")
            tables[section] = table
        if "address" not in tables["superlink"]:
            raise ConfigError('[superlink] address is missing (e.g. address = "fl.consortium.example:9092")')
        address = parse_address(tables["superlink"]["address"])
        ca = _opt_path(tables["tls"].get("root-certificates"), base, "[tls] root-certificates")
        key = _opt_path(tables["auth"].get("private-key"), base, "[auth] private-key")
        if not insecure:
            if ca is None:
                raise ConfigError("[tls] root-certificates is missing: the consortium CA certificate is required")
            if key is None:
                raise ConfigError("[auth] private-key is missing: create a key pair with `implantfl-client keys`")
        return cls(address=address, root_certificates=ca, private_key=key)

    def check_files(self, *, insecure: bool = False) -> None:
        """Raise ConfigError unless the CA certificate and private key are usable."""
        if insecure:
            return
        assert self.root_certificates is not None and self.private_key is not None  # from_dict ensures it
        check_ca_certificate(self.root_certificates)
        from client.site.keys import check_private_key

        check_private_key(self.private_key)


def parse_address(value: Any) -> str:
    """Validate ``host:port`` (``[v6]:port`` for IPv6); return it normalised."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("[superlink] address must be host:port")
    text = value.strip()
    if "://" in text:
        raise ConfigError("[superlink] address takes host:port without a URL scheme")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("[superlink] address has an invalid IPv6 host") from None
        host_out = f"[{host}]"
    else:
        host, sep, port = text.rpartition(":")
        host_out = host
        if ":" in host:
            raise ConfigError("[superlink] address: write IPv6 hosts as [addr]:port")
    if not sep or not host or any(c.isspace() for c in host):
        raise ConfigError("[superlink] address must be host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError("[superlink] address needs a port number in 1..65535")
    return f"{host_out}:{int(port)}"


def check_ca_certificate(path: Path) -> None:
    """Raise ConfigError unless ``path`` holds at least one PEM certificate."""
    from cryptography import x509

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("[tls] root-certificates: the CA certificate file does not exist") from None
    except OSError as e:
        raise ConfigError(f"[tls] root-certificates: the file cannot be read ({type(e).__name__})") from e
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError("[tls] root-certificates: not a PEM certificate")


def _opt_path(value: Any, base: Path, what: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty path")
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()
