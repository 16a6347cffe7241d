"""Event ingress authentication, as Knative Eventing does it with OIDC (sender identity), and
the token this project's own senders (the event-source adapter, training Jobs) present.

With the `authentication-oidc` feature on, a Broker sends every delivery with
`Authorization: Bearer <JWT>`: a token of the cluster's service-account issuer whose audience is
the subscriber (a Trigger's `spec.subscriber.audience`). Both functions verify it before they
read anything an event names; a request without a valid token is answered 401 and nothing is
read. Verification is PyJWT's: signature against the issuer's published keys (a JWKS URL, a
JWKS file, or OIDC discovery from the issuer), `iss`, `aud`, `exp`, `nbf` and `iat`, with only
asymmetric algorithms accepted (never `none`, never a shared secret).

`LEPTON_EVENT_AUTH=off` turns it off for clusters without OIDC; that is logged as an error at
start-up, since anyone who reaches the function can then make it read the bucket.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lepton_runtime.errors import AuthUnavailableError, ConfigurationError, UnauthorizedError
from lepton_runtime.settings import Settings

if TYPE_CHECKING:
    # PyJWT is imported where a token or key set is read (~60 ms): a function with event
    # authentication off, or not yet sent an event, answers its first request without it.
    import jwt

log = logging.getLogger("lepton.auth")

# Service-account issuers sign with RSA or ECDSA; HMAC (a shared secret) and `none` are never
# accepted, so a token cannot be forged from the public keys.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud")
_DISCOVERY_PATH = "/.well-known/openid-configuration"
_FETCH_TIMEOUT = 5.0


class KeySource(Protocol):
    def key_for(self, token: str) -> Any: ...


class EventAuthenticator:
    """Verifies the bearer token of an inbound event for one audience and issuer."""

    def __init__(
        self, issuer: str, audience: str, keys: KeySource, leeway_seconds: float = 10.0
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.leeway = leeway_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> EventAuthenticator | None:
        """The authenticator the settings describe; None (logged as an error) when off."""
        if settings.event_auth == "off":
            log.error(
                "event authentication is OFF (LEPTON_EVENT_AUTH=off): anyone who reaches this "
                "function can make it read and write the buckets; turn on Knative's OIDC and "
                "unset it"
            )
            return None
        if not settings.oidc_issuer or not settings.oidc_audience:
            raise ConfigurationError(
                "events are authenticated (LEPTON_EVENT_AUTH=oidc) but LEPTON_OIDC_ISSUER or "
                "the audience (LEPTON_OIDC_AUDIENCE, else K_SERVICE) is not set; see "
                "knative/README.md, or set LEPTON_EVENT_AUTH=off on a cluster without OIDC"
            )
        return cls(
            settings.oidc_issuer,
            settings.oidc_audience,
            key_source(settings),
            settings.oidc_leeway_seconds,
        )

    def verify(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """The token's claims; UnauthorizedError when there is no valid token for us."""
        scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError(
                "events must carry `Authorization: Bearer <token>` (Knative OIDC); none was sent"
            )
        token = token.strip()
        import jwt

        try:
            key = self.keys.key_for(token)
            return jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailableError(f"cannot fetch the issuer's keys: {exc}") from exc
        except (jwt.PyJWTError, jwt.PyJWKError) as exc:
            raise UnauthorizedError(f"the event's bearer token is not valid here: {exc}") from exc


def key_source(settings: Settings) -> KeySource:
    """A JWKS file, a JWKS URL, or discovery from the issuer, as configured."""
    where = settings.oidc_jwks
    ca_file = settings.oidc_ca_file or None
    if ca_file is not None and not os.access(ca_file, os.R_OK):
        raise ConfigurationError(f"LEPTON_OIDC_CA_FILE={ca_file}: not a readable file")
    bearer = Path(settings.oidc_jwks_bearer_file) if settings.oidc_jwks_bearer_file else None
    if where.startswith(("http://", "https://")):
        return UrlKeys(where, ca_file, bearer)
    if where:
        return FileKeys(Path(where))
    return DiscoveredKeys(settings.oidc_issuer, ca_file, bearer)


@functools.cache
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The TLS context the issuer's keys are fetched with, made at the first fetch (loading a
    CA bundle takes ~65 ms, not to be spent before a function's first answer)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"LEPTON_OIDC_CA_FILE={ca_file}: {exc}") from exc


class FileKeys:
    """A JWKS file (the local stack's issuer writes one), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._load()  # a missing or invalid file is a configuration error, found at start-up

    def _load(self) -> jwt.PyJWKSet:
        import jwt

        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._keys is None or stamp != self._stamp:
                self._keys = jwt.PyJWKSet.from_json(self.path.read_text())
                self._stamp = stamp
        except (OSError, jwt.PyJWKSetError, ValueError) as exc:
            raise ConfigurationError(f"LEPTON_OIDC_JWKS={self.path}: {exc}") from exc
        return self._keys

    def key_for(self, token: str) -> Any:
        import jwt

        with self._lock:
            keys = self._load()
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None and len(keys.keys) == 1:
            return keys.keys[0]
        try:
            return keys[str(kid)]
        except KeyError:
            raise jwt.PyJWKError(f"no key {kid!r} in the issuer's key set") from None


@functools.cache
def _client_class() -> type[jwt.PyJWKClient]:
    """PyJWKClient whose fetch carries the current bearer (service-account tokens rotate);
    made on first use, as PyJWT is imported then."""
    import jwt

    class Client(jwt.PyJWKClient):
        def __init__(self, uri: str, ca_file: str | None, bearer: Path | None) -> None:
            super().__init__(
                uri, headers={}, timeout=_FETCH_TIMEOUT, ssl_context=tls_context(ca_file)
            )
            self.bearer = bearer

        def fetch_data(self) -> Any:
            if self.bearer is not None:
                self.headers["Authorization"] = f"Bearer {_read_bearer(self.bearer)}"
            return super().fetch_data()

    return Client


class UrlKeys:
    """A JWKS URL, fetched with PyJWKClient (cached, refetched for an unknown key id) from the
    first token on."""

    def __init__(self, url: str, ca_file: str | None, bearer: Path | None) -> None:
        self.url = url
        self.ca_file = ca_file
        self.bearer = bearer
        self._lock = threading.Lock()
        self._client: jwt.PyJWKClient | None = None

    @property
    def client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                self._client = _client_class()(self.url, self.ca_file, self.bearer)
            return self._client

    def key_for(self, token: str) -> Any:
        return self.client.get_signing_key_from_jwt(token)


class DiscoveredKeys:
    """The issuer's OIDC discovery document names its JWKS URL; looked up at first use."""

    def __init__(self, issuer: str, ca_file: str | None, bearer: Path | None) -> None:
        self.issuer = issuer.rstrip("/")
        self.ca_file = ca_file
        self.bearer = bearer
        self._lock = threading.Lock()
        self._keys: UrlKeys | None = None

    def key_for(self, token: str) -> Any:
        with self._lock:
            if self._keys is None:
                self._keys = UrlKeys(self._jwks_uri(), self.ca_file, self.bearer)
        return self._keys.key_for(token)

    def _jwks_uri(self) -> str:
        request = urllib.request.Request(self.issuer + _DISCOVERY_PATH)
        if self.bearer is not None:
            request.add_header("Authorization", f"Bearer {_read_bearer(self.bearer)}")
        try:
            with urllib.request.urlopen(
                request, timeout=_FETCH_TIMEOUT, context=tls_context(self.ca_file)
            ) as response:
                document = json.loads(response.read(1024 * 1024))
            return str(document["jwks_uri"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            import jwt

            raise jwt.PyJWKClientConnectionError(
                f"OIDC discovery at {self.issuer}{_DISCOVERY_PATH} failed: {exc}"
            ) from exc


def _read_bearer(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        import jwt

        raise jwt.PyJWKClientConnectionError(f"cannot read {path}: {exc}") from exc


def sink_authorization(token_file: Path | None) -> dict[str, str]:
    """The header a POST to K_SINK carries: the OIDC token Knative mounts for the sink's
    audience (read at every call, as Knative refreshes the file), or none without the file."""
    if token_file is None:
        return {}
    try:
        token = token_file.read_text().strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}
