"""Event token verification (lepton_runtime.events.auth) with keys made in the test: every way a
token can be wrong is refused, a right one is accepted, from a JWKS file, URL or discovery."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hypothesis
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import strategies as st

from lepton_runtime.errors import (
    AuthUnavailableError,
    ConfigurationError,
    UnauthorizedError,
    is_retryable,
)
from lepton_runtime.events.auth import EventAuthenticator
from lepton_runtime.http.responses import error_response, status_for
from lepton_runtime.settings import Settings

AUDIENCE = "lepton-infer"


def authenticator(oidc, **env: str) -> EventAuthenticator:
    made = EventAuthenticator.from_settings(Settings.from_env({**oidc.env(AUDIENCE), **env}))
    assert made is not None
    return made


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """A token with `alg: none` and no signature (RFC 7519's unsecured JWT)."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "test-key"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def test_a_valid_token_is_accepted_and_its_claims_returned(oidc) -> None:
    claims = authenticator(oidc).verify(bearer(oidc.token(AUDIENCE)))
    assert claims["aud"] == AUDIENCE and claims["iss"] == oidc.issuer


def test_a_token_for_several_audiences_including_ours_is_accepted(oidc) -> None:
    assert authenticator(oidc).verify(bearer(oidc.token([AUDIENCE, "lepton-train"])))


def _wrong_tokens(oidc) -> dict[str, str]:
    now = int(time.time())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = oidc.token(AUDIENCE)
    header, payload, signature = good.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    public_pem = oidc.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "expired": oidc.token(AUDIENCE, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not yet valid": oidc.token(AUDIENCE, nbf=now + 3600),
        "wrong audience": oidc.token("lepton-train"),
        "wrong issuer": oidc.token(AUDIENCE, iss="https://attacker.invalid"),
        "no expiry": oidc.token(AUDIENCE, exp=None),
        "no audience": oidc.token(AUDIENCE, aud=None),
        "unsigned (alg none)": unsigned(oidc.claims(AUDIENCE)),
        "corrupted payload": f"{header}.{flipped}.{signature}",
        "corrupted signature": f"{header}.{payload}.{signature[::-1]}",
        "signed by another key": oidc.token(AUDIENCE, key=other_key),
        # The public key used as an HMAC secret: the classic algorithm-confusion forgery.
        "HS256 with the public key": _hs256(oidc.claims(AUDIENCE), public_pem, oidc.kid),
        "not a JWT": "not-a-token",
        "unknown key id": jwt.encode(
            oidc.claims(AUDIENCE), other_key, algorithm="RS256", headers={"kid": "other"}
        ),
    }


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT itself refuses to sign with a PEM key as an HMAC secret."""
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not yet valid",
        "wrong audience",
        "wrong issuer",
        "no expiry",
        "no audience",
        "unsigned (alg none)",
        "corrupted payload",
        "corrupted signature",
        "signed by another key",
        "HS256 with the public key",
        "not a JWT",
        "unknown key id",
    ],
)
def test_a_wrong_token_is_refused_as_unauthorized(oidc, case: str) -> None:
    token = _wrong_tokens(oidc)[case]
    with pytest.raises(UnauthorizedError) as caught:
        authenticator(oidc).verify(bearer(token))
    assert status_for(caught.value) == 401 and not is_retryable(caught.value)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Basic dTpw"}],
    ids=["none", "empty", "bearer without token", "basic"],
)
def test_a_request_without_a_bearer_token_is_refused(oidc, headers: dict[str, str]) -> None:
    with pytest.raises(UnauthorizedError, match="Bearer"):
        authenticator(oidc).verify(headers)


def test_the_401_answer_says_which_scheme_is_expected() -> None:
    response = error_response(UnauthorizedError("no token"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_an_ecdsa_issuer_is_verified_too(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "ec"}]}))
    settings = Settings.from_env(
        {
            "LEPTON_OIDC_ISSUER": "https://ec.invalid",
            "LEPTON_OIDC_JWKS": str(tmp_path / "jwks.json"),
            "LEPTON_OIDC_AUDIENCE": AUDIENCE,
        }
    )
    verifier = EventAuthenticator.from_settings(settings)
    assert verifier is not None
    now = int(time.time())
    claims = {"iss": "https://ec.invalid", "aud": AUDIENCE, "iat": now, "exp": now + 60}
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "ec"})
    assert verifier.verify(bearer(token))["iss"] == "https://ec.invalid"


def test_a_rotated_key_file_is_read_again(oidc, tmp_path: Path) -> None:
    from oidc_support import TestIssuer

    first = TestIssuer(tmp_path, issuer=oidc.issuer, kid="first")
    env = {"LEPTON_OIDC_JWKS": str(first.jwks_file)}
    verifier = authenticator(oidc, **env)
    assert verifier.verify(bearer(first.token(AUDIENCE)))
    time.sleep(0.01)
    second = TestIssuer(tmp_path, issuer=oidc.issuer, kid="second")  # same file, new key
    assert verifier.verify(bearer(second.token(AUDIENCE)))
    with pytest.raises(UnauthorizedError):
        verifier.verify(bearer(first.token(AUDIENCE)))


# -- configuration -------------------------------------------------------------------------------


def test_verification_is_on_by_default_and_needs_an_issuer() -> None:
    assert Settings.from_env({}).event_auth == "oidc"
    with pytest.raises(ConfigurationError, match="LEPTON_OIDC_ISSUER"):
        EventAuthenticator.from_settings(Settings.from_env({}))


def test_the_audience_defaults_to_the_knative_service_name(oidc) -> None:
    env = {**oidc.env(""), "K_SERVICE": "lepton-train"}
    del env["LEPTON_OIDC_AUDIENCE"]
    verifier = EventAuthenticator.from_settings(Settings.from_env(env))
    assert verifier is not None and verifier.audience == "lepton-train"


def test_turning_verification_off_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lepton.auth"):
        assert (
            EventAuthenticator.from_settings(Settings.from_env({"LEPTON_EVENT_AUTH": "off"}))
            is None
        )
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "OFF" in record.getMessage()


def test_a_missing_key_file_is_a_configuration_error(oidc, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="LEPTON_OIDC_JWKS"):
        authenticator(oidc, LEPTON_OIDC_JWKS=str(tmp_path / "missing.json"))


def test_a_missing_ca_bundle_is_a_configuration_error(oidc, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="LEPTON_OIDC_CA_FILE"):
        authenticator(
            oidc,
            LEPTON_OIDC_JWKS="https://kubernetes.default.svc/openid/v1/jwks",
            LEPTON_OIDC_CA_FILE=str(tmp_path / "ca.crt"),
        )


# -- keys over HTTP: a JWKS URL and OIDC discovery ----------------------------------------------


@pytest.fixture
def key_server(oidc) -> Iterator[dict[str, Any]]:
    """An issuer's endpoints on loopback: discovery and JWKS, recording the requests."""
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path == "/.well-known/openid-configuration":
                body = json.dumps({"issuer": base, "jwks_uri": base + "/keys"}).encode()
            elif self.path == "/keys":
                body = oidc.jwks_file.read_bytes()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "seen": seen}
    finally:
        server.shutdown()
        server.server_close()


def test_keys_from_a_jwks_url_with_the_bearer_of_a_file(oidc, key_server, tmp_path) -> None:
    (tmp_path / "sa-token").write_text("service-account-token\n")
    verifier = authenticator(
        oidc,
        LEPTON_OIDC_JWKS=key_server["url"] + "/keys",
        LEPTON_OIDC_JWKS_BEARER_FILE=str(tmp_path / "sa-token"),
    )
    assert verifier.verify(bearer(oidc.token(AUDIENCE)))
    assert key_server["seen"] == [("/keys", "Bearer service-account-token")]


def test_keys_found_by_oidc_discovery_from_the_issuer(oidc, key_server) -> None:
    issuer = key_server["url"]
    env = {**oidc.env(AUDIENCE), "LEPTON_OIDC_ISSUER": issuer, "LEPTON_OIDC_JWKS": ""}
    verifier = EventAuthenticator.from_settings(Settings.from_env(env))
    assert verifier is not None
    assert verifier.verify(bearer(oidc.token(AUDIENCE, iss=issuer)))
    assert [path for path, _ in key_server["seen"]] == [
        "/.well-known/openid-configuration",
        "/keys",
    ]


def test_unreachable_keys_are_a_transient_fault_not_a_refusal(oidc) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = authenticator(oidc, LEPTON_OIDC_JWKS=f"http://127.0.0.1:{port}/keys")
    with pytest.raises(AuthUnavailableError) as caught:
        verifier.verify(bearer(oidc.token(AUDIENCE)))
    assert is_retryable(caught.value) and status_for(caught.value) == 503


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    header=st.one_of(
        st.text(max_size=300),
        st.builds(lambda t: f"Bearer {t}", st.text(max_size=300)),
        st.builds(
            lambda parts: "Bearer " + ".".join(parts),
            st.lists(st.text("ABCDEFabcdef0123456789-_=", max_size=60), min_size=1, max_size=4),
        ),
    )
)
def test_any_authorization_header_is_refused_as_unauthorized_and_nothing_else(
    oidc, header: str
) -> None:
    if id(oidc) not in _VERIFIERS:
        _VERIFIERS[id(oidc)] = authenticator(oidc)
    verifier = _VERIFIERS[id(oidc)]
    with pytest.raises(UnauthorizedError):
        verifier.verify({"Authorization": header})


_VERIFIERS: dict[int, EventAuthenticator] = {}
