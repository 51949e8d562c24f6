"""A contract server for the Supabase Management API's backups and point-in-time restore.

`Authorization: Bearer <access token>`.
- `GET /v1/projects/{ref}`: the project, with `status` (`ACTIVE_HEALTHY`, `RESTORING`, ...).
- `GET /v1/projects/{ref}/database/backups`: `{region, walg_enabled, pitr_enabled, backups: [{is_physical_backup,
  status, inserted_at}], physical_backup_data: {earliest_physical_backup_date_unix, latest_physical_backup_date_unix}}`.
- `POST /v1/projects/{ref}/database/backups/restore-pitr` with `{"recovery_time_target_unix": <int>}`: 201, and
  the project is `RESTORING` until the restore is done. 400 for a target outside the window or a body without
  an integer target, 401 for a bad token, 404 for an unknown project, 409 while a restore runs, 429 with
  Retry-After when a test queues one.
"""

from __future__ import annotations

import json
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

        return Starlette(routes=[Route("/v1/projects/{ref}", handle, methods=["GET"]),
                                 Route("/v1/projects/{ref}/{rest:path}", handle, methods=["GET", "POST"])])
