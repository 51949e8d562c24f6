"""A contract server for the one Stripe call key rotation makes: `GET /v1/balance` with the
secret key as the basic-auth user (empty password), or `Authorization: Bearer <key>`.

200 with a balance object for a live key. 401 `{error: {type: "invalid_request_error", message:
"Invalid API Key provided: sk_test_****…"}}` for an unknown key, and with `code:
"api_key_expired"` ("Expired API Key provided") for a key rolled or deleted in the Dashboard,
which is where Stripe keys are created and expired (no GA API): the test does it with `roll`.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _masked(key: str) -> str:
    return key[:8] + "*" * max(0, len(key) - 12) + key[-4:]


@dataclass
class FakeStripe:
    live: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    calls: int = 0

    def new_key(self) -> str:
        key = "sk_test_" + secrets.token_hex(24)
        self.live.add(key)
        return key

    def roll(self, key: str) -> None:
        """What the Dashboard's "Roll key" / delete does to the old key: it stops working."""
        self.live.discard(key)
        self.expired.add(key)

    def app(self) -> Starlette:
        async def balance(request: Request) -> Response:
            self.calls += 1
            header = request.headers.get("authorization", "")
            key = ""
            if header.startswith("Basic "):
                try:
                    key = base64.b64decode(header[6:]).decode().partition(":")[0]
                except ValueError:
                    key = ""
            elif header.startswith("Bearer "):
                key = header[7:]
            if not key:
                return JSONResponse({"error": {"type": "invalid_request_error", "message": "You did not provide an "
                                               "API key."}}, status_code=401)
            if key in self.expired:
                return JSONResponse({"error": {"type": "invalid_request_error", "code": "api_key_expired",
                                               "message": f"Expired API Key provided: {_masked(key)}"}},
                                    status_code=401)
            if key not in self.live:
                return JSONResponse({"error": {"type": "invalid_request_error",
                                               "message": f"Invalid API Key provided: {_masked(key)}"}},
                                    status_code=401)
            return JSONResponse({"object": "balance", "livemode": False,
                                 "available": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}],
                                 "pending": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}]})

        return Starlette(routes=[Route("/v1/balance", balance, methods=["GET"])])
