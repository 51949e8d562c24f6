"""The HTTP flag store the receiver serves: `GET|PUT|DELETE /flags/<service>/<name>`.

Apps poll `GET` (anyone may read; 404 means "not set") and stop background work when a kill
switch says so. Writes need `Authorization: Bearer <token>` with a token from the variable named
by `flags.token_env`; with none configured every write is refused. Values live in the state
store (activities/state.py), changed atomically, so several receivers serve the same flags.
"""

from __future__ import annotations

import hmac
import json
import os

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from activities.common import ConfigSource

MAX_VALUE_BYTES = 4096


def flag_routes(config: ConfigSource) -> list[Route]:
    def authorized(request: Request) -> bool:
        env = config.config.flags.token_env
        tokens = [t.strip() for t in os.environ.get(env, "").split(",") if t.strip()] if env else []
        offered = request.headers.get("authorization", "")
        return any(hmac.compare_digest(offered.encode(), f"Bearer {t}".encode()) for t in tokens)

    async def flag(request: Request) -> Response:
        service, name = request.path_params["service"], request.path_params["name"]
        if request.method == "GET":
            value = (await config.state.aget("flags", "all", {})).get(service, {}).get(name)
            if value is None:
                return JSONResponse({"error": f"flag {service}/{name} is not set"}, status_code=404)
            return JSONResponse({"name": name, "value": value})
        if not authorized(request):
            return JSONResponse({"error": "a valid bearer token is required to change flags"}, status_code=401)
        value = None
        if request.method == "PUT":
            body = await request.body()
            try:
                value = json.loads(body)["value"] if len(body) <= MAX_VALUE_BYTES else None
            except (ValueError, KeyError, TypeError):
                value = None
            if not isinstance(value, str):
                return JSONResponse({"error": 'send {"value": "<string>"} (at most 4 KiB)'}, status_code=400)
        def change(flags: dict) -> dict:
            if value is None:
                flags.get(service, {}).pop(name, None)
            else:
                flags.setdefault(service, {})[name] = value
            return flags

        await config.state.aupdate("flags", "all", change, {})
        return JSONResponse({"name": name, "value": value})

    return [Route("/flags/{service}/{name}", flag, methods=["GET", "PUT", "DELETE"])]
