"""Vercel REST API: pick the previous production deployment, instant rollback, promote; the
project's environment variables and a redeploy that applies them.

Idempotent under retries: before POSTing a rollback the activity checks the project's
``lastAliasRequest`` (and its own heartbeat) and only polls when the request was already made.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client, resolve_secret, write_artifact
from activities.envstore import EnvStore
from workflows.config import VercelTarget
from workflows.models import (
    AppVersion,
    CaptureRequest,
    CaptureResult,
    EnvReadRequest,
    EnvSetRequest,
    EnvSetResult,
    EnvSnapshot,
    ExecuteRequest,
    ExecuteResult,
    ServiceRef,
    TargetRequest,
    UndoRequest,
)

FINAL_JOB_STATES = ("succeeded", "failed", "skipped")
PENDING = "+next-build"  # a snapshot of variables changed after the serving deployment was built
PAGE_LIMIT = 20


class VercelApi:
    """A thin client that turns Vercel's error answers into errors an operator can act on."""

    def __init__(self, target: VercelTarget, token: str, service: str):
        self.target, self.service = target, service
        self.http = http_client(
            base_url=target.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    async def __aenter__(self) -> "VercelApi":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, params: dict | None = None, body: Any = None) -> Any:
        params = dict(params or {})
        if self.target.team:
            params["teamId"] = self.target.team
        try:
            response = await self.http.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise ApplicationError(f"Vercel API unreachable at {self.target.api_url}: {type(exc).__name__}") from None
        if response.status_code < 300:
            return response.json() if response.content else None
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        where = f"{method} {path} for project {self.target.project}"
        status = response.status_code
        if status == 429:
            delay = float(response.headers.get("Retry-After", "5"))
            raise ApplicationError(f"Vercel rate limit on {where}; retrying in {delay:g}s",
                                   type="VercelRateLimited", next_retry_delay=timedelta(seconds=delay))
        if status == 409:
            raise ApplicationError(f"Vercel: conflict on {where}: {message}", type="VercelConflict")
        if status in (401, 403):
            raise fail(f"Vercel refused the token ({status}) on {where}: {message}; check the token in "
                       f"${self.target.token_env} and its team access", kind="VercelAuth")
        if status == 404:
            raise fail(f"Vercel: not found on {where}: {message}", kind="VercelNotFound")
        if status in (400, 402, 422):
            raise fail(f"Vercel refused {where} ({status}): {message}. On Hobby plans only the previous "
                       "production deployment can be a rollback target.", kind="VercelRefused")
        raise ApplicationError(f"Vercel answered {status} on {where}: {message}")

    async def project(self) -> dict:
        return await self.call("GET", f"/v9/projects/{self.target.project}")

    async def deployment(self, id_or_url: str) -> dict:
        return await self.call("GET", f"/v13/deployments/{id_or_url}")

    async def production_deployments(self, until: int | None = None) -> tuple[list[dict], int | None]:
        params: dict[str, Any] = {"projectId": self.target.project, "target": "production", "state": "READY",
                                  "limit": PAGE_LIMIT}
        if until is not None:
            params["until"] = until
        page = await self.call("GET", "/v6/deployments", params)
        return page["deployments"], (page.get("pagination") or {}).get("next")

    # -- environment variables (reference: "Vercel environment variables") -------------------------
    async def production_env(self) -> list[dict]:
        """The project's variables that apply to production builds, values decrypted where Vercel
        allows: an encrypted one still returned as ciphertext is fetched on its own; a sensitive
        one never reads back (its value is left empty)."""
        listed = await self.call("GET", f"/v10/projects/{self.target.project}/env",
                                 {"decrypt": "true", "target": "production"})
        envs = [e for e in listed.get("envs", []) if "production" in (e.get("target") or []) and not e.get("gitBranch")]
        for item in envs:
            if item.get("type") == "encrypted" and not item.get("decrypted"):
                one = await self.call("GET", f"/v1/projects/{self.target.project}/env/{item['id']}")
                item["value"], item["decrypted"] = one.get("value"), one.get("decrypted", True)
        return envs

    async def upsert_env(self, items: list[dict]) -> None:
        answer = await self.call("POST", f"/v10/projects/{self.target.project}/env", {"upsert": "true"}, items)
        failed = (answer or {}).get("failed") or []
        if failed:
            errors = "; ".join(f"{f['error'].get('key')}: {f['error'].get('message')} ({f['error'].get('code')})"
                               for f in failed)
            raise fail(f"Vercel refused to set variables of project {self.target.project}: {errors}",
                       kind="VercelRefused")

    async def edit_env(self, env_id: str, body: dict) -> None:
        await self.call("PATCH", f"/v10/projects/{self.target.project}/env/{env_id}", body=body)

    async def delete_env(self, env_id: str) -> None:
        await self.call("DELETE", f"/v10/projects/{self.target.project}/env/{env_id}")

    async def redeploy(self, deployment_id: str) -> dict:
        """What `vercel redeploy` sends: a new production build of the deployment's source,
        which picks up the project's current environment."""
        project = await self.project()
        return await self.call("POST", "/v13/deployments", {"forceNew": "1"},
                               {"deploymentId": deployment_id, "name": project.get("name") or self.target.project,
                                "target": "production", "meta": {"action": "redeploy"}})


def as_version(deployment: dict, target: VercelTarget) -> AppVersion:
    uid = deployment.get("uid") or deployment["id"]
    meta = deployment.get("meta") or {}
    return AppVersion(
        provider="vercel",
        id=uid,
        label=deployment.get("url") or uid,
        version=uid,
        schema_version=meta.get(target.schema_meta_key),
        details={"created": deployment.get("created") or deployment.get("createdAt"),
                 "target": deployment.get("target")},
    )


class VercelActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def _api(self, service: str) -> VercelApi:
        target = self._config.service(service).app.vercel
        if target is None:
            raise fail(f"service {service!r} has no vercel app target")
        return VercelApi(target, resolve_secret(target.token_env, service), service)

    @activity.defn(name="vercel.current")
    async def current(self, request: ServiceRef) -> AppVersion:
        """What production serves: the target of the last finished alias change, else the newest deploy."""
        async with self._api(request.service) as api:
            last = (await api.project()).get("lastAliasRequest") or {}
            if last.get("jobStatus") == "succeeded" and last.get("toDeploymentId"):
                return as_version(await api.deployment(last["toDeploymentId"]), api.target)
            deployments, _ = await api.production_deployments()
            if not deployments:
                raise fail(f"Vercel project {api.target.project} has no READY production deployment")
            return as_version(deployments[0], api.target)

    @activity.defn(name="vercel.select_target")
    async def select_target(self, request: TargetRequest) -> AppVersion:
        async with self._api(request.service) as api:
            if request.explicit:
                chosen = await api.deployment(request.explicit)
                if chosen.get("readyState") != "READY" or chosen.get("target") != "production":
                    raise fail(f"deployment {request.explicit} is {chosen.get('readyState')} with target "
                               f"{chosen.get('target')}; only READY production deployments can serve production")
                version = as_version(chosen, api.target)
            else:
                version = None
                rolled_away = await self._rolled_away(request.service)
                created = request.current.details.get("created")
                until = int(created) if created else None
                while version is None:
                    deployments, next_page = await api.production_deployments(until)
                    for item in deployments:
                        older = created is None or (item.get("created") or 0) < created
                        if (item["uid"] != request.current.id and older and item.get("readyState", item.get("state")) == "READY"
                                and item.get("isRollbackCandidate", True) is not False
                                and item["uid"] not in rolled_away):
                            version = as_version(item, api.target)
                            break
                    if version is None and next_page is None:
                        raise fail(f"Vercel project {api.target.project}: no READY production deployment older "
                                   f"than {request.current.label} to roll back to")
                    until = next_page
            if version.id == request.current.id:
                raise fail(f"deployment {version.label} already serves production; nothing to roll back")
            rolled_back_from = version.id in await self._rolled_away(request.service)
            return version.model_copy(update={"rolled_back_from": rolled_back_from})

    async def _production(self, api: VercelApi) -> dict:
        """The deployment production serves (as `current` finds it), raw."""
        last = (await api.project()).get("lastAliasRequest") or {}
        if last.get("jobStatus") == "succeeded" and last.get("toDeploymentId"):
            return await api.deployment(last["toDeploymentId"])
        deployments, _ = await api.production_deployments()
        if not deployments:
            raise fail(f"Vercel project {api.target.project} has no READY production deployment")
        return deployments[0]

    @activity.defn(name="vercel.env_read")
    async def env_read(self, request: EnvReadRequest) -> EnvSnapshot:
        """Record the production environment with the deployment now serving (values go to the
        protected store; the snapshot carries names and hashes)."""
        store = EnvStore(self._config)
        async with self._api(request.service) as api:
            live = await self._production(api)
            envs = await api.production_env()
        remembered = store.recall(request.service)
        values, meta, unreadable = {}, {}, []
        for item in envs:
            value = item.get("value")
            if not value and item.get("type") == "sensitive":
                value = remembered.get(item["key"])  # what we set ourselves, kept because it cannot be read
            if value is None or (not value and item.get("type") == "sensitive"):
                unreadable.append(item["key"])
                continue
            values[item["key"]] = value
            meta[item["key"]] = {"type": item.get("type", "encrypted"), "target": item.get("target") or ["production"]}
        uid = live.get("uid") or live.get("id")
        label = live.get("url") or uid
        # The project's variables reach a deployment when it is built. Changed since this build,
        # they are not what it runs with but what the next build will: recorded under a name of
        # their own, so a restore to this deployment still finds the values it was built with.
        built = live.get("created") or live.get("createdAt") or 0
        if any((item.get("updatedAt") or 0) > built for item in envs):
            uid, label = f"{uid}{PENDING}", f"{label} (project variables changed since this build)"
        return store.record(request.service, "vercel", uid, label, values, meta,
                            request.healthy, request.reason, unreadable)

    @activity.defn(name="vercel.env_set")
    async def env_set(self, request: EnvSetRequest) -> EnvSetResult:
        """Set variables to the values behind `request.ref`, remove `request.remove`, then redeploy
        the serving deployment so they apply (Vercel env changes only reach new builds), and wait
        until the new deployment is READY. Safe to retry: values are compared before writing, and
        the redeploy is made once per `change_key` (kept in heartbeat and the state store)."""
        store = EnvStore(self._config)
        values, meta = store.get(request.service, request.ref)
        names = request.names or sorted(values)
        missing = [n for n in names if n not in values]
        if missing:
            raise fail(f"stored environment {request.ref} has no value for {', '.join(missing)}; nothing was changed",
                       kind="EnvRefUnknown")
        made = await self._config.state.aget("vercel-env-redeploys", request.service, {})
        info = activity.info()
        details = (info.heartbeat_details[0] if info.heartbeat_details else None) or {}
        async with self._api(request.service) as api:
            earlier = made.get(request.change_key) or {}
            new_id = earlier.get("deployment") or details.get("redeploy")
            changed, removed = earlier.get("set", []), earlier.get("removed", [])
            if new_id is None:
                existing = {e["key"]: e for e in await api.production_env()}
                creates = []
                for name in names:
                    item = existing.get(name)
                    if item is None:
                        kept = meta.get(name) or {}
                        creates.append({"key": name, "value": values[name], "type": kept.get("type", "encrypted"),
                                        "target": kept.get("target") or ["production"]})
                    elif item.get("value") != values[name] or item.get("type") == "sensitive":
                        await api.edit_env(item["id"], {"value": values[name]})
                    else:
                        continue
                    changed.append(name)
                if creates:
                    await api.upsert_env(creates)
                for name in request.remove:
                    if name in existing:
                        await api.delete_env(existing[name]["id"])
                        removed.append(name)
                store.remember(request.service, {n: values[n] for n in names
                                                 if (meta.get(n) or {}).get("type") == "sensitive"})
                source = await self._production(api)
                created = await api.redeploy(source.get("uid") or source["id"])
                new_id = created["id"]
                entry = {"deployment": new_id, "set": changed, "removed": removed}
                await self._config.state.aupdate("vercel-env-redeploys", request.service,
                                                 lambda known: {**known, request.change_key: entry}, {})
            activity.heartbeat({"redeploy": new_id})
            deadline = time.monotonic() + api.target.poll_timeout_seconds
            while True:
                state = (await api.deployment(new_id)).get("readyState")
                activity.heartbeat({"redeploy": new_id, "readyState": state})
                if state == "READY":
                    break
                if state in ("ERROR", "CANCELED"):
                    raise fail(f"Vercel redeploy {new_id} of {api.target.project} ended {state}; the variables "
                               "were set but production still serves the previous deployment", kind="VercelJobFailed")
                if time.monotonic() > deadline:
                    raise fail(f"Vercel redeploy {new_id} still {state} after {api.target.poll_timeout_seconds:g}s; "
                               "check the dashboard", kind="VercelJobTimeout")
                await asyncio.sleep(api.target.poll_interval_seconds)
            # A project rolled back earlier does not move production to new builds by itself:
            # promote the new deployment (`vercel promote`), which also ends that state.
            await self._switch(api, "promote", new_id, "environment change")
        return EnvSetResult(provider="vercel", deployment=new_id, set=changed, removed=removed,
                            details={"redeploy": new_id, "expected_version": new_id})

    async def _rolled_away(self, service: str) -> set[str]:
        """Deployments a rollback of ours moved production away from (in the shared state store)."""
        return set(await self._config.state.aget("vercel-rolled-away", service, []))

    @activity.defn(name="vercel.capture_state")
    async def capture_state(self, request: CaptureRequest) -> CaptureResult:
        async with self._api(request.service) as api:
            project = await api.project()
            deployments, _ = await api.production_deployments()
        path = write_artifact(Path(request.artifact_dir) / "vercel-state.json",
                              json.dumps({"lastAliasRequest": project.get("lastAliasRequest"),
                                          "current": request.current.model_dump(mode="json"),
                                          "recent_production_deployments": deployments}, indent=2),
                              self._config.secrets())
        return CaptureResult(files=[str(path)])

    async def _switch(self, api: VercelApi, kind: str, deployment_id: str, description: str) -> dict:
        """POST a rollback or promote unless this activity already did, then poll it to the end."""
        info = activity.info()
        details = info.heartbeat_details[0] if info.heartbeat_details else {}
        ours = False
        if info.attempt > 1 or details:  # an earlier attempt may have POSTed before it died: look first
            started_ms = int(info.scheduled_time.timestamp() * 1000) - 5_000
            last = (await api.project()).get("lastAliasRequest") or {}
            ours = (last.get("toDeploymentId") == deployment_id and last.get("type") == kind
                    and (details.get("posted") or (last.get("requestedAt") or 0) >= started_ms))
        if not ours:
            path = (f"/v1/projects/{api.target.project}/rollback/{deployment_id}" if kind == "rollback"
                    else f"/v10/projects/{api.target.project}/promote/{deployment_id}")
            params = {"description": description} if kind == "rollback" else None
            try:
                await api.call("POST", path, params, None if kind == "rollback" else {})
            except ApplicationError as exc:
                if exc.type != "VercelConflict":
                    raise
                last = (await api.project()).get("lastAliasRequest") or {}
                if last.get("toDeploymentId") != deployment_id:
                    raise ApplicationError(f"another alias change is in progress on {api.target.project} "
                                           f"(to {last.get('toDeploymentId')}); will retry",
                                           type="VercelConflict", next_retry_delay=timedelta(seconds=2)) from None
        activity.heartbeat({"posted": True})
        deadline = time.monotonic() + api.target.poll_timeout_seconds
        while True:
            last = (await api.call("GET", f"/v9/projects/{api.target.project}", {"rollbackInfo": "true"})
                    ).get("lastAliasRequest") or {}
            status = last.get("jobStatus")
            activity.heartbeat({"posted": True, "jobStatus": status})
            if status in FINAL_JOB_STATES:
                if status != "succeeded" or last.get("toDeploymentId") != deployment_id:
                    raise fail(f"Vercel {kind} of {api.target.project} to {deployment_id} ended {status} "
                               f"(alias points to {last.get('toDeploymentId')})", kind="VercelJobFailed")
                return last
            if time.monotonic() > deadline:
                raise fail(f"Vercel {kind} to {deployment_id} still {status} after "
                           f"{api.target.poll_timeout_seconds:g}s; check the dashboard", kind="VercelJobTimeout")
            await asyncio.sleep(api.target.poll_interval_seconds)

    @activity.defn(name="vercel.execute")
    async def execute(self, request: ExecuteRequest) -> ExecuteResult:
        async with self._api(request.service) as api:
            job = await self._switch(api, "rollback", request.target.id,
                                     f"{request.reason} ({request.rollback_key})")
        await self._config.state.aupdate("vercel-rolled-away", request.service,
                                         lambda known: sorted(set(known) | {request.current.id}), [])
        return ExecuteResult(provider="vercel", details={"alias_request": job})

    @activity.defn(name="vercel.undo")
    async def undo(self, request: UndoRequest) -> ExecuteResult:
        """Promote the original deployment back (promoting undoes a rollback)."""
        async with self._api(request.service) as api:
            last = (await api.project()).get("lastAliasRequest") or {}
            if last.get("toDeploymentId") == request.current.id and last.get("jobStatus") == "succeeded":
                return ExecuteResult(provider="vercel", details={"already_serving": request.current.id})
            if last.get("jobStatus") in ("failed", "skipped") and last.get("fromDeploymentId") == request.current.id:
                return ExecuteResult(provider="vercel", details={"alias_unchanged": request.current.id})
            job = await self._switch(api, "promote", request.current.id, "undo rollback")
        return ExecuteResult(provider="vercel", details={"alias_request": job})
