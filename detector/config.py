"""Detector configuration: defaults, a YAML file, the environment and the command line.

Precedence: command line > config file > environment (K_SINK, DETECTOR_TOKEN, DETECTOR_TLS_CERT, ...)
> defaults.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mec_common.net import parse_host_port

if TYPE_CHECKING:
    from detector.mobility import MobilityConfig

DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_STATE_DIR = "/var/lib/detector"
EXT_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# attribute names an extension may not take (CloudEvents 1.0 context attributes and `data`)
RESERVED_ATTRS = frozenset(
    {"id", "source", "type", "specversion", "time", "subject", "datacontenttype", "dataschema", "data",
     "data_base64"}
)
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """Bad configuration: the message is one clear line for the operator."""


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string like "250ms", "2s", "5m", "1h"."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{where}: duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ConfigError(f"{where}: expected a duration such as 2s or 250ms, got {value!r}")


@dataclass
class Config:
    listen: str = DEFAULT_LISTEN
    sink: str | None = None
    outbox: str | None = None
    rules: str | None = None
    detector_id: str = ""
    token: str | None = field(default=None, repr=False)
    insecure_no_token: bool = False
    structured: bool = False
    ingest_time: bool = False         # add `mecingesttime` (when the detector took the event): latency studies
    overrides: dict[str, Any] = field(default_factory=dict)  # extensions from K_CE_OVERRIDES
    max_body_bytes: int = 4 * 1024 * 1024
    concurrency: int = 64             # concurrent POSTs to the sink (UEs in parallel)
    request_timeout: float = 10.0
    backoff_base: float = 0.2         # first retry delay, doubled each attempt (Knative's PT0.2S)
    backoff_cap: float = 30.0
    retry_after_cap: float = 300.0
    max_attempts: int = 0             # 0: retry until delivered (pending survives restarts)
    dedupe_window: int = 100_000      # AppEvent ids remembered to skip re-sent batches (0: off)
    max_pending: int = 200_000        # above this, ingest answers 503 (backpressure)
    durability: str = "full"          # SQLite synchronous: full (fsync per commit) or normal
    drain_timeout: float = 10.0
    ack_interval: float = 0.02        # how often delivered rows are deleted from the outbox
    sweep_interval: float = 1.0       # source expiry check
    tls_cert: str | None = None       # PEM certificate chain: with tls_key, ingest is served over HTTPS
    tls_key: str | None = None        # PEM private key (unencrypted) of tls_cert
    mobility: MobilityConfig | None = None   # two MEC sites (detector/mobility.py); None: one sink, as ever
    mobility_spec: Any = field(default=None, repr=False)   # the `mobility:` section as read, parsed by finish


_INT_KEYS = {"max_body_bytes", "concurrency", "max_attempts", "dedupe_window", "max_pending"}
_DURATION_KEYS = {"request_timeout", "backoff_base", "backoff_cap", "retry_after_cap", "drain_timeout",
                  "ack_interval", "sweep_interval"}
_STR_KEYS = {"listen", "sink", "outbox", "rules", "detector_id", "durability", "tls_cert", "tls_key"}


def apply_file(cfg: Config, path: str) -> None:
    """Merge a YAML config file (keys as in Config, plus `token_file`)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: bad YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    known = {f.name for f in fields(Config)} - {"token", "overrides", "insecure_no_token", "mobility_spec"}
    for key, value in data.items():
        where = f"config {path}: {key}"
        if key == "token_file":
            cfg.token = read_token_file(str(value))
        elif key == "mobility":
            cfg.mobility_spec = value   # parsed with the environment's DETECTOR_SITE / DETECTOR_PEERS
        elif key in ("structured", "ingest_time"):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false")
            setattr(cfg, key, value)
        elif key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: expected a non-negative integer")
            setattr(cfg, key, value)
        elif key in _DURATION_KEYS:
            setattr(cfg, key, parse_duration(value, where))
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string")
            setattr(cfg, key, value)
        elif key not in known:
            raise ConfigError(f"{where}: unknown setting")


def read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def parse_overrides(text: str) -> dict[str, Any]:
    """K_CE_OVERRIDES, Knative's {"extensions": {...}} -> the extension attributes to set."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"K_CE_OVERRIDES is not JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError("K_CE_OVERRIDES must be a JSON object like {\"extensions\": {...}}")
    ext = data.get("extensions", {})
    if not isinstance(ext, dict):
        raise ConfigError("K_CE_OVERRIDES: extensions must be an object")
    out: dict[str, Any] = {}
    for k, v in ext.items():
        if not EXT_NAME.match(k) or k in RESERVED_ATTRS:
            raise ConfigError(f"K_CE_OVERRIDES: {k!r} is not a valid extension name (lower-case letters, digits)")
        if isinstance(v, bool | int | str):
            out[k] = v
        elif isinstance(v, float) and v.is_integer():
            out[k] = int(v)
        else:
            raise ConfigError(f"K_CE_OVERRIDES: extension {k!r} must be a string, integer or boolean")
    return out


def parse_listen(listen: str) -> tuple[str, int]:
    try:
        return parse_host_port(listen, default_host="0.0.0.0")
    except ValueError:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT") from None


def default_outbox(env: dict[str, str]) -> str:
    return str(Path(env.get("DETECTOR_STATE_DIR") or DEFAULT_STATE_DIR) / "outbox.db")


def check_writable_dir(path: str) -> None:
    """The outbox's folder exists (created if possible) and is writable, else a clear error."""
    d = Path(path).resolve().parent
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"outbox folder {d} cannot be created ({e.strerror}): set --outbox or DETECTOR_STATE_DIR") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"outbox folder {d} is not writable: set --outbox or DETECTOR_STATE_DIR")


def _read_pem(what: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read TLS {what} {path}: {e.strerror}") from None


def _check_pem(cert: str, key: str) -> None:
    """Parse both files first, so a bad one is named with the reason (OpenSSL only says "PEM lib")."""
    # imported here, not at start: only a TLS start pays for it
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert_pem, key_pem = _read_pem("certificate", cert), _read_pem("key", key)
    try:
        x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"TLS certificate {cert}: not a PEM certificate") from None
    try:
        load_pem_private_key(key_pem, password=None)
    except TypeError:   # cryptography's answer for an encrypted key without a password
        raise ConfigError(f"TLS key {key}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"TLS key {key}: not a PEM private key") from None


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """The HTTPS listener's context: TLS 1.2 at least, the platform's secure defaults; ConfigError
    (one line naming the file) if the certificate or key cannot be used."""
    _check_pem(cert, key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        reason = "the key does not match the certificate" if e.reason == "KEY_VALUES_MISMATCH" else str(e)
        raise ConfigError(f"cannot use TLS certificate {cert} with key {key}: {reason}") from None
    return ctx


def _finish_tls(cfg: Config, env: dict[str, str]) -> None:
    cfg.tls_cert = cfg.tls_cert or env.get("DETECTOR_TLS_CERT") or None
    cfg.tls_key = cfg.tls_key or env.get("DETECTOR_TLS_KEY") or None
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("TLS needs both a certificate and a key: --tls-cert FILE --tls-key FILE")
    if cfg.tls_cert and cfg.tls_key:
        server_ssl_context(cfg.tls_cert, cfg.tls_key)   # fail at start, not at the first connection


def _finish_mobility(cfg: Config, env: dict[str, str]) -> None:
    """The `mobility` section: from the config file, else $DETECTOR_MOBILITY (YAML or JSON text);
    $DETECTOR_SITE and $DETECTOR_PEERS (comma- or space-separated URLs) fill `site` and `peers`
    when the section leaves them out. No section and no variable: one sink, as without mobility."""
    from detector.mobility import parse_mobility

    spec = cfg.mobility_spec
    where = "config: mobility"
    if spec is None and env.get("DETECTOR_MOBILITY"):
        where = "DETECTOR_MOBILITY"
        try:
            spec = yaml.safe_load(env["DETECTOR_MOBILITY"])
        except yaml.YAMLError as e:
            raise ConfigError(f"DETECTOR_MOBILITY: bad YAML: {str(e).splitlines()[0]}") from None
    if spec is None:
        if env.get("DETECTOR_SITE") or env.get("DETECTOR_PEERS"):
            raise ConfigError("DETECTOR_SITE / DETECTOR_PEERS need a mobility section "
                              "(`mobility:` in the config file or $DETECTOR_MOBILITY)")
        return
    if isinstance(spec, dict):
        spec = dict(spec)
        if "site" not in spec and env.get("DETECTOR_SITE"):
            spec["site"] = env["DETECTOR_SITE"]
        if "peers" not in spec and env.get("DETECTOR_PEERS"):
            spec["peers"] = env["DETECTOR_PEERS"]
    cfg.mobility = parse_mobility(spec, where)


def finish(cfg: Config, env: dict[str, str]) -> Config:
    """Fill what the environment gives and check the whole; raises ConfigError."""
    if cfg.mobility is None:
        _finish_mobility(cfg, env)
    if not cfg.sink:
        cfg.sink = env.get("K_SINK") or None
    if not cfg.sink and cfg.mobility is not None:
        cfg.sink = cfg.mobility.sites[cfg.mobility.site].sink   # the own site's broker is the default sink
    if not cfg.sink:
        raise ConfigError("no sink: set K_SINK or pass --sink URL (or `sink:` in the config file)")
    if not cfg.sink.startswith(("http://", "https://")):
        raise ConfigError(f"sink {cfg.sink!r} must be an http:// or https:// URL")
    if cfg.token is None and env.get("DETECTOR_TOKEN"):
        cfg.token = env["DETECTOR_TOKEN"].strip() or None
    if cfg.token is None and not cfg.insecure_no_token:
        raise ConfigError(
            "no ingest token: set DETECTOR_TOKEN or --token-file F (or pass --insecure-no-token explicitly)")
    if env.get("K_CE_OVERRIDES"):
        cfg.overrides = {**parse_overrides(env["K_CE_OVERRIDES"]), **cfg.overrides}
    if not cfg.detector_id:
        cfg.detector_id = env.get("DETECTOR_ID") or env.get("POD_NAME") or socket.gethostname() or "detector"
    if not cfg.outbox:
        cfg.outbox = default_outbox(env)
    if cfg.durability not in ("full", "normal"):
        raise ConfigError(f"durability {cfg.durability!r}: expected full or normal")
    if cfg.concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    parse_listen(cfg.listen)
    _finish_tls(cfg, env)
    check_writable_dir(cfg.outbox)
    return cfg
