"""A GET-only S3 client for the cold start: botocore's parts without a botocore client.

Making boto3's S3 client costs a start ~0.15 s of CPU beyond importing botocore (s3transfer and
boto3's layer, the 400 service folders listed, the S3 model, the endpoint rules and
endpoints.json parsed), and that client is only needed to read three objects before the first
prediction (inference/prefetch.py). `SignedGets` reads them with what the client would use
underneath: botocore's session resolves the credentials (the whole chain), region, CA bundle and
the configured endpoint (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / ~/.aws/config), botocore's
S3SigV4Auth signs, botocore's URLLib3Session sends. What is written here is the URL, path style
(`<endpoint>/<bucket>/<key>`), and turning an error status into botocore's ClientError, so that
`Storage` over it bounds reads and types errors exactly as over the real client.

Only for a configured endpoint that is not AWS with path addressing (MinIO, the local stack: what
`make_s3_client` picks there too). On AWS the addressing and the endpoint come from botocore's
endpoint rules, which are the cost avoided here: `from_settings` returns None and the caller uses
the real client. No retries: a failed read only means the prefetch did not happen (the registry
then reads through the real client, which retries).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from lepton_runtime.settings import Settings
from lepton_runtime.storage import is_aws_endpoint

# An error answer's body is read up to this many bytes, for its <Code>.
_MAX_ERROR_BYTES = 64 * 1024


class _Meta:
    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url


class SignedGets:
    """`get_object(Bucket=, Key=)` as boto3's S3 client answers it (Body, ContentLength, ETag,
    ContentType, VersionId, LastModified); errors raised as botocore's ClientError."""

    def __init__(
        self, endpoint_url: str, region: str, credentials: Any, http: Any, user_agent: str
    ) -> None:
        self.meta = _Meta(endpoint_url.rstrip("/"))
        self._region = region
        self._credentials = credentials
        self._http = http
        self._user_agent = user_agent

    @classmethod
    def from_settings(cls, settings: Settings) -> SignedGets | None:
        """The reader for the configured endpoint; None when the real client is needed (no
        endpoint configured, an AWS endpoint, virtual-host addressing asked for, or no
        credentials found)."""
        if settings.s3.addressing_style not in ("auto", "path"):
            return None
        import botocore
        from botocore.configprovider import ConfiguredEndpointProvider
        from botocore.httpsession import URLLib3Session
        from botocore.session import Session
        from botocore.utils import get_environ_proxies

        session = Session()
        if session.get_config_variable("ignore_configured_endpoint_urls"):
            return None
        endpoint = ConfiguredEndpointProvider(
            full_config=session.full_config,
            scoped_config=session.get_scoped_config(),
            client_name="s3",
        ).provide()
        if not endpoint or is_aws_endpoint(endpoint):
            return None
        credentials = session.get_credentials()
        if credentials is None:
            return None
        http = URLLib3Session(
            # AWS_CA_BUNDLE / ca_bundle, else certifi's. (A client would also take
            # REQUESTS_CA_BUNDLE; a reader failing on that only means no prefetch.)
            verify=session.get_config_variable("ca_bundle") or True,
            proxies=get_environ_proxies(endpoint),
            timeout=(settings.s3.connect_timeout, settings.s3.read_timeout),
            max_pool_connections=2,
        )
        # The signing region of a custom endpoint: the configured one, else S3's default.
        region = session.get_config_variable("region") or "us-east-1"
        agent = f"lepton-functions botocore/{botocore.__version__}"
        return cls(endpoint, region, credentials, http, agent)

    def get_object(self, *, Bucket: str, Key: str, **extra: Any) -> dict[str, Any]:
        """One signed GET of the whole object; the body is streamed (read it, then close it)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import ClientError

        if extra:
            raise TypeError(f"SignedGets reads whole objects only, not {sorted(extra)}")
        request = AWSRequest(
            "GET",
            f"{self.meta.endpoint_url}/{Bucket}/{quote(Key, safe='/~')}",
            headers={"User-Agent": self._user_agent},
        )
        frozen = self._credentials.get_frozen_credentials()  # refreshed if they expire
        S3SigV4Auth(frozen, "s3", self._region).add_auth(request)
        prepared = request.prepare()
        prepared.stream_output = True
        response = self._http.send(prepared)
        headers = response.headers
        if response.status_code >= 300:
            raw = response.raw
            try:
                body = raw.read(_MAX_ERROR_BYTES)
            finally:
                raw.close()
            code, message = _error_code(body)
            raise ClientError(
                {
                    "Error": {"Code": code or str(response.status_code), "Message": message},
                    "ResponseMetadata": {"HTTPStatusCode": response.status_code},
                },
                "GetObject",
            )
        return {
            "Body": _Body(response.raw),
            "ContentLength": _int_or_none(headers.get("Content-Length")),
            "ETag": headers.get("ETag"),
            "ContentType": headers.get("Content-Type"),
            "VersionId": headers.get("x-amz-version-id"),
            "LastModified": _http_date(headers.get("Last-Modified")),
        }


class _Body:
    """The streamed body: read(n) and close(), as botocore's StreamingBody offers them."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, amount: int | None = None) -> bytes:
        return bytes(self._raw.read(amount))

    def close(self) -> None:
        self._raw.close()


def _error_code(body: bytes) -> tuple[str, str]:
    """S3's error document's <Code> and <Message> ('' when the body is not one)."""
    from xml.etree.ElementTree import ParseError, fromstring

    try:
        root = fromstring(body)
    except ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _http_date(value: str | None) -> Any:
    """Last-Modified as a datetime, parsed as botocore's client parses it."""
    if not value:
        return None
    from botocore.utils import parse_timestamp

    try:
        return parse_timestamp(value)
    except (TypeError, ValueError):
        return None
