"""``receiver serve`` over TLS, probed with ``openssl s_client``: the suites the platform uses
negotiate, older protocols and other suites are refused; SIGHUP swaps the certificate without
dropping a connection; signed pushes verify through the real server."""

from __future__ import annotations

import datetime
import http.client
import json
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from huawei_signer import sign
from support import Service, cli, create_app_token, fetch, run, service_env, wait_for

ALLOWED = {
    "rsa": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"],
    "ecdsa": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"],
}
# TLS 1.2 suites a client may offer that the server must refuse: CBC, no forward secrecy, ChaCha20.
REFUSED = {
    "rsa": ["ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384",
            "DHE-RSA-AES128-GCM-SHA256", "AES128-SHA", "ECDHE-RSA-CHACHA20-POLY1305"],
    "ecdsa": ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES128-GCM-SHA256",
              "ECDHE-ECDSA-CHACHA20-POLY1305"],
}  # fmt: skip


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the TLS tests need the openssl command line tool: apt-get install -y openssl")
    return path


def make_cert(folder: Path, kind: str, name: str) -> tuple[Path, Path, int]:
    """A self-signed certificate and its key (``kind``: rsa or ecdsa); returns the paths and the serial."""
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, cert.serial_number


def replace(src: Path, dst: Path) -> None:
    """As a deployment tool would: write beside, then rename over."""
    staging = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, staging)
    staging.replace(dst)


class TLSService(Service):
    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=client_context())


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def handshake(port: int, *args: str) -> tuple[bool, str]:
    """``openssl s_client`` with these options: (negotiated, output)."""
    result = subprocess.run(
        [openssl(), "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,  # a refused handshake is an answer too
    )
    output = result.stdout + result.stderr
    negotiated = result.returncode == 0 and re.search(r"Cipher is (?!\(NONE\))", output) is not None
    if not negotiated:
        # Refused by the server, not by the client: the ClientHello went out.
        assert re.search(r"written [1-9]\d* bytes", output), output
    return negotiated, output


def peer_serial(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, client_context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return tmp_path / "certs"


def tls_service(env: dict[str, str], *args: str, workers: int = 2) -> TLSService:
    service = TLSService(env, workers=workers)
    service.extra_args = list(args)
    return service


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_only_tls12_ecdhe_gcm_and_tls13_negotiate(db_url: str, data_dir: Path, certs: Path, kind: str) -> None:
    openssl()
    cert, key, _ = make_cert(certs, kind, f"receiver-{kind}")
    env = service_env(data_dir, db_url)
    token = create_app_token(env, "tls")["token"]
    service = tls_service(env, "--tls-cert", str(cert), "--tls-key", str(key), workers=1)
    try:
        service.start()
        assert "Listening on https://" in service.log.read_text()
        for suite in ALLOWED[kind]:
            ok, output = handshake(service.port, "-tls1_2", "-cipher", suite)
            assert ok and f"Cipher is {suite}" in output and "TLSv1.2" in output, output
        ok, output = handshake(service.port, "-tls1_3")
        assert ok and "TLSv1.3" in output, output
        for protocol in ("-tls1", "-tls1_1"):
            ok, output = handshake(service.port, protocol, "-cipher", "ALL:@SECLEVEL=0")
            assert not ok, output
        for suite in REFUSED[kind]:
            ok, output = handshake(service.port, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")
            assert not ok, f"{suite} negotiated:\n{output}"
        # And it is HTTPS: a callback over TLS is acknowledged and stored.
        status, _ = service.post_form(f"/callbacks/{token}/status-report", "smsMsgId=tls-1&status=DELIVRD")
        assert status == 200
        assert wait_for(lambda: run(fetch(db_url, "SELECT sms_msg_id FROM status_reports")), timeout=30)
        assert service.terminate() == 0
    finally:
        service.stop()


def test_sighup_swaps_the_certificate_in_every_worker_without_dropping_connections(
    db_url: str, data_dir: Path, certs: Path
) -> None:
    old_cert, old_key, old_serial = make_cert(certs, "rsa", "old")
    new_cert, new_key, new_serial = make_cert(certs, "ecdsa", "new")
    live_cert, live_key = certs / "live.crt", certs / "live.key"
    replace(old_cert, live_cert)
    replace(old_key, live_key)
    env = service_env(data_dir, db_url)
    token = create_app_token(env, "tls")["token"]
    service = tls_service(env, "--tls-cert", str(live_cert), "--tls-key", str(live_key), workers=2)
    try:
        service.start()
        assert peer_serial(service.port) == old_serial
        # Connections opened before the reload, to whichever workers, kept alive.
        before = [service.connection() for _ in range(8)]
        for conn in before:
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() is not None

        replace(new_cert, live_cert)
        replace(new_key, live_key)
        assert service.proc is not None
        service.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: service.log.read_text().count('"tls.reloaded"') == 2, timeout=20), service.log.read_text()
        assert [peer_serial(service.port) for _ in range(20)] == [new_serial] * 20

        for n, conn in enumerate(before):
            conn.request(
                "POST",
                f"/callbacks/{token}/status-report",
                body=f"smsMsgId=kept-{n}&status=DELIVRD",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
            assert isinstance(conn.sock, ssl.SSLSocket)
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None and x509.load_der_x509_certificate(der).serial_number == old_serial
            conn.close()
        # No worker was replaced.
        assert "Child process" not in service.log.read_text()

        # A broken pair (the key does not match) is refused; the certificate in service stays.
        other_cert, _, _ = make_cert(certs, "ecdsa", "other")
        replace(other_cert, live_cert)
        service.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: service.log.read_text().count('"tls.reload_failed"') == 2, timeout=20), service.log.read_text()
        assert [peer_serial(service.port) for _ in range(10)] == [new_serial] * 10
        assert service.terminate() == 0
    finally:
        service.stop()


def test_self_signed_is_made_once_and_reused(db_url: str, data_dir: Path) -> None:
    env = service_env(data_dir, db_url)
    service = tls_service(env, "--tls-self-signed", workers=1)
    try:
        service.start()
        key = data_dir / "tls" / "key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "tls").stat().st_mode) == 0o700
        printed = service.log.read_text()
        assert "TLS: self-signed certificate" in printed
        assert all(u.startswith("https://") for u in re.findall(r"\S+/callbacks/\S+", printed))
        first = peer_serial(service.port)
        ok, output = handshake(service.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert ok, output
        assert service.terminate() == 0
        service.start()
        assert peer_serial(service.port) == first
        assert service.terminate() == 0
    finally:
        service.stop()


def test_unusable_certificate_fails_fast(db_url: str, data_dir: Path, certs: Path) -> None:
    cert, _, _ = make_cert(certs, "rsa", "a")
    _, other_key, _ = make_cert(certs, "rsa", "b")
    env = service_env(data_dir, db_url)
    for args in (["--tls-cert", str(cert), "--tls-key", str(other_key)], ["--tls-cert", str(certs / "missing.pem")],
                 ["--tls-key", str(other_key)]):  # fmt: skip
        result = cli("serve", "--port", "1", *args, env=env, check=False)
        assert result.returncode == 2, result
        assert result.stderr.startswith("TLS: "), result.stderr


def test_signed_pushes_verify_through_the_real_server(db_url: str, data_dir: Path, certs: Path) -> None:
    """Exactly the headers Huawei's signer produced, over TLS, through uvicorn and httptools:
    ``Host``, ``Connection`` and ``Content-Length`` reach the verifier as they were signed."""
    cert, key, _ = make_cert(certs, "ecdsa", "push")
    env = service_env(data_dir, db_url)
    created = json.loads(
        cli("app", "create", "signed", "--push-key", "pushAk:pushSk", "--push-key", "nextAk:nextSk", "--json",
            env=env).stdout
    )  # fmt: skip
    path = "/" + created["status_report_url"].split("/", 3)[3]
    service = tls_service(env, "--tls-cert", str(cert), "--tls-key", str(key), workers=2)

    def send(body: bytes, headers: dict[str, str], platform_headers: bool = True) -> int:
        conn = service.connection()
        try:
            conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if platform_headers:  # unsigned, added by the platform's proxies (docs/protocol.md, Source addresses and TLS)
                for name, value in (("Pooltype", "approxy"), ("TrcModule", "AP"), ("TraceHandle", "DMZ_818405")):
                    conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    host = f"127.0.0.1:{service.port}"
    try:
        service.start()
        for n, (ak, sk) in enumerate([("pushAk", "pushSk"), ("nextAk", "nextSk")]):
            body = f"smsMsgId=real-{n}&status=DELIVRD&total=1&sequence=1".encode()
            headers = sign(ak, sk, host=host, path=path, body=body, content_type="application/x-www-form-urlencoded")
            assert send(body, headers) == 200
        body = b"smsMsgId=real-x&status=DELIVRD"
        headers = sign("pushAk", "wrong", host=host, path=path, body=body, content_type="application/x-www-form-urlencoded")
        assert send(body, headers) == 401
        headers = sign("pushAk", "pushSk", host="proxy.example", path=path, body=body,
                       content_type="application/x-www-form-urlencoded")  # fmt: skip
        headers["Host"] = host  # a proxy rewrote Host: the signature no longer holds
        assert send(body, headers) == 401
        assert service.terminate() == 0
        rows = run(fetch(db_url, "SELECT sms_msg_id FROM status_reports ORDER BY 1"))
        assert [r["sms_msg_id"] for r in rows] == ["real-0", "real-1"]
        rows = run(fetch(db_url, "SELECT error FROM quarantine"))
        assert [r["error"] for r in rows] == ["invalid_signature", "invalid_signature"]
    finally:
        service.stop()

