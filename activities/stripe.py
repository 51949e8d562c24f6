"""Stripe secret keys (runbook 002). Stripe's GA API cannot create or revoke secret keys (the
Dashboard does: "Roll key"), so a person does both; the worker tests a key with
`GET /v1/balance` (basic auth, the key as user): 200 for a live key, 401 for an expired or
unknown one."""

from __future__ import annotations

import httpx
from temporalio.exceptions import ApplicationError

from workflows.config import RotatedKey


class StripeKeys:
    can_create = False
    can_revoke = False

    def __init__(self, spec: RotatedKey, service: str):
        self.spec, self.service = spec, service

    async def test(self, client: httpx.AsyncClient, key_id: str | None, value: str) -> tuple[bool, str]:
        try:
            response = await client.get(f"{self.spec.base_url()}/v1/balance", auth=(value, ""))
        except httpx.HTTPError as exc:
            raise ApplicationError(f"Stripe API unreachable: {type(exc).__name__}") from None
        if response.status_code == 200:
            return True, "GET /v1/balance: 200"
        if response.status_code == 429 or response.status_code >= 500:
            raise ApplicationError(f"Stripe API answered {response.status_code}; retrying")
        try:  # type and code only: Stripe's message repeats part of the key
            error = response.json().get("error") or {}
            why = f"{error.get('type', '')} {error.get('code', '')}".strip()
        except ValueError:
            why = ""
        return False, f"GET /v1/balance: {response.status_code} ({why or 'no error body'})"

