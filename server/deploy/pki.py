"""A pilot PKI for one consortium: a CA and a SuperLink server certificate.

Good enough for a pilot and for tests; a production consortium would use its own CA.
The server certificate carries a subjectAltName for every name or address that sites
dial (``--host``), plus ``localhost`` and ``127.0.0.1`` unless ``loopback=False``.

Files written to the output folder::

    ca.crt       CA certificate (give it to every site: [tls] root-certificates)
    ca.key       CA private key (keep it offline; mode 0600)
    server.pem   SuperLink certificate
    server.key   SuperLink private key (mode 0600)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

logger = logging.getLogger(__name__)

LOOPBACK = ("localhost", "127.0.0.1")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"


@dataclass(frozen=True)
class PkiPaths:
    """Where the pilot PKI's files are (absolute paths)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> PkiPaths:
        d = directory.expanduser().resolve()
        return cls(d / CA_CERT, d / CA_KEY, d / SERVER_CERT, d / SERVER_KEY)

    def missing(self) -> list[str]:
        """Names of the files the SuperLink needs that do not exist."""
        return [p.name for p in (self.ca_cert, self.server_cert, self.server_key) if not p.is_file()]


def san_entries(hosts: Sequence[str], *, loopback: bool = True) -> tuple[list[str], list[str]]:
    """Split hosts into (DNS names, IP addresses), deduplicated, loopback added if asked."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in [*hosts, *(LOOPBACK if loopback else ())]:
        host = raw.strip().strip("[]")
        if not host:
            raise ConfigError("an empty host name cannot go into a certificate")
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            name = host.lower().rstrip(".")
            if not all(part and len(part) < 64 for part in name.split(".")) or " " in name:
                raise ConfigError(f"{raw!r} is neither an IP address nor a DNS name") from None
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    if not dns and not ips:
        raise ConfigError("give at least one --host (or keep the loopback names)")
    return dns, ips


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def create_pki(
    out: Path,
    hosts: Sequence[str],
    *,
    loopback: bool = True,
    days: int = 825,
    overwrite: bool = False,
    name: str = "ImplantFL consortium",
) -> PkiPaths:
    """Create the CA and the SuperLink certificate in ``out``.

    Parameters
    ----------
    out : Path
        Folder for the four files (created if missing).
    hosts : Sequence[str]
        DNS names and IP addresses that sites use to reach the SuperLink.
    loopback : bool
        Also certify ``localhost`` and ``127.0.0.1``.
    days : int
        Validity of both certificates.
    overwrite : bool
        Replace existing files; otherwise an existing CA is an error (re-issuing it
        would lock out every site that trusts the old one).
    name : str
        Common name prefix of the CA.

    Returns
    -------
    PkiPaths
        Absolute paths of the written files.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    paths = PkiPaths.in_dir(out)
    if not overwrite and any(p.exists() for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)):
        raise ConfigError("the certificate folder already holds a PKI; pass --force to replace it")
    if not 1 <= days <= 3650:
        raise ConfigError("certificate validity must be between 1 and 3650 days")
    dns, ips = san_entries(hosts, loopback=loopback)
    paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt_names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    pem = serialization.Encoding.PEM
    key_format = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                      encryption_algorithm=serialization.NoEncryption())
    _write_private(paths.ca_key, ca_key.private_bytes(**key_format))
    _write_private(paths.server_key, server_key.private_bytes(**key_format))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    paths.server_cert.write_bytes(server_cert.public_bytes(pem))
    logger.info("pilot PKI written: CA + server certificate for %s", ", ".join([*dns, *ips]))
    return paths


def certificate_sans(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (for checks and tests)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*ext.get_values_for_type(x509.DNSName), *(str(i) for i in ext.get_values_for_type(x509.IPAddress))]
