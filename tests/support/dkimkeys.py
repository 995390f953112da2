"""DKIM keys and signatures made at test time (dkimpy signs; keys from cryptography, PyNaCl, openssl)."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class Key:
    private: bytes  # what dkimpy's sign() takes
    record: str  # the TXT record at SELECTOR._domainkey.DOMAIN
    algorithm: bytes


def rsa_key(bits: int) -> Key:
    if bits < 1024:  # cryptography refuses to make short keys: openssl still does
        pem = subprocess.run(
            ["openssl", "genrsa", "-traditional", str(bits)], capture_output=True, check=True
        ).stdout
        priv = serialization.load_pem_private_key(pem, password=None)
    else:
        priv = rsa.generate_private_key(65537, bits)
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    der = priv.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}", b"rsa-sha256")


def ed25519_key() -> Key:
    sk = nacl.signing.SigningKey.generate()
    return Key(
        base64.b64encode(bytes(sk)),
        f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(sk.verify_key)).decode()}",
        b"ed25519-sha256",
    )


def sign(message: bytes, key: Key, domain: str, selector: str = "sel") -> bytes:
    sig = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private,
        signature_algorithm=key.algorithm,
        include_headers=[b"from", b"to", b"subject", b"date"],
    )
    return sig + message


def mail(
    from_: str = "担当 <taro@partner.example>",
    *,
    subject: str = "test",
    extra: str = "",
    body: str = "hello\r\n",
    to: str = "soumu@city.example.lg.jp",
) -> bytes:
    head = f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 7 Dec 2026 10:00:00 +0900\r\n"
    head += (
        "Message-ID: <t1@partner.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    )
    return (extra + head + "\r\n" + body).encode("utf-8")
