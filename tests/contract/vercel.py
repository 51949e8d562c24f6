"""A contract server for the parts of the Vercel REST API a rollback uses.

It follows `reference/external-apis.md`: `/v6/deployments` with `until` paging and `uid` items,
`/v13/deployments/{idOrUrl}`, `/v9/projects/{idOrName}` with `lastAliasRequest`, instant rollback
(`/v1` and the CLI's `/v9`), promote (`/v10`), `/v2/user`, `/teams/{id}`, and the error bodies
`{"error": {"code", "message"}}` for 401, 404, 409 and 429 (with Retry-After). Tests queue extra
failures with `inject`. Environment variables: list (`/v10/projects/{id}/env`, `decrypt`, `target`,
`gitBranch`), one value (`/v1/projects/{id}/env/{envId}`), create/upsert (`POST /v10/...env?upsert=true`,
one object or an array; `{created, failed}`), edit (`PATCH /v9|v10/...env/{envId}`), delete, with the
type/target validation of the real API: sensitive values never read back. `POST /v13/deployments?forceNew=1`
redeploys: a new build that freezes the project's production env at that moment and serves once READY. It also serves each project's site (`/_site/{project}/health|version`)
so verification can read what production serves.
"""

from __future__ import annotations

import asyncio

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@dataclass
class FakeVercel:
    token: str = "vercelTestToken0123"
    team_id: str | None = None  # the team that owns the projects; None: the token owner's personal account
    # The token owner's default scope (`/v2/user` `defaultTeamId`): a request without `teamId` acts in
    # it. Real Vercel refuses a team's resources without `teamId` unless that team is the default scope
    # (the Vercel CLI relies on this: most of its calls carry no `teamId`).
    default_team_id: str | None = None
    job_seconds: float = 0.6
    next_job_outcome: str = "succeeded"
    projects: dict[str, dict] = field(default_factory=dict)
    deployments: list[dict] = field(default_factory=list)
    production: dict[str, str] = field(default_factory=dict)  # project id -> deployment uid
    calls: list[tuple[str, str, dict, float]] = field(default_factory=list)  # method, path, query, time
    inject: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    # route -> seconds the next call of it waits before answering (a slow API; once per entry)
    stall: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    envs: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))  # project id -> variables
    # a deployment built with NAME=VALUE from here is unhealthy (what a bad env change looks like)
    unhealthy_env: dict[str, str] = field(default_factory=dict)
    redeploy_outcome: str = "READY"
    redeploys: int = 0

    # -- building a scenario --------------------------------------------------------------
    def add_project(self, project_id: str, name: str) -> None:
        self.projects[project_id] = {"id": project_id, "name": name, "accountId": self.team_id or "user_1",
                                     "lastAliasRequest": None}

    def add_deployment(self, project_id: str, uid: str, created: int, *, state: str = "READY",
                       target: str | None = "production", meta: dict | None = None, candidate: bool = True) -> dict:
        name = self.projects[project_id]["name"]
        deployment = {
            "uid": uid, "name": name, "projectId": project_id, "url": f"{name}-{uid[4:12]}.vercel.app",
            "created": created, "createdAt": created, "state": state, "readyState": state,
            "readySubstate": "STAGED" if state == "READY" else None, "target": target,
            "isRollbackCandidate": candidate and state == "READY" and target == "production",
            "meta": meta or {}, "creator": {"uid": "user_1", "username": "dev"},
            "inspectorUrl": f"https://vercel.com/acme/{name}/{uid}",
            "_env": self.production_env(project_id),
        }
        self.deployments.append(deployment)
        if state == "READY" and target == "production":
            current = self.production.get(project_id)
            if current is None or self._by_id(current)["created"] < created:
                self.production[project_id] = uid
        return deployment

    def set_env(self, project_id: str, key: str, value: str, type_: str = "encrypted",
                target: list[str] | None = None) -> dict:
        """A variable as someone set it in the dashboard (replaces one of the same key and target)."""
        target = target or ["production"]
        self.envs[project_id] = [e for e in self.envs[project_id] if not (e["key"] == key and set(e["target"]) & set(target))]
        now = int(time.time() * 1000)
        item = {"id": f"env_{uuid.uuid4().hex[:16]}", "key": key, "value": value,
                "type": type_, "target": target, "gitBranch": None, "comment": "", "createdAt": now, "updatedAt": now}
        self.envs[project_id].append(item)
        return item

    def production_env(self, project_id: str) -> dict[str, str]:
        return {e["key"]: e["value"] for e in self.envs[project_id] if "production" in e["target"] and not e["gitBranch"]}

    def live_env(self, project_id: str) -> dict[str, str]:
        """The environment the deployment serving production was built with."""
        return dict(self._by_id(self.production[project_id])["_env"])

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p, _, _ in self.calls if m == method and fragment in p)

    # -- internals ------------------------------------------------------------------------
    def _by_id(self, id_or_url: str) -> dict | None:
        needle = id_or_url.removeprefix("https://")
        return next((d for d in self.deployments if needle in (d["uid"], d["url"])), None)

    def _project(self, id_or_name: str) -> dict | None:
        return next((p for p in self.projects.values() if id_or_name in (p["id"], p["name"])), None)

    def _advance(self, project: dict) -> None:
        job = project["lastAliasRequest"]
        if not job or job["jobStatus"] in ("succeeded", "failed", "skipped"):
            return
        elapsed = time.time() * 1000 - job["requestedAt"]
        if elapsed >= self.job_seconds * 1000:
            job["jobStatus"] = job.pop("_outcome")
            if job["jobStatus"] == "succeeded":
                self.production[project["id"]] = job["toDeploymentId"]
        elif elapsed > 0:
            job["jobStatus"] = "in-progress"

    def _advance_build(self, d: dict) -> None:
        """A redeploy builds for `job_seconds`, then is READY and takes production."""
        if d["readyState"] in ("QUEUED", "BUILDING") and time.time() * 1000 - d["created"] >= self.job_seconds * 1000:
            d["readyState"] = d["state"] = d.pop("_outcome")
            if d["readyState"] == "READY":
                d["readySubstate"] = "PROMOTED"
                d["isRollbackCandidate"] = True
                self.production[d["projectId"]] = d["uid"]

    def _public_project(self, project: dict) -> dict:
        job = project["lastAliasRequest"]
        public = {k: v for k, v in project.items()}
        public["lastAliasRequest"] = {k: v for k, v in job.items() if not k.startswith("_")} if job else None
        live = self._by_id(self.production.get(project["id"], "")) or {}
        public["targets"] = {"production": {"id": live.get("uid"), "url": live.get("url")}} if live else {}
        return public

    def _deployment_view(self, d: dict) -> dict:
        self._advance_build(d)
        view = {k: v for k, v in d.items() if not k.startswith("_")}
        view["id"] = d["uid"]
        if self.production.get(d["projectId"]) == d["uid"]:
            view["readySubstate"] = "PROMOTED"
        return view

    # -- the HTTP application -------------------------------------------------------------
    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            path = request.url.path
            query = dict(request.query_params)
            if path != "/__calls":
                self.calls.append((request.method, path, query, time.time()))
            if path.startswith("/_site/"):
                return self._site(path)
            if path == "/__calls":  # introspection for benchmarks that run this server in another process
                wanted = query.get("method")  # ?method=POST: only those (a poller then costs little)
                return JSONResponse([{"method": m, "path": p, "at": t} for m, p, _, t in self.calls
                                     if wanted in (None, m)])
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return _error(401, "forbidden", "The request is missing an authentication token or it is invalid")
            route = self._route_name(request.method, path)
            if route in self.stall:
                await asyncio.sleep(self.stall.pop(route))
            if self.inject[route]:
                status, headers = self.inject[route].popleft()
                messages = {409: "A rollback is already in progress", 429: "Rate limit exceeded",
                            500: "An unexpected error occurred"}
                return _error(status, {409: "conflict", 429: "rate_limited"}.get(status, "internal_server_error"),
                              messages.get(status, "error"), headers)
            with self.lock:
                return self._dispatch(request.method, path, query, await request.body())

        return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "PATCH", "DELETE"])])

    @staticmethod
    def _route_name(method: str, path: str) -> str:
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 5 and parts[3] in ("rollback", "promote"):
            return parts[3]
        if path.startswith("/v6/deployments"):
            return "list"
        if len(parts) >= 4 and parts[1] == "projects" and parts[3] == "env":
            return "env"
        if method == "POST" and parts == ["v13", "deployments"]:
            return "redeploy"
        if parts[:2] == ["v9", "projects"]:
            return "project"
        return "other"

    def _site(self, path: str) -> Response:
        _, _, project_id, page = path.split("/", 3)
        project = self._project(project_id)
        if project is None:
            return PlainTextResponse("no such site", status_code=404)
        with self.lock:
            self._advance(project)
            for d in self.deployments:
                self._advance_build(d)
            live = self._by_id(self.production[project["id"]])
        if page == "version":
            return PlainTextResponse(live["uid"])
        meta = dict(live["meta"])
        if any(live["_env"].get(k) == v for k, v in self.unhealthy_env.items()):
            meta.update(health="degraded", errorRate=0.4)
        healthy = meta.get("health", "ok") == "ok"
        body = {"status": meta.get("health", "ok"), "error_rate": float(meta.get("errorRate", 0.001)),
                "database": "ok"}
        return JSONResponse(body, status_code=200 if healthy or meta.get("healthStatus200") else 503)

    def _dispatch(self, method: str, path: str, query: dict, body: bytes) -> Response:
        parts = path.strip("/").split("/")
        if self.team_id and parts[:1] != ["v2"] and parts[:1] != ["teams"]:
            scope = query.get("teamId") or self.default_team_id
            if scope != self.team_id:
                return _error(403, "forbidden", "You don't have permission to access this team")
        if method in ("POST", "PATCH") and body.strip():
            try:
                json.loads(body)
            except ValueError:
                return _error(400, "bad_request", "Invalid JSON body")
        if method == "GET" and path == "/v2/user":
            return JSONResponse({"user": {"id": "user_1", "username": "dev", "email": "dev@example.com",
                                          "name": "Dev", "defaultTeamId": self.default_team_id}})
        if method == "GET" and parts[0] == "teams" and len(parts) == 2:
            if parts[1] != self.team_id:
                return _error(404, "not_found", "Team not found")
            return JSONResponse({"id": self.team_id, "slug": "acme", "name": "Acme"})
        if method == "GET" and path == "/v6/deployments":
            return self._list(query)
        if method == "POST" and parts == ["v13", "deployments"]:
            return self._redeploy(query, json.loads(body or b"{}"))
        if method == "GET" and parts[:2] == ["v13", "deployments"] and len(parts) == 3:
            found = self._by_id(parts[2])
            if found is None:
                return _error(404, "not_found", "Deployment not found")
            return JSONResponse(self._deployment_view(found))
        if parts[1:2] == ["projects"] and len(parts) >= 3:
            project = self._project(parts[2])
            if project is None:
                return _error(404, "not_found", "Project not found")
            if method == "GET" and parts[0] == "v9" and len(parts) == 3:
                self._advance(project)
                return JSONResponse(self._public_project(project))
            if method == "POST" and len(parts) == 5 and (parts[0], parts[3]) in (
                    ("v1", "rollback"), ("v9", "rollback"), ("v10", "promote")):
                return self._alias(project, parts[4], parts[3])
            if len(parts) >= 4 and parts[3] == "env":
                return self._env(method, parts, project, query, json.loads(body) if body.strip() else None)
        return _error(404, "not_found", "The requested path was not found")

    # -- environment variables ----------------------------------------------------------------
    ENV_TYPES = ("system", "secret", "encrypted", "plain", "sensitive")
    ENV_TARGETS = ("production", "preview", "development")

    def _env_view(self, item: dict, decrypt: bool) -> dict:
        view = dict(item)
        if item["type"] == "sensitive":
            view["value"], view["decrypted"] = "", False  # never readable again
        elif item["type"] in ("encrypted", "secret") and not decrypt:
            view["value"], view["decrypted"] = "eyJ2IjoxfQ.ciphertext." + item["id"], False
        else:
            view["decrypted"] = item["type"] != "plain"
        return view

    def _check_env(self, item, partial: bool = False) -> str | None:
        """The real API's validation: why `item` is refused, or None."""
        if not isinstance(item, dict):
            return "Invalid request: body must be an object or an array of objects"
        for name in (() if partial else ("key", "value", "type", "target")):
            if name not in item:
                return f"Invalid request: missing required property `{name}`"
        if "key" in item and (not isinstance(item["key"], str) or not item["key"]
                              or not all(c.isalnum() or c == "_" for c in item["key"]) or item["key"][0].isdigit()):
            return "Invalid request: `key` may contain only letters, digits and underscores and not start with a digit"
        if "value" in item and not isinstance(item["value"], str):
            return "Invalid request: `value` should be string"
        if "type" in item and item["type"] not in self.ENV_TYPES:
            return f"Invalid request: `type` should be equal to one of the allowed values {', '.join(self.ENV_TYPES)}"
        if "target" in item:
            target = item["target"]
            if not isinstance(target, list) or not target or any(t not in self.ENV_TARGETS for t in target):
                return f"Invalid request: `target` should be a non-empty array of {', '.join(self.ENV_TARGETS)}"
            if item.get("type") == "sensitive" and "development" in target:
                return "Invalid request: sensitive variables cannot target development"
        return None

    def _env(self, method: str, parts: list[str], project: dict, query: dict, body) -> Response:
        items = self.envs[project["id"]]
        version = parts[0]
        if method == "GET" and len(parts) == 4 and version in ("v9", "v10"):
            chosen = items
            if query.get("target"):
                chosen = [e for e in chosen if query["target"] in e["target"]]
            if query.get("gitBranch"):
                chosen = [e for e in chosen if e["gitBranch"] == query["gitBranch"]]
            decrypt = query.get("decrypt") == "true"
            return JSONResponse({"envs": [self._env_view(e, decrypt) for e in chosen]})
        if method == "GET" and len(parts) == 5 and version == "v1":
            found = next((e for e in items if e["id"] == parts[4]), None)
            if found is None:
                return _error(404, "not_found", "Environment Variable not found")
            return JSONResponse(self._env_view(found, decrypt=True))
        if method == "POST" and len(parts) == 4 and version == "v10":
            batch = body if isinstance(body, list) else [body]
            created, failed = [], []
            for item in batch:
                problem = self._check_env(item)
                if problem:
                    if len(batch) == 1:
                        return _error(400, "bad_request", problem)
                    failed.append({"error": {"code": "bad_request", "message": problem,
                                             "key": item.get("key") if isinstance(item, dict) else None}})
                    continue
                clash = [e for e in items if e["key"] == item["key"] and set(e["target"]) & set(item["target"])
                         and e["gitBranch"] == item.get("gitBranch")]
                if clash and query.get("upsert") != "true":
                    failed.append({"error": {"code": "ENV_ALREADY_EXISTS", "key": item["key"],
                                             "message": f"A variable with the name `{item['key']}` already exists "
                                                        "for the target production on branch undefined"}})
                    continue
                made = self.set_env(project["id"], item["key"], item["value"], item["type"], item["target"])
                made.update(gitBranch=item.get("gitBranch"), comment=item.get("comment", ""))
                created.append(self._env_view(made, decrypt=False))
            return JSONResponse({"created": created[0] if len(created) == 1 else created, "failed": failed},
                                status_code=201)
        if method in ("PATCH", "DELETE") and len(parts) == 5 and version in ("v9", "v10"):
            found = next((e for e in items if e["id"] == parts[4]), None)
            if found is None:
                return _error(404, "not_found", "Environment Variable not found")
            if method == "DELETE":
                items.remove(found)
                return JSONResponse(self._env_view(found, decrypt=False))
            problem = self._check_env(body, partial=True)
            if problem:
                return _error(400, "bad_request", problem)
            found.update({k: v for k, v in body.items() if k in ("key", "value", "type", "target", "gitBranch",
                                                                 "comment")})
            found["updatedAt"] = int(time.time() * 1000)
            return JSONResponse(self._env_view(found, decrypt=False))
        return _error(404, "not_found", "The requested path was not found")

    def _redeploy(self, query: dict, body) -> Response:
        source = self._by_id(str((body or {}).get("deploymentId", "")))
        if source is None:
            return _error(404, "not_found", "Deployment not found")
        project = self._project(body.get("name", ""))
        if project is None or project["id"] != source["projectId"]:
            return _error(400, "bad_request", "The deployment does not belong to the project `name`")
        if body.get("target") not in (None, "production", "preview"):
            return _error(400, "bad_request", "Invalid request: `target` should be production or preview")
        self.redeploys += 1
        now = int(time.time() * 1000)
        uid = f"dpl_redeploy{self.redeploys:03d}{now % 1000:03d}"
        made = self.add_deployment(project["id"], uid, now, state="QUEUED", target=body.get("target") or "production",
                                   meta={**source["meta"], "action": "redeploy"})
        made["_outcome"] = self.redeploy_outcome
        return JSONResponse(self._deployment_view(made), status_code=200)

    def _list(self, query: dict) -> Response:
        project = self._project(query.get("projectId", "")) if query.get("projectId") else None
        if query.get("projectId") and project is None:
            return _error(404, "not_found", "Project not found")
        for d in self.deployments:
            self._advance_build(d)
        items = [d for d in self.deployments if project is None or d["projectId"] == project["id"]]
        if query.get("target"):
            items = [d for d in items if d["target"] == query["target"]]
        if query.get("state"):
            states = query["state"].split(",")
            items = [d for d in items if d["readyState"] in states]
        if query.get("until"):
            items = [d for d in items if d["created"] < int(query["until"])]
        if query.get("since"):
            items = [d for d in items if d["created"] > int(query["since"])]
        if query.get("rollbackCandidate") == "true":
            items = [d for d in items if d["isRollbackCandidate"]]
        items.sort(key=lambda d: d["created"], reverse=True)
        limit = min(int(query.get("limit", 20)), 100)
        page, more = items[:limit], len(items) > limit
        return JSONResponse({
            "deployments": [{k: v for k, v in self._deployment_view(d).items() if k != "id"} for d in page],
            "pagination": {"count": len(page), "next": page[-1]["created"] if more and page else None,
                           "prev": page[0]["created"] if page else None},
        })

    def _alias(self, project: dict, deployment_id: str, kind: str) -> Response:
        self._advance(project)
        job = project["lastAliasRequest"]
        if job and job["jobStatus"] in ("pending", "in-progress"):
            return _error(409, "conflict", "A rollback is already in progress")
        target = self._by_id(deployment_id)
        if target is None or target["projectId"] != project["id"]:
            return _error(404, "not_found", "Deployment not found")
        if target["readyState"] != "READY" or target["target"] != "production":
            return _error(400, "bad_request", "Only READY production deployments can be used")
        if kind == "rollback" and not target["isRollbackCandidate"]:
            return _error(400, "bad_request", "This deployment is not a rollback candidate")
        project["lastAliasRequest"] = {
            "fromDeploymentId": self.production.get(project["id"]), "toDeploymentId": target["uid"],
            "jobStatus": "pending", "requestedAt": int(time.time() * 1000), "type": kind,
            "_outcome": self.next_job_outcome if kind == "rollback" else "succeeded",
        }
        return Response(status_code=201)


def realistic(fake: FakeVercel, project_id: str = "prj_shop", name: str = "shop", count: int = 45) -> list[dict]:
    """A project with several pages of history: previews, ERROR and READY production deploys.

    What serves now (`dpl_badprodzzz`) is broken. Newer than the last good one (`dpl_goodprodzz`)
    are an ERROR build, a preview and 25 READY production deploys that Vercel does not offer as
    rollback candidates, so finding the target means paging past the first page.
    """
    fake.add_project(project_id, name)
    base = 1_760_000_000_000
    made = []
    for i in range(count):
        created = base + i * 60_000
        if i % 3 == 0:
            made.append(fake.add_deployment(project_id, f"dpl_preview{i:04d}", created, target=None))
        else:
            made.append(fake.add_deployment(project_id, f"dpl_prod{i:04d}xx", created, meta={"schemaVersion": "3"}))
    top = base + count * 60_000
    made.append(fake.add_deployment(project_id, "dpl_goodprodzz", top, meta={"schemaVersion": "3"}))
    for i in range(25):
        made.append(fake.add_deployment(project_id, f"dpl_nocand{i:04d}", top + 1000 + i, candidate=False))
    made.append(fake.add_deployment(project_id, "dpl_errorbuild", top + 60_000, state="ERROR"))
    made.append(fake.add_deployment(project_id, "dpl_preview_new", top + 90_000, target=None))
    made.append(fake.add_deployment(project_id, "dpl_badprodzzz", top + 120_000,
                                    meta={"schemaVersion": "3", "health": "degraded", "errorRate": 0.3}))
    return made


if __name__ == "__main__":
    # `python -m tests.contract.vercel PORT NAME...`: serve one project per name (good and bad
    # production deploys) in its own process, for benchmarks that must not share our GIL.
    import sys

    import uvicorn

    fake = FakeVercel(token="benchVercelToken", job_seconds=0.2)
    for index, name in enumerate(sys.argv[2:]):
        fake.add_project(f"prj_{name}", name)
        fake.add_deployment(f"prj_{name}", f"dpl_{name}_good", 1_000 + index * 10)
        fake.add_deployment(f"prj_{name}", f"dpl_{name}_bad", 2_000 + index * 10)
    uvicorn.run(fake.app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
