"""A contract server for Twilio's API keys (runbook 002's key rotation).

- `POST /2010-04-01/Accounts/{AC}/Keys.json` (form `FriendlyName`), basic auth with the account SID
  and auth token: 201 `{sid: "SK…", friendly_name, date_created, date_updated, secret}`; the
  secret is shown only here.
- `DELETE /2010-04-01/Accounts/{AC}/Keys/{SK}.json`, account credentials: 204; 404 (error 20404)
  for a key that does not exist (or was already deleted).
- `GET /2010-04-01/Accounts/{AC}/Messages.json?PageSize=1`, basic auth `SK…:secret` or the account
  credentials: 200 `{messages: [], page_size, …}`; a deleted or unknown key gives 401 with error
  20003 ("Authenticate"), as Twilio does.
- Errors are Twilio's JSON: `{code, message, more_info, status}`. An API key may not manage keys
  (Twilio: only the main account credentials or a main key create keys): 401 20003 here.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status)


@dataclass
class FakeTwilio:
    account: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    keys: dict[str, str] = field(default_factory=dict)  # sid -> secret, live keys only
    deleted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    # keys created from now on are accepted by Keys.json but refused by the test call (a key
    # whose rights do not cover Messages): the failed-verification path
    new_keys_refused: bool = False
    refused: set[str] = field(default_factory=set)
    log: list[tuple[str, str]] = field(default_factory=list)

    def add_key(self) -> tuple[str, str]:
        sid, secret = "SK" + secrets.token_hex(16), secrets.token_urlsafe(24)
        self.keys[sid] = secret
        return sid, secret

    def _who(self, request: Request) -> str | None:
        """'account', a key sid, or None for bad credentials."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        if user == self.account and secrets.compare_digest(password, self.auth_token):
            return "account"
        if user in self.keys and secrets.compare_digest(password, self.keys[user]) and user not in self.refused:
            return user
        return None

    def app(self) -> Starlette:
        def account_ok(request: Request) -> bool:
            return request.path_params["account"] == self.account

        async def keys(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if self._who(request) != "account" or not account_ok(request):
                return _error(401, 20003, "Authenticate")
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            now = datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")
            sid, secret = self.add_key()
            self.created.append(sid)
            if self.new_keys_refused:
                self.refused.add(sid)
            return JSONResponse({"sid": sid, "friendly_name": form.get("FriendlyName", ""), "date_created": now,
                                 "date_updated": now, "secret": secret}, status_code=201)

        async def key(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if self._who(request) != "account" or not account_ok(request):
                return _error(401, 20003, "Authenticate")
            sid = request.path_params["sid"]
            if sid not in self.keys:
                return _error(404, 20404, f"The requested resource /2010-04-01/Accounts/{self.account}/Keys/{sid}.json "
                                          "was not found")
            del self.keys[sid]
            self.deleted.append(sid)
            return Response(status_code=204)

        async def messages(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if self._who(request) is None or not account_ok(request):
                return _error(401, 20003, "Authenticate")
            return JSONResponse({"messages": [], "page": 0, "page_size": int(request.query_params.get("PageSize", 50)),
                                 "uri": request.url.path, "first_page_uri": request.url.path, "next_page_uri": None,
                                 "previous_page_uri": None, "start": 0, "end": 0})

        base = "/2010-04-01/Accounts/{account}"
        return Starlette(routes=[Route(base + "/Keys.json", keys, methods=["POST"]),
                                 Route(base + "/Keys/{sid}.json", key, methods=["DELETE"]),
                                 Route(base + "/Messages.json", messages, methods=["GET"])])
