"""HTTPS ingest: `detector serve --tls-cert FILE --tls-key FILE` (or `tls_cert` / `tls_key` in the
config file, or DETECTOR_TLS_CERT / DETECTOR_TLS_KEY). A throwaway CA and server certificate are
made for each test run with `cryptography`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from detlib import REPO_ROOT, TOKEN, Sink, app_event, det_config, ndjson, running

from detector.config import Config, apply_file, finish, server_ssl_context


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_key: Path     # a key that does not belong to `cert`


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(where: Path) -> Pki:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost (valid for a day)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("detector")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(where / "ca.pem", where / "server.pem", where / "server.key", where / "other.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(key))
    pki.other_key.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d)


def _client_ctx(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


async def _post(url: str, ctx: ssl.SSLContext | None, token: str | None = TOKEN) -> int:
    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
    async with aiohttp.ClientSession(connector=connector) as s, s.post(
            url, data=ndjson([app_event(1, 1)]), headers=headers) as r:
        return r.status


async def test_https_ingest_with_the_ca(tmp_path: Path, sink: Sink, pki: Pki) -> None:
    cfg = det_config(tmp_path, sink.url, tls_cert=str(pki.cert), tls_key=str(pki.key))
    async with running(cfg) as srv:
        https = f"https://127.0.0.1:{srv.port}/v1/events"
        assert await _post(https, _client_ctx(pki)) == 202
        assert await _post(https, _client_ctx(pki), token=None) == 401
        assert await _post(f"https://localhost:{srv.port}/v1/events", _client_ctx(pki)) == 202   # the DNS name
        # plain HTTP to the TLS port: no answer (the server wants a TLS handshake)
        with pytest.raises(aiohttp.ClientError):
            await _post(f"http://127.0.0.1:{srv.port}/v1/events", None)
        # a client that does not trust the CA refuses the server
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _post(https, ssl.create_default_context())
        await sink.wait_for(lambda: len(sink.accepted) == 1)


def test_the_server_context_wants_tls_1_2(pki: Pki) -> None:
    # (a TLS 1.1 client cannot show it: this OpenSSL's clients refuse TLS 1.1 themselves)
    ctx = server_ssl_context(str(pki.cert), str(pki.key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE          # clients prove themselves with the token, not a certificate


def test_config_file_and_environment(tmp_path: Path, pki: Pki) -> None:
    base = {"DETECTOR_TOKEN": TOKEN, "K_SINK": "http://127.0.0.1:9/"}
    conf = tmp_path / "d.yaml"
    conf.write_text(f"tls_cert: {pki.cert}\ntls_key: {pki.key}\noutbox: {tmp_path / 'o.db'}\n")
    cfg = Config()
    apply_file(cfg, str(conf))
    finish(cfg, base)
    assert (cfg.tls_cert, cfg.tls_key) == (str(pki.cert), str(pki.key))
    cfg = finish(Config(outbox=str(tmp_path / "o.db")),
                 {**base, "DETECTOR_TLS_CERT": str(pki.cert), "DETECTOR_TLS_KEY": str(pki.key)})
    assert (cfg.tls_cert, cfg.tls_key) == (str(pki.cert), str(pki.key))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K_", "DETECTOR_"))}
    env.update(extra)
    return env


async def test_detector_serve_over_https_from_the_environment(tmp_path: Path, sink: Sink, pki: Pki) -> None:
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "detector", "serve", "--listen", "127.0.0.1:0", "--sink", sink.url,
        "--outbox", str(tmp_path / "outbox.db"), cwd=REPO_ROOT, stderr=asyncio.subprocess.PIPE,
        env=_env(DETECTOR_TOKEN=TOKEN, DETECTOR_TLS_CERT=str(pki.cert), DETECTOR_TLS_KEY=str(pki.key)))
    assert p.stderr is not None
    try:
        line = (await asyncio.wait_for(p.stderr.readline(), 30)).decode()
        m = re.search(r"listening on [^ ]*:(\d+), https,", line)
        assert m, line
        assert await _post(f"https://127.0.0.1:{m.group(1)}/v1/events", _client_ctx(pki)) == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    finally:
        p.terminate()
        assert await asyncio.wait_for(p.wait(), 20) == 0


@pytest.mark.parametrize(("which", "words"), [
    ("missing-cert", "cannot read TLS certificate {d}/nope.pem: No such file or directory"),
    ("missing-key", "cannot read TLS key {d}/nope.key: No such file or directory"),
    ("cert-only", "TLS needs both a certificate and a key: --tls-cert FILE --tls-key FILE"),
    ("not-a-cert", "TLS certificate {d}/server.key: not a PEM certificate"),
    ("not-a-key", "TLS key {d}/ca.pem: not a PEM private key"),
    ("wrong-key", "cannot use TLS certificate {d}/server.pem with key {d}/other.key: "
                  "the key does not match the certificate"),
])
def test_bad_certificate_or_key_is_one_clear_line(tmp_path: Path, pki: Pki, which: str, words: str) -> None:
    d = pki.cert.parent
    args = {"missing-cert": ["--tls-cert", str(d / "nope.pem"), "--tls-key", str(pki.key)],
            "missing-key": ["--tls-cert", str(pki.cert), "--tls-key", str(d / "nope.key")],
            "cert-only": ["--tls-cert", str(pki.cert)],
            "not-a-cert": ["--tls-cert", str(pki.key), "--tls-key", str(pki.key)],
            "not-a-key": ["--tls-cert", str(pki.cert), "--tls-key", str(pki.ca)],
            "wrong-key": ["--tls-cert", str(pki.cert), "--tls-key", str(pki.other_key)]}[which]
    r = subprocess.run([sys.executable, "-m", "detector", "serve", "--sink", "http://127.0.0.1:9/",
                        "--outbox", str(tmp_path / "o.db"), "--listen", "127.0.0.1:0", *args],
                       cwd=REPO_ROOT, capture_output=True, text=True, env=_env(DETECTOR_TOKEN=TOKEN), timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == "detector: error: " + words.format(d=d), r.stderr
    assert not (tmp_path / "o.db").exists()          # refused before the outbox was touched
