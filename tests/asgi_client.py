"""A synchronous test client for the functions' ASGI app, with Flask's test-client interface.

Requests are built with werkzeug's EnvironBuilder (so `data=`, `json=`, `headers=`,
`content_type=` and multipart dicts work as in Flask tests), turned into one ASGI call, and the
answer comes back as a werkzeug Response (`status_code`, `headers`, `data`, `get_json()`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response


class ASGITestClient:
    def __init__(self, app: Any) -> None:
        self.app = app

    def open(self, path: str = "/", method: str = "GET", **kwargs: Any) -> Response:
        builder = EnvironBuilder(path=path, method=method, **kwargs)
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        body = environ["wsgi.input"].read()
        headers = [
            (key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        if environ.get("CONTENT_TYPE"):
            headers.append((b"content-type", environ["CONTENT_TYPE"].encode("latin-1")))
        headers.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": environ["PATH_INFO"].encode("latin-1").decode("utf-8"),
            "raw_path": environ["PATH_INFO"].encode("latin-1"),
            "query_string": environ["QUERY_STRING"].encode("latin-1"),
            "headers": headers,
            "server": ("localhost", 80),
            "client": ("127.0.0.1", 12345),
        }
        return asyncio.run(self._call(scope, body))

    async def _call(self, scope: dict[str, Any], body: bytes) -> Response:
        sent = False
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # a real client would have nothing more to say
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in started["headers"]]
        data = b"" if scope["method"] == "HEAD" else b"".join(chunks)
        return Response(data, status=started["status"], headers=headers)

    def get(self, path: str = "/", **kwargs: Any) -> Response:
        return self.open(path, "GET", **kwargs)

    def post(self, path: str = "/", **kwargs: Any) -> Response:
        return self.open(path, "POST", **kwargs)

    def put(self, path: str = "/", **kwargs: Any) -> Response:
        return self.open(path, "PUT", **kwargs)

    def head(self, path: str = "/", **kwargs: Any) -> Response:
        return self.open(path, "HEAD", **kwargs)
