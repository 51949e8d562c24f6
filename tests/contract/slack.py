"""A contract server for Slack incoming webhooks: POST JSON with `text`, answer 200 `ok`; and for
interactivity's `response_url` (RESPONSE_PATH/<id>): POST JSON with `text` and optional
`replace_original`, `blocks`, answered 200 `{"ok": true}`, kept in `responses`.

Errors as Slack sends them: 400 `invalid_payload` (no text), 404 `no_service` (unknown hook),
429 with Retry-After when a test queues one.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

HOOK_PATH = "/services/T000/B000/XXXXSECRETXXXX"
RESPONSE_PATH = "/actions/T000/1234567890/"


@dataclass
class FakeSlack:
    messages: list[dict] = field(default_factory=list)
    inject: deque = field(default_factory=deque)
    responses: list[dict] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            if request.url.path.startswith(RESPONSE_PATH):
                try:
                    payload = json.loads(await request.body())
                except ValueError:
                    return JSONResponse({"ok": False, "error": "invalid_payload"}, status_code=400)
                if not isinstance(payload, dict) or not payload.get("text"):
                    return JSONResponse({"ok": False, "error": "no_text"}, status_code=400)
                self.responses.append(payload)
                return JSONResponse({"ok": True})
            if request.url.path != HOOK_PATH:
                return PlainTextResponse("no_service", status_code=404)
            if self.inject:
                status = self.inject.popleft()
                return PlainTextResponse("rate_limited" if status == 429 else "error", status_code=status,
                                         headers={"Retry-After": "1"} if status == 429 else None)
            try:
                payload = json.loads(await request.body())
            except ValueError:
                return PlainTextResponse("invalid_payload", status_code=400)
            if not isinstance(payload, dict) or not payload.get("text"):
                return PlainTextResponse("invalid_payload", status_code=400)
            self.messages.append(payload)
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
