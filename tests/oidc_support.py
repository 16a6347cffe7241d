"""An OIDC issuer made in the tests: an RSA key, its JWKS file, and tokens signed with it.

Independent of lepton_stack.oidc (the stack's own issuer), so the verification is tested
against keys and tokens the code under test did not make.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://issuer.tests.invalid"


class TestIssuer:
    """Signs tokens as ISSUER; its public key set is a JWKS file."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, folder: Path, issuer: str = ISSUER, kid: str = "test-key") -> None:
        self.issuer = issuer
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_file = folder / "jwks.json"
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks_file.write_text(json.dumps({"keys": [{**public, "kid": kid, "alg": "RS256"}]}))

    def env(self, audience: str) -> dict[str, str]:
        """The settings a function verifying this issuer's tokens for `audience` gets."""
        return {
            "LEPTON_EVENT_AUTH": "oidc",
            "LEPTON_OIDC_ISSUER": self.issuer,
            "LEPTON_OIDC_JWKS": str(self.jwks_file),
            "LEPTON_OIDC_AUDIENCE": audience,
        }

    def claims(self, audience: str | list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": "system:serviceaccount:default:broker",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, audience: str | list[str], key: Any = None, **overrides: Any) -> str:
        return jwt.encode(
            self.claims(audience, **overrides),
            key or self.key,
            algorithm="RS256",
            headers={"kid": self.kid},
        )

    def headers(self, audience: str | list[str], **overrides: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(audience, **overrides)}"}
