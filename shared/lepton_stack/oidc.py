"""The local stack's OIDC issuer: what the cluster's service-account issuer is to Knative.

Each `lepton up` makes a new RSA key under `.lepton/oidc/` (the private key readable by its
owner only, the public key as a JWKS file the functions verify with). The router signs every
delivery for its subscriber's audience, as a Knative Broker with `authentication-oidc` does,
and the stack writes a longer-lived token for both functions into `.lepton/stack.json`
(`event_headers`) for a person or a test sending an event by hand.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_FILE = "key.pem"
JWKS_FILE = "jwks.json"
ISSUER_FILE = "issuer.json"
ALGORITHM = "RS256"


@dataclass(frozen=True)
class LocalIssuer:
    """Signs tokens as `issuer` with one RSA key."""

    issuer: str
    key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def create(cls, folder: Path, issuer: str) -> LocalIssuer:
        """A new key (any earlier one is replaced: tokens of a previous stack stop working)."""
        folder.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        made = cls(issuer, key, uuid.uuid4().hex[:16])
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(folder / KEY_FILE, pem.decode())
        (folder / ISSUER_FILE).write_text(json.dumps({"issuer": issuer, "kid": made.kid}))
        _write_atomic(folder / JWKS_FILE, json.dumps(made.jwks(), indent=2))
        return made

    @classmethod
    def load(cls, folder: Path) -> LocalIssuer:
        meta = json.loads((folder / ISSUER_FILE).read_text())
        key = serialization.load_pem_private_key((folder / KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{folder / KEY_FILE} is not an RSA private key")
        return cls(str(meta["issuer"]), key, str(meta["kid"]))

    def jwks(self) -> dict[str, Any]:
        """The public key set, as an issuer's jwks_uri serves it."""
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def token(self, audience: str | Sequence[str], ttl: float = 3600.0, subject: str = "") -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience if isinstance(audience, str) else list(audience),
            "sub": subject or "system:serviceaccount:lepton:lepton-router",
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})


class TokenCache:
    """One token per audience, renewed well before it expires (as Knative's token cache)."""

    def __init__(self, issuer: LocalIssuer, ttl: float = 3600.0) -> None:
        self.issuer = issuer
        self.ttl = ttl
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, str]] = {}

    def __call__(self, audience: str) -> str:
        now = time.monotonic()
        with self._lock:
            expires, token = self._tokens.get(audience, (0.0, ""))
            if now > expires - self.ttl / 4:
                token = self.issuer.token(audience, self.ttl)
                self._tokens[audience] = (now + self.ttl, token)
            return token


def write_private(path: Path, text: str) -> None:
    """A file only its owner may read (a key or a token), replacing any earlier one."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
