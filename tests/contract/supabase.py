"""A contract server for the Supabase Management API's backups and point-in-time restore, and its
API keys (runbook 002's key rotation), with the project's Data API that tells a working key from a
revoked one.

`Authorization: Bearer <access token>`.
- `GET /v1/projects/{ref}`: the project, with `status` (`ACTIVE_HEALTHY`, `RESTORING`, ...).
- `GET /v1/projects/{ref}/database/backups`: `{region, walg_enabled, pitr_enabled, backups: [{is_physical_backup,
  status, inserted_at}], physical_backup_data: {earliest_physical_backup_date_unix, latest_physical_backup_date_unix}}`.
- `POST /v1/projects/{ref}/database/backups/restore-pitr` with `{"recovery_time_target_unix": <int>}`: 201, and
  the project is `RESTORING` until the restore is done. 400 for a target outside the window or a body without
  an integer target, 401 for a bad token, 404 for an unknown project, 409 while a restore runs, 429 with
  Retry-After when a test queues one.
- `POST /v1/projects/{ref}/api-keys?reveal=true` with `{"type": "publishable"|"secret", "name"}` (name: lowercase
  letters, digits, underscores): 201 with the key object `{id, name, type, prefix, api_key, description, hash,
  secret_jwt_template, inserted_at, updated_at}`; `api_key` is the value only with reveal=true (else masked). 400
  for another type or a bad name.
- `DELETE /v1/projects/{ref}/api-keys/{id}?was_compromised=true&reason=…` (both optional): 200 with the key
  object; 404 `{"message": "API key not found"}` for an unknown or already deleted id.
- `PUT /v1/projects/{ref}/api-keys/legacy?enabled=false|true`: 200 `{"enabled": …}`: turns the legacy anon and
  service_role keys off (or on) together.
- `GET /rest/v1/` (the project's Data API, https://{ref}.supabase.co) with header `apikey: <key>`: 200 for a live
  key (a legacy one while legacy keys are enabled); 401 `{"message": "Invalid API key", "hint": …}` otherwise.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FakeSupabase:
    token: str = "sbp_test_token"
    ref: str = "abcdefghijklmnopqrst"
    pitr_enabled: bool = True
    earliest: int = 0
    latest: int = 0  # 0: "now" at the time of the request
    restore_seconds: float = 1.5
    on_restore: Callable[[int], None] | None = None  # what the restore does to the real database
    restores: list[dict] = field(default_factory=list)
    inject: deque = field(default_factory=deque)
    _restoring_until: float = 0.0
    # API keys: id -> key object (with the value under api_key), live ones only
    api_keys: dict[str, dict] = field(default_factory=dict)
    legacy: dict[str, str] = field(default_factory=lambda: {
        role: "eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(48) for role in ("anon", "service_role")})
    legacy_enabled: bool = True
    deleted: list[dict] = field(default_factory=list)  # {id, was_compromised, reason}
    created: list[str] = field(default_factory=list)
    # keys created from now on are made but refused by the Data API (the failed-verification path)
    new_keys_refused: bool = False
    refused: set[str] = field(default_factory=set)
    keys_log: list[tuple[str, str]] = field(default_factory=list)

    def add_key(self, type_: str, name: str = "default") -> dict:
        key_id = secrets.token_hex(8)
        value = f"sb_{type_}_" + secrets.token_urlsafe(24)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.api_keys[key_id] = {"id": key_id, "name": name, "type": type_, "prefix": value[:len(type_) + 7],
                                 "api_key": value, "description": None, "hash": None,
                                 "secret_jwt_template": {"role": "service_role"} if type_ == "secret" else None,
                                 "inserted_at": now, "updated_at": now}
        return self.api_keys[key_id]

    def key_works(self, value: str) -> bool:
        if self.legacy_enabled and value in self.legacy.values():
            return True
        return any(k["api_key"] == value and k["id"] not in self.refused for k in self.api_keys.values())

    def _api_keys(self, request: Request, rest: str, body: bytes) -> Response:
        self.keys_log.append((request.method, rest))
        query = request.query_params
        if request.method == "PUT" and rest == "api-keys/legacy":
            if query.get("enabled") not in ("true", "false"):
                return JSONResponse({"message": "enabled must be true or false"}, status_code=400)
            self.legacy_enabled = query["enabled"] == "true"
            return JSONResponse({"enabled": self.legacy_enabled})
        if request.method == "POST" and rest == "api-keys":
            try:
                wanted = json.loads(body)
            except ValueError:
                wanted = None
            if not isinstance(wanted, dict) or wanted.get("type") not in ("publishable", "secret"):
                return JSONResponse({"message": "type must be one of: publishable, secret"}, status_code=400)
            if not isinstance(wanted.get("name"), str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", wanted["name"]):
                return JSONResponse({"message": "name must be lowercase letters, digits and underscores"},
                                    status_code=400)
            key = self.add_key(wanted["type"], wanted["name"])
            self.created.append(key["id"])
            if self.new_keys_refused:
                self.refused.add(key["id"])
            shown = dict(key)
            if query.get("reveal") != "true":
                shown["api_key"] = key["prefix"] + "·" * 8
            return JSONResponse(shown, status_code=201)
        match = re.fullmatch(r"api-keys/([^/]+)", rest)
        if request.method == "DELETE" and match:
            key = self.api_keys.pop(match.group(1), None)
            if key is None:
                return JSONResponse({"message": "API key not found"}, status_code=404)
            self.deleted.append({"id": key["id"], "was_compromised": query.get("was_compromised") == "true",
                                 "reason": query.get("reason")})
            return JSONResponse({**key, "api_key": key["prefix"] + "·" * 8})
        return JSONResponse({"message": "Not found"}, status_code=404)

    def status(self) -> str:
        if self._restoring_until and time.monotonic() >= self._restoring_until:
            self._restoring_until = 0.0
            if self.on_restore:
                self.on_restore(self.restores[-1]["recovery_time_target_unix"])
        return "RESTORING" if self._restoring_until else "ACTIVE_HEALTHY"

    def window(self) -> tuple[int, int]:
        return self.earliest, self.latest or int(time.time())

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse({"message": "Unauthorized"}, status_code=401)
            if self.inject:
                return JSONResponse({"message": "Too many requests"}, status_code=self.inject.popleft(),
                                    headers={"Retry-After": "1"})
            if request.path_params["ref"] != self.ref:
                return JSONResponse({"message": "Project not found"}, status_code=404)
            rest = request.path_params.get("rest", "")
            if rest.startswith("api-keys"):
                return self._api_keys(request, rest, await request.body())
            status = self.status()
            if request.method == "GET" and rest == "":
                return JSONResponse({"id": self.ref, "ref": self.ref, "name": "shop", "status": status})
            if request.method == "GET" and rest == "database/backups":
                earliest, latest = self.window()
                return JSONResponse({"region": "us-east-1", "walg_enabled": True, "pitr_enabled": self.pitr_enabled,
                                     "backups": [{"is_physical_backup": True, "status": "COMPLETED",
                                                  "inserted_at": "2026-11-24T00:00:00Z"}],
                                     "physical_backup_data": {"earliest_physical_backup_date_unix": earliest,
                                                              "latest_physical_backup_date_unix": latest}})
            if request.method == "POST" and rest == "database/backups/restore-pitr":
                try:
                    target = json.loads(await request.body())["recovery_time_target_unix"]
                except (ValueError, KeyError, TypeError):
                    target = None
                if not isinstance(target, int) or isinstance(target, bool):
                    return JSONResponse({"message": "recovery_time_target_unix must be an integer"}, status_code=400)
                if not self.pitr_enabled:
                    return JSONResponse({"message": "PITR is not enabled for this project"}, status_code=400)
                earliest, latest = self.window()
                if not earliest <= target <= latest:
                    return JSONResponse({"message": "recovery time is outside the PITR window"}, status_code=400)
                if status == "RESTORING":
                    return JSONResponse({"message": "a restore is already in progress"}, status_code=409)
                self.restores.append({"recovery_time_target_unix": target, "at": time.time()})
                self._restoring_until = time.monotonic() + self.restore_seconds
                return Response(status_code=201)
            return JSONResponse({"message": "Not found"}, status_code=404)

        async def data_api(request: Request) -> Response:
            if self.key_works(request.headers.get("apikey", "")):
                return JSONResponse({"swagger": "2.0", "info": {"title": "PostgREST API"}, "paths": {}})
            return JSONResponse({"message": "Invalid API key",
                                 "hint": "Double check your Supabase `anon` or `service_role` API key."},
                                status_code=401)

        return Starlette(routes=[Route("/v1/projects/{ref}", handle, methods=["GET"]),
                                 Route("/v1/projects/{ref}/{rest:path}", handle,
                                       methods=["GET", "POST", "PUT", "DELETE"]),
                                 Route("/rest/v1/", data_api, methods=["GET"])])
