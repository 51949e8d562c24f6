"""A contract server for OpenAI's key administration and the call that tests a key (runbook 002).

Management calls take an admin key, `Authorization: Bearer <admin key>`:
- `POST /v1/organization/admin_api_keys` `{name}`: 200 `{object: "organization.admin_api_key", id: "key_…", name,
  redacted_value, value, created_at, last_used_at, owner}`; `value` is shown only here.
- `GET /v1/organization/admin_api_keys?limit=N`: 200 `{object: "list", data: [… without value], first_id, last_id,
  has_more}` (what an admin key is tested with: admin keys work only on administration endpoints).
- `DELETE /v1/organization/admin_api_keys/{id}`: 200 `{id, object: "organization.admin_api_key.deleted",
  deleted: true}`; 404 for an unknown or deleted id.
- `POST /v1/organization/projects/{p}/service_accounts/{sa}/api_keys` `{name}`: 200
  `{object: "organization.project.service_account.api_key", id, name, value, created_at}`; 404 for an unknown
  project or service account.
- `DELETE /v1/organization/projects/{p}/api_keys/{id}`: 200 `{object: "organization.project.api_key.deleted", id,
  deleted: true}`; 404 for an unknown or deleted id.
- `GET /v1/models` with a project key: 200 `{object: "list", data: [models]}`.

Errors are `{"error": {"message", "type", "param", "code"}}`: 401 `invalid_api_key` for a missing, unknown or
revoked key ("Incorrect API key provided: sk-…***…", the key partly repeated as OpenAI does), 403 for a
project key on an administration endpoint, 400 for a body without a name, 404 for unknown ids.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}},
                        status_code=status)


def _redacted(value: str) -> str:
    return f"{value[:8]}...{value[-3:]}"


@dataclass
class FakeOpenAI:
    admin_keys: dict[str, str] = field(default_factory=dict)  # id -> value, live admin keys
    project_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # project -> {id: value}
    service_accounts: dict[str, set[str]] = field(default_factory=dict)  # project -> service account ids
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # keys made from now on lack the models scope: /v1/models refuses them (the failed-verification path)
    new_keys_refused: bool = False
    refused: set[str] = field(default_factory=set)
    log: list[tuple[str, str]] = field(default_factory=list)

    def add_admin_key(self) -> tuple[str, str]:
        key_id, value = "key_" + secrets.token_hex(8), "sk-admin-" + secrets.token_urlsafe(32)
        self.admin_keys[key_id] = value
        return key_id, value

    def add_project(self, project: str, service_account: str) -> None:
        self.project_keys.setdefault(project, {})
        self.service_accounts.setdefault(project, set()).add(service_account)

    def add_project_key(self, project: str) -> tuple[str, str]:
        key_id, value = "key_" + secrets.token_hex(8), "sk-svcacct-" + secrets.token_urlsafe(32)
        self.project_keys[project][key_id] = value
        return key_id, value

    def _bearer(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        return header[7:] if header.startswith("Bearer ") else ""

    def _project_key_id(self, value: str) -> str | None:
        for keys in self.project_keys.values():
            for key_id, live in keys.items():
                if secrets.compare_digest(live, value):
                    return key_id
        return None

    def _admin(self, request: Request) -> JSONResponse | None:
        """None when the request carries a live admin key, else the error OpenAI answers."""
        value = self._bearer(request)
        if not value:
            return _error(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                               "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if any(secrets.compare_digest(v, value) for v in self.admin_keys.values()):
            return None
        if self._project_key_id(value):
            return _error(403, "You have insufficient permissions for this operation. Missing scopes: "
                               "api.management.read. Check that you have the correct role in your organization.",
                          code="insufficient_permissions")
        return _error(401, f"Incorrect API key provided: {_redacted(value)}. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    @staticmethod
    async def _name(request: Request) -> str | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        name = body.get("name") if isinstance(body, dict) else None
        return name if isinstance(name, str) and name else None

    def app(self) -> Starlette:
        async def admin_keys(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if (refused := self._admin(request)) is not None:
                return refused
            if request.method == "GET":
                limit = int(request.query_params.get("limit", 20))
                data = [{"object": "organization.admin_api_key", "id": key_id, "name": "key",
                         "redacted_value": _redacted(value), "created_at": 0, "last_used_at": None}
                        for key_id, value in list(self.admin_keys.items())[:limit]]
                return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                     "last_id": data[-1]["id"] if data else None,
                                     "has_more": len(self.admin_keys) > limit})
            name = await self._name(request)
            if name is None:
                return _error(400, "Missing required parameter: 'name'.", code="missing_required_parameter")
            key_id, value = self.add_admin_key()
            self.created.append(key_id)
            if self.new_keys_refused:
                self.refused.add(key_id)
            return JSONResponse({"object": "organization.admin_api_key", "id": key_id, "name": name,
                                 "redacted_value": _redacted(value), "value": value, "created_at": int(time.time()),
                                 "last_used_at": None,
                                 "owner": {"type": "user", "object": "organization.user", "id": "user_1",
                                           "name": "ops", "created_at": 0, "role": "owner"}})

        async def admin_key(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if (refused := self._admin(request)) is not None:
                return refused
            key_id = request.path_params["key_id"]
            if self.admin_keys.pop(key_id, None) is None:
                return _error(404, f"No such admin API key: {key_id}")
            self.deleted.append(key_id)
            return JSONResponse({"id": key_id, "object": "organization.admin_api_key.deleted", "deleted": True})

        async def service_account_keys(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if (refused := self._admin(request)) is not None:
                return refused
            project, account = request.path_params["project"], request.path_params["account"]
            if project not in self.project_keys:
                return _error(404, f"No such project: {project}")
            if account not in self.service_accounts.get(project, set()):
                return _error(404, f"No such service account: {account}")
            name = await self._name(request)
            if name is None:
                return _error(400, "Missing required parameter: 'name'.", code="missing_required_parameter")
            key_id, value = self.add_project_key(project)
            self.created.append(key_id)
            if self.new_keys_refused:
                self.refused.add(key_id)
            return JSONResponse({"object": "organization.project.service_account.api_key", "id": key_id,
                                 "name": name, "value": value, "created_at": int(time.time())})

        async def project_key(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            if (refused := self._admin(request)) is not None:
                return refused
            project, key_id = request.path_params["project"], request.path_params["key_id"]
            if project not in self.project_keys:
                return _error(404, f"No such project: {project}")
            if self.project_keys[project].pop(key_id, None) is None:
                return _error(404, f"No such API key: {key_id}")
            self.deleted.append(key_id)
            return JSONResponse({"object": "organization.project.api_key.deleted", "id": key_id, "deleted": True})

        async def models(request: Request) -> Response:
            self.log.append((request.method, request.url.path))
            value = self._bearer(request)
            key_id = self._project_key_id(value) if value else None
            if key_id is None:
                if not value:
                    return _error(401, "You didn't provide an API key. You need to provide your API key in an "
                                       "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
                return _error(401, f"Incorrect API key provided: {_redacted(value)}. You can find your API key at "
                                   "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
            if key_id in self.refused:
                return _error(403, "You have insufficient permissions for this operation. Missing scopes: "
                                   "api.model.read.", code="insufficient_permissions")
            return JSONResponse({"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}]})

        org = "/v1/organization"
        return Starlette(routes=[
            Route(f"{org}/admin_api_keys", admin_keys, methods=["GET", "POST"]),
            Route(f"{org}/admin_api_keys/{{key_id}}", admin_key, methods=["DELETE"]),
            Route(f"{org}/projects/{{project}}/service_accounts/{{account}}/api_keys", service_account_keys,
                  methods=["POST"]),
            Route(f"{org}/projects/{{project}}/api_keys/{{key_id}}", project_key, methods=["DELETE"]),
            Route("/v1/models", models, methods=["GET"]),
        ])
