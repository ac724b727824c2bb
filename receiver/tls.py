"""TLS for ``receiver serve``: TLS 1.2 and 1.3 only, and for TLS 1.2 only the four ECDHE AES-GCM
suites the Huawei platform offers (docs/protocol.md, Source addresses and TLS), so that RSA and ECDSA certificates both work.

Every worker builds its own context (:func:`context_factory`, called by uvicorn in the worker) and
reloads the certificate and key into that same context on SIGHUP: new handshakes get the new
certificate, open connections keep theirs, nothing restarts. A pair that does not load (a file
half-written, a key that does not match) is refused and the old one stays in service.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("receiver.tls")

# TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
# TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 in OpenSSL's names.
# TLS 1.3 suites are not set by this list: they stay OpenSSL's defaults (all AEAD).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
)


class TLSConfigError(Exception):
    """The certificate or key cannot be used."""


def server_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A server context with our protocol and suite policy and this certificate chain and key
    (``keyfile`` may be left out when the certificate file holds the key too)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(":".join(TLS12_CIPHERS))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    _load(context, certfile, keyfile)
    return context


def _load(context: ssl.SSLContext, certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None) -> None:
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as error:
        raise TLSConfigError(f"{error.filename}: no such file") from None
    except (OSError, ssl.SSLError) as error:
        raise TLSConfigError(f"cannot use certificate {certfile} with key {keyfile or certfile}: {error}") from None


class Reloader:
    """Loads the certificate and key again into a live context."""

    def __init__(
        self, context: ssl.SSLContext, certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None
    ) -> None:
        self.context, self.certfile, self.keyfile = context, certfile, keyfile

    def reload(self) -> bool:
        """True when the live context now has the files' pair. The pair is read once and tried on a
        scratch context first: loading a bad pair into the live one could leave it with a
        certificate and no matching key."""
        try:
            cert = Path(self.certfile).read_bytes()
            key = Path(self.keyfile).read_bytes() if self.keyfile else None
            with _PrivateCopies(cert, key) as (cert_path, key_path):
                server_context(cert_path, key_path)
                _load(self.context, cert_path, key_path)
        except (OSError, TLSConfigError) as error:
            log.error("tls.reload_failed", certfile=str(self.certfile), error=str(error))
            return False
        log.info("tls.reloaded", certfile=str(self.certfile), pid=os.getpid())
        return True


class _PrivateCopies:
    """The bytes of a certificate and key as paths for ``load_cert_chain`` (which reads files):
    anonymous memory files on Linux, else files in a private temporary folder, removed after."""

    def __init__(self, cert: bytes, key: bytes | None) -> None:
        self._cert, self._key = cert, key
        self._fds: list[int] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> tuple[str, str | None]:
        cert_path = self._path("cert.pem", self._cert)
        key_path = self._path("key.pem", self._key) if self._key is not None else None
        return cert_path, key_path

    def _path(self, name: str, data: bytes) -> str:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            self._fds.append(fd)
            os.write(fd, data)
            return f"/proc/self/fd/{fd}"
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="receiver-tls-")  # mode 0700
        path = os.path.join(self._dir.name, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        return path

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds:
            os.close(fd)
        if self._dir is not None:
            self._dir.cleanup()


def context_factory(config: Any, default_factory: object) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory``: called in each worker process as it starts, inside its
    event loop. Builds the context and makes SIGHUP reload the certificate into it."""
    context = server_context(config.ssl_certfile, config.ssl_keyfile)
    reloader = Reloader(context, config.ssl_certfile, config.ssl_keyfile)
    try:
        # Run as a loop callback, never inside a signal handler (logging there could re-enter I/O).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.reload)
    except RuntimeError:  # no running loop: not started by uvicorn's server
        pass
    return context


# --- a self-signed certificate, for trying TLS out ---------------------------------------------


def self_signed(folder: Path, hosts: Iterable[str] = ()) -> tuple[Path, Path]:
    """``folder/cert.pem`` and ``folder/key.pem`` (mode 0600): made once (ECDSA P-256, valid for
    localhost, 127.0.0.1, ::1 and ``hosts``), then reused until they are about to expire."""
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if _still_valid(cert_path) and key_path.exists():
        return cert_path, key_path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        host = host.strip("[]")
        if not host or host in {"0.0.0.0", "::"}:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver (self-signed)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate, ``AB:CD:...``, to compare with what a client sees."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _still_valid(cert_path: Path) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    return cert.not_valid_after_utc > soon


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        os.fchmod(fd, mode)
        f.write(data)
        f.flush()
        os.fsync(fd)
    staging.replace(path)
