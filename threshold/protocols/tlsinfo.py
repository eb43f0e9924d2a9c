"""The ASGI ``tls`` scope extension, computed once per TLS connection."""

from __future__ import annotations

import ssl
from typing import Any

TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# IANA numbers of the suites OpenSSL negotiates by default (ssl gives only names).
CIPHER_SUITES = {
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
    "DHE-RSA-AES128-GCM-SHA256": 0x009E,
    "DHE-RSA-AES256-GCM-SHA384": 0x009F,
}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket, server_cert: str | None) -> Any:
    """{"tls": {...}} per the ASGI TLS extension."""
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    name = cipher[0] if cipher else ""
    return {
        "tls": {
            "server_cert": server_cert,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": _subject(ssl_object) if der else None,
            "client_cert_error": None,
            "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
            "cipher_suite": CIPHER_SUITES.get(name),
        }
    }


def _subject(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    parts = []
    for rdn in reversed(cert.get("subject", ())):
        for key, value in rdn:
            short = {"commonName": "CN", "organizationName": "O", "countryName": "C"}.get(key, key)
            parts.append(f"{short}={value}")
    return ",".join(parts)
