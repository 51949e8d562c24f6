"""`rollback codec-server`: Temporal's codec server protocol, so the Temporal UI (and
`temporal workflow show --codec-endpoint`) can show decrypted payloads to people holding the token.

POST /decode and POST /encode take and return `{"payloads": [...]}` (protobuf JSON: base64
`data` and `metadata` values); the UI adds `X-Namespace`, and `Authorization: Bearer <token>`
when it is set to pass one. The browser calls from the UI's origin, so answers carry CORS headers
for the configured origins only, preflight included.
"""

from __future__ import annotations

import hmac
import logging

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from worker.codec import CodecError, EncryptionCodec

TOKEN_ENV = "ROLLBACK_CODEC_SERVER_TOKEN"
MAX_BODY = 4 * 1024 * 1024  # Temporal's own payload limit is 2 MiB; a batch of a few stays under this

log = logging.getLogger("rollback.codec_server")


def create_codec_app(codec: EncryptionCodec, token: str, origins: list[str]) -> Starlette:
    expected = f"Bearer {token}".encode()

    def authorized(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    def endpoint(transform):
        async def handle(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            body = await request.body()
            if len(body) > MAX_BODY:
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
            try:
                payloads = json_format.Parse(body, Payloads())
            except json_format.ParseError as exc:
                return JSONResponse({"error": f"not a {{\"payloads\": [...]}} document: {exc}"}, status_code=400)
            try:
                result = await transform(payloads.payloads)
            except CodecError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            log.info("%s %d payload(s) namespace=%s", request.url.path, len(result),
                     request.headers.get("x-namespace", "-"))
            return Response(json_format.MessageToJson(Payloads(payloads=result)), media_type="application/json")

        return handle

    return Starlette(
        routes=[Route("/decode", endpoint(codec.decode), methods=["POST"]),
                Route("/encode", endpoint(codec.encode), methods=["POST"])],
        middleware=[Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["POST"],
            # what the UI sends: JSON, the namespace, and the access token when configured to pass it
            allow_headers=["Content-Type", "X-Namespace", "Authorization"],
            allow_credentials=True,
            max_age=600,
        )],
    )
