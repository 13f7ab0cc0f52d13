"""What the dashboard's security panel and ``GET /api/security`` show."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from conveyor.broker.core import BrokerCore


def certificate(path: Path) -> dict[str, Any]:
    """Subject, issuer and validity of the broker's certificate (no key material)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return {"error": f"cannot read {path}: {exc}"}
    not_after = cert.not_valid_after_utc
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        pass
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - dt.datetime.now(dt.UTC)).days,
        "names": names,
    }


def security(core: BrokerCore, cert_file: Path, http_tls: bool) -> dict[str, Any]:
    config = core.config
    metrics = core.metrics
    return {
        "tls": True,  # the broker port speaks nothing else
        "protocols": ["TLSv1.2", "TLSv1.3"],
        "minimum_protocol": "TLSv1.2",
        "certificate": certificate(cert_file),
        "mutual_tls": config.client_ca_file is not None,
        "auth": "bearer tokens with roles (producer, worker, admin), checked on every frame "
        "and every HTTP request",
        "http_tls": http_tls,
        "limits": {
            **config.limits.announced(),
            "max_connections": config.limits.max_connections,
            "max_connections_per_ip": config.limits.max_connections_per_ip,
            "handshake_timeout": config.limits.handshake_timeout,
            "idle_timeout": config.limits.idle_timeout,
            "submits_per_second": config.limits.submits_per_second,
            "max_queued": config.limits.max_queued,
        },
        "rejected_plaintext": metrics.get("rejected_plaintext", 0),
        "tls_failures": metrics.get("tls_failures", 0),
        "auth_failures": metrics.get("auth_failures", 0) + metrics.get("http_auth_failures", 0),
        "forbidden": metrics.get("forbidden", 0),
        "logins": core.logins.snapshot(),
    }
