"""Twilio API keys (runbook 002): create a key, revoke one, and a test call that tells a working
key from a revoked one.

`POST /2010-04-01/Accounts/{AC}/Keys.json` (FriendlyName) answers `{sid: SK…, secret}`, the secret
shown once; `DELETE …/Keys/{SK}.json` revokes; a key is tested with basic auth `SK…:secret` on
`GET …/Messages.json?PageSize=1` (a deleted key gives 401 with error 20003). Creating and deleting
use the account's own credentials (account SID and auth token).
"""

from __future__ import annotations

import httpx
from temporalio.exceptions import ApplicationError

from activities.common import fail, resolve_secret
from workflows.config import RotatedKey


class TwilioKeys:
    can_create = True
    can_revoke = True

    def __init__(self, spec: RotatedKey, service: str):
        self.spec, self.service = spec, service

    def _url(self, path: str) -> str:
        return f"{self.spec.base_url()}/2010-04-01/Accounts/{self.spec.account}{path}"

    def _admin(self) -> tuple[str, str]:
        return self.spec.account or "", resolve_secret(self.spec.admin_token_env or "", self.service)

    async def _send(self, client: httpx.AsyncClient, method: str, path: str, auth, data=None) -> httpx.Response:
        try:
            response = await client.request(method, self._url(path), auth=auth, data=data)
        except httpx.HTTPError as exc:
            raise ApplicationError(f"Twilio API unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise ApplicationError(f"Twilio API answered {response.status_code} ({_code(response)}); retrying")
        return response

    def _refused(self, response: httpx.Response, what: str) -> ApplicationError:
        if response.status_code == 401:
            return fail(f"Twilio refused account {self.spec.account} with the auth token in "
                        f"{self.spec.admin_token_env} ({_code(response)}) while trying to {what}; nothing was "
                        "changed there", kind="ProviderRefused")
        return fail(f"Twilio refused to {what} ({response.status_code}, {_code(response)})", kind="ProviderRefused")

    async def create(self, client: httpx.AsyncClient, friendly_name: str) -> tuple[str, str]:
        response = await self._send(client, "POST", "/Keys.json", self._admin(), {"FriendlyName": friendly_name})
        if response.status_code != 201:
            raise self._refused(response, f"create a key for {self.spec.name}")
        body = response.json()
        return body["sid"], body["secret"]

    async def revoke(self, client: httpx.AsyncClient, key_id: str, compromised: bool = False) -> bool:
        """True when this call deleted the key, False when it was already gone (a retry)."""
        response = await self._send(client, "DELETE", f"/Keys/{key_id}.json", self._admin())
        if response.status_code == 204:
            return True
        if response.status_code == 404:
            return False
        raise self._refused(response, f"delete key {key_id} of {self.spec.name}")

    async def test(self, client: httpx.AsyncClient, key_id: str | None, value: str) -> tuple[bool, str]:
        if not key_id:
            return False, f"no key sid (variable {self.spec.id_env} is empty)"
        response = await self._send(client, "GET", "/Messages.json?PageSize=1", (key_id, value))
        if response.status_code == 200:
            return True, f"GET Messages.json with {key_id}: 200"
        return False, f"GET Messages.json with {key_id}: {response.status_code} ({_code(response)})"


def _code(response: httpx.Response) -> str:
    """Twilio's error code and message (they never echo a credential)."""
    try:
        body = response.json()
        return f"error {body.get('code')}: {str(body.get('message', ''))[:200]}"
    except ValueError:
        return f"HTTP {response.status_code}"
