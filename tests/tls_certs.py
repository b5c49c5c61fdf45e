"""A throwaway certificate authority and certificates for TLS tests, made with the openssl CLI.

`make_certificates(directory)` writes a CA, a server certificate for
127.0.0.1 and localhost, a client certificate (for mutual TLS), all signed
by that CA, and the certificate of a second, unrelated CA that a client
can wrongly trust. Keys are P-256 EC keys, which openssl makes in
milliseconds.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files that `make_certificates` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path


def make_certificates(directory: Path) -> Certificates:
    """Write a CA, server and client certificates, and an unrelated CA, into `directory`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make test certificates")

    ca_cert, ca_key = _make_ca(openssl, directory, "ca", "wfe-valkey test CA")
    other_ca_cert, _ = _make_ca(openssl, directory, "other-ca", "unrelated test CA")
    server_cert, server_key = _make_signed(
        openssl,
        directory,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ca_cert,
        ca_key,
    )
    client_cert, client_key = _make_signed(
        openssl,
        directory,
        "client",
        "wfe-valkey test client",
        "extendedKeyUsage=clientAuth\n",
        ca_cert,
        ca_key,
    )
    return Certificates(ca_cert, server_cert, server_key, client_cert, client_key, other_ca_cert)


def _run(openssl: str, *args: str) -> None:
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _new_key(openssl: str, path: Path) -> None:
    _run(
        openssl,
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        str(path),
    )


def _make_ca(openssl: str, directory: Path, name: str, subject: str) -> tuple[Path, Path]:
    """Make a self-signed CA certificate valid for one day."""
    key = directory / f"{name}.key"
    cert = directory / f"{name}.crt"
    _new_key(openssl, key)
    _run(
        openssl,
        "req",
        "-x509",
        "-new",
        "-key",
        str(key),
        "-subj",
        f"/CN={subject}",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        str(cert),
    )
    return cert, key


def _make_signed(
    openssl: str,
    directory: Path,
    name: str,
    common_name: str,
    extensions: str,
    ca_cert: Path,
    ca_key: Path,
) -> tuple[Path, Path]:
    """Make a key and a certificate for it signed by the CA, valid for one day."""
    key = directory / f"{name}.key"
    request = directory / f"{name}.csr"
    cert = directory / f"{name}.crt"
    extensions_file = directory / f"{name}.ext"
    extensions_file.write_text(extensions)
    _new_key(openssl, key)
    _run(
        openssl,
        "req",
        "-new",
        "-key",
        str(key),
        "-subj",
        f"/CN={common_name}",
        "-out",
        str(request),
    )
    _run(
        openssl,
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(extensions_file),
        "-out",
        str(cert),
    )
    return cert, key
