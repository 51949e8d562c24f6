"""The HTTP flag store the receiver serves: `GET|PUT|DELETE /flags/<service>/<name>`.

Apps poll `GET` (anyone may read; 404 means "not set") and stop background work when a kill
switch says so. Writes need `Authorization: Bearer <token>` with a token from the variable named
by `flags.token_env`; with none configured every write is refused. Values live in one JSON file
in the state directory, written by rename, so a crash never leaves half a file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from activities.common import ConfigSource, read_json, write_json_atomic

MAX_VALUE_BYTES = 4096


def flag_routes(config: ConfigSource) -> list[Route]:
    lock = asyncio.Lock()

    def path():
        return config.state_path("flags.json")

    def authorized(request: Request) -> bool:
        env = config.config.flags.token_env
        tokens = [t.strip() for t in os.environ.get(env, "").split(",") if t.strip()] if env else []
        offered = request.headers.get("authorization", "")
        return any(hmac.compare_digest(offered.encode(), f"Bearer {t}".encode()) for t in tokens)

    async def flag(request: Request) -> Response:
        service, name = request.path_params["service"], request.path_params["name"]
        if request.method == "GET":
            value = read_json(path(), {}).get(service, {}).get(name)
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
        async with lock:
            flags = read_json(path(), {})
            if value is None:
                flags.get(service, {}).pop(name, None)
            else:
                flags.setdefault(service, {})[name] = value
            write_json_atomic(path(), flags)
        return JSONResponse({"name": name, "value": value})

    return [Route("/flags/{service}/{name}", flag, methods=["GET", "PUT", "DELETE"])]
