"""The sender over TLS to a real HTTPS server: verified against --detector-ca, host name checked,
and a failed verification counted, warned about and retried (never a crash, never a loss
with a spool).

A throw-away CA and server certificates are made at test time with `cryptography`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_spool import PYTHON, REPO, Receiver, free_port, line, seqs, wait_for

from upf_tap.live.sender import DetectorSender, SenderError
from upf_tap.live.spool import Spool

TOKEN = "tls-token"


@dataclass
class Pki:
    ca: Path            # the CA that signed the server certificates
    other_ca: Path      # a CA that signed nothing here
    server: ssl.SSLContext       # certificate for localhost and 127.0.0.1
    server_dns_only: ssl.SSLContext  # certificate for localhost only


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _server_context(d: Path, name: str, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                    sans: list[x509.GeneralName]) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("detector")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / f"{name}.pem", d / f"{name}.key")
    return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("test detector CA")
    _, other = _ca("some other CA")
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "other-ca.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    both = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return Pki(ca=d / "ca.pem", other_ca=d / "other-ca.pem",
               server=_server_context(d, "server", ca_key, ca, both),
               server_dns_only=_server_context(d, "server-dns", ca_key, ca, [x509.DNSName("localhost")]))


def _sender(url: str, ca: Path | None, warnings: list[str], spool: Spool | None = None) -> DetectorSender:
    return DetectorSender(url, TOKEN, batch_max=20, backoff_initial=0.02, backoff_max=0.05,
                          ca_file=str(ca) if ca else None, spool=spool, warn=warnings.append).start()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verified_against_the_given_ca(pki: Pki, host: str) -> None:
    rx = Receiver(free_port(), ssl_context=pki.server).start()
    warnings: list[str] = []
    s = _sender(f"https://{host}:{rx.port}", pki.ca, warnings)
    try:
        for i in range(50):
            s.put_line(line(i))
        wait_for(lambda: len(rx.lines) == 50, what="delivery over TLS")
        s.close(2.0)
    finally:
        rx.stop()
    assert seqs(rx.lines) == list(range(50))
    assert rx.auth == {f"Bearer {TOKEN}"}
    assert s.stats["tls_errors"] == 0 and s.stats["retries"] == 0 and warnings == []


def test_wrong_ca_is_counted_warned_and_retried_then_a_fixed_start_delivers(pki: Pki, tmp_path: Path) -> None:
    rx = Receiver(free_port(), ssl_context=pki.server).start()
    warnings: list[str] = []
    try:
        s = _sender(f"https://localhost:{rx.port}", pki.other_ca, warnings, Spool(tmp_path / "spool"))
        for i in range(30):
            s.put_line(line(i))
        wait_for(lambda: s.stats["tls_errors"] >= 3, what="repeated TLS failures")
        assert s._thread.is_alive()  # still trying, not crashed
        s.close(0.2)
        assert rx.lines == []
        assert s.stats["sent"] == 0 and s.stats["retries"] >= 3
        assert s.stats["tls_errors"] == s.stats["retries"]  # every failure was the handshake
        tls = [w for w in warnings if "TLS certificate" in w]
        assert len(tls) == 1  # rate-limited
        assert "certificate verify failed" in tls[0] or "unable to get local issuer" in tls[0]
        assert "--detector-ca" in tls[0] and "retrying" in tls[0]
        assert s.counters()["spool.pending_bytes"] > 0  # kept, not lost

        s2 = _sender(f"https://localhost:{rx.port}", pki.ca, [], Spool(tmp_path / "spool"))  # the right CA
        wait_for(lambda: len(rx.lines) == 30, what="delivery once the CA is right")
        s2.close(2.0)
    finally:
        rx.stop()
    assert seqs(rx.lines) == list(range(30))
    assert s2.stats["tls_errors"] == 0


def test_host_name_is_checked(pki: Pki) -> None:
    rx = Receiver(free_port(), ssl_context=pki.server_dns_only).start()  # a certificate for localhost only
    warnings: list[str] = []
    s = _sender(f"https://127.0.0.1:{rx.port}", pki.ca, warnings)
    try:
        s.put_line(line(0))
        wait_for(lambda: s.stats["tls_errors"] >= 1, what="a TLS failure")
        s.close(0.1)
    finally:
        rx.stop()
    assert rx.lines == [] and s.stats["dropped_shutdown"] == 1
    assert any("mismatch" in w and "127.0.0.1" in w for w in warnings), warnings


def test_without_a_ca_file_the_system_store_decides(pki: Pki) -> None:
    rx = Receiver(free_port(), ssl_context=pki.server).start()
    warnings: list[str] = []
    s = _sender(f"https://localhost:{rx.port}", None, warnings)  # our test CA is in no system store
    try:
        s.put_line(line(0))
        wait_for(lambda: s.stats["tls_errors"] >= 1, what="a TLS failure")
        s.close(0.1)
    finally:
        rx.stop()
    assert rx.lines == []
    assert s.ssl_context is not None and s.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert s.ssl_context.check_hostname


def test_unusable_ca_settings_are_refused(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(SenderError, match="for https:// URLs"):
        DetectorSender("http://localhost:1", TOKEN, ca_file=str(pki.ca))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for bad in (junk, tmp_path / "missing.pem"):
        with pytest.raises(SenderError, match="cannot load the detector CA file"):
            DetectorSender("https://localhost:1", TOKEN, ca_file=str(bad))


@pytest.mark.parametrize(("url", "ca", "msg"), [
    ("http://127.0.0.1:1", "CA", "--detector-ca needs an https:// --detector URL"),
    ("https://127.0.0.1:1", "JUNK", "cannot load the detector CA file"),
    (None, "CA", "--detector-ca needs --detector"),
])
def test_bad_ca_options_exit_2_in_one_line(pki: Pki, tmp_path: Path, url: str | None, ca: str, msg: str) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    args = ["--detector-ca", str(pki.ca if ca == "CA" else junk)]
    if url:
        args += ["--detector", url, "--token-file", str(token)]
    res = subprocess.run([PYTHON, "-m", "upf_tap", "live", "--iface", "lo", "--no-control", *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr
