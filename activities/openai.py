"""OpenAI API keys (runbook 002), for activities/keys.py.

Admin keys: `POST /v1/organization/admin_api_keys` `{name}` answers the new key's `id` and
`value` (shown once); `DELETE /v1/organization/admin_api_keys/{id}` revokes one. Project keys are
made only for a service account: `POST /v1/organization/projects/{p}/service_accounts/{sa}/api_keys`
(value shown once); `DELETE /v1/organization/projects/{p}/api_keys/{id}` revokes one. Managing
keys takes an admin key (`Authorization: Bearer`). A project key is tested with `GET /v1/models`;
an admin key works only on the administration endpoints, so it is tested by listing admin keys.

OpenAI's error messages repeat part of the key ("Incorrect API key provided: sk-abc***xyz"):
only the error's type and code are ever repeated here.
"""

from __future__ import annotations

import httpx
from temporalio.exceptions import ApplicationError

from activities.common import fail, resolve_secret
from workflows.config import RotatedKey


class OpenAIKeys:
    can_create = True
    can_revoke = True
    needs_key_id = True

    def __init__(self, spec: RotatedKey, service: str):
        self.spec, self.service = spec, service
        self.admin = spec.kind == "admin"

    async def _send(self, client: httpx.AsyncClient, method: str, path: str, key: str,
                    body: dict | None = None) -> httpx.Response:
        try:
            response = await client.request(method, f"{self.spec.base_url()}{path}", json=body,
                                            headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:
            raise ApplicationError(f"OpenAI API unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise ApplicationError(f"OpenAI API answered {response.status_code} ({_why(response)}); retrying")
        return response

    def _admin_key(self) -> str:
        return resolve_secret(self.spec.admin_token_env or "", self.service)

    def _refused(self, response: httpx.Response, what: str) -> ApplicationError:
        if response.status_code in (401, 403):
            return fail(f"OpenAI refused the admin key in {self.spec.admin_token_env} ({response.status_code}, "
                        f"{_why(response)}) while trying to {what}; nothing was changed there", kind="ProviderRefused")
        return fail(f"OpenAI refused to {what} ({response.status_code}, {_why(response)})", kind="ProviderRefused")

    async def create(self, client: httpx.AsyncClient, name: str) -> tuple[str, str]:
        if self.admin:
            path, what = "/v1/organization/admin_api_keys", f"create an admin key for {self.spec.name}"
        else:
            path = (f"/v1/organization/projects/{self.spec.project}/service_accounts/{self.spec.service_account}"
                    "/api_keys")
            what = f"create a key for service account {self.spec.service_account} of project {self.spec.project}"
        response = await self._send(client, "POST", path, self._admin_key(), {"name": name})
        if response.status_code not in (200, 201):
            raise self._refused(response, what)
        body = response.json()
        return body["id"], body["value"]

    async def revoke(self, client: httpx.AsyncClient, key_id: str | None, compromised: bool = False) -> bool:
        """True when this call deleted the key, False when it was already gone (a retry)."""
        path = f"/v1/organization/admin_api_keys/{key_id}" if self.admin else \
            f"/v1/organization/projects/{self.spec.project}/api_keys/{key_id}"
        response = await self._send(client, "DELETE", path, self._admin_key())
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._refused(response, f"delete key {key_id} of {self.spec.name}")

    def test_path(self) -> str:
        return "/v1/organization/admin_api_keys?limit=1" if self.admin else "/v1/models"

    async def test(self, client: httpx.AsyncClient, key_id: str | None, value: str) -> tuple[bool, str]:
        if self.spec.test_url:
            url = self.spec.test_url
        else:
            url = f"{self.spec.base_url()}{self.test_path()}"
        try:
            response = await client.get(url, headers={"Authorization": f"Bearer {value}"})
        except httpx.HTTPError as exc:
            raise ApplicationError(f"OpenAI API unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise ApplicationError(f"OpenAI API answered {response.status_code}; retrying")
        if response.is_success:
            return True, f"GET {url}: {response.status_code}"
        return False, f"GET {url}: {response.status_code} ({_why(response)})"


def _why(response: httpx.Response) -> str:
    """The error's type and code: OpenAI's message repeats part of the key."""
    try:
        error = response.json().get("error") or {}
        return f"{error.get('type') or ''} {error.get('code') or ''}".strip() or "no error type"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"
