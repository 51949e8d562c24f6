"""Key rotation's side effects (runbook 002): read the old keys from the captured environment,
create or adopt the new ones, test keys against their provider, revoke old ones.

Key values stay in the worker: they are read from and written to the protected env store
(activities/envstore.py) and leave here only as store references, the ids providers assign and
shortened SHA-256 fingerprints. The provider calls live in one module per provider
(activities/twilio.py, activities/stripe.py, activities/supabase.py, activities/openai.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client
from activities.envstore import REF, EnvStore
from activities.openai import OpenAIKeys
from activities.stripe import StripeKeys
from activities.supabase import SupabaseKeys
from activities.twilio import TwilioKeys
from workflows.config import RotatedKey
from workflows.models import (KeyAdoptRequest, KeyCreateRequest, KeyMergeRequest, KeyPlanItem, KeyPlanRequest,
                              KeyRevokeRequest, KeyRevokeResult, KeyTestRequest, KeyTestResult, NewKey)


def fingerprint(value: str) -> str:
    """What history may say about a key: enough to tell two keys apart, nothing to use."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


class GenericKeys:
    """Any other API key: a person creates and revokes it; `test_url`, when configured, is a GET
    with `Authorization: Bearer <key>` that must answer 2xx."""

    can_create = False
    can_revoke = False

    def __init__(self, spec: RotatedKey, service: str):
        self.spec, self.service = spec, service

    async def test(self, client: httpx.AsyncClient, key_id: str | None, value: str) -> tuple[bool, str]:
        try:
            response = await client.get(self.spec.test_url, headers={"Authorization": f"Bearer {value}"})
        except httpx.HTTPError as exc:
            raise ApplicationError(f"{self.spec.test_url} unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise ApplicationError(f"{self.spec.test_url} answered {response.status_code}; retrying")
        return response.is_success, f"GET {self.spec.test_url}: {response.status_code}"


PROVIDERS = {"twilio": TwilioKeys, "stripe": StripeKeys, "supabase": SupabaseKeys, "openai": OpenAIKeys,
             "generic": GenericKeys}
REFERENCE = re.compile(r"(file|env|store):(.+)")


def has_test_call(spec: RotatedKey) -> bool:
    return spec.provider != "generic" or bool(spec.test_url)


class KeyActivities:
    def __init__(self, config: ConfigSource):
        self._config = config
        self._store = EnvStore(config)

    def _spec(self, service: str, name: str) -> RotatedKey:
        keys = self._config.service(service).keys
        for spec in keys:
            if spec.name == name:
                return spec
        configured = ", ".join(k.name for k in keys) or "none"
        raise fail(f"service {service!r} has no key {name!r} in its config (configured: {configured}); nothing was "
                   "changed", kind="KeyUnknown")

    def _provider(self, service: str, name: str):
        spec = self._spec(service, name)
        return spec, PROVIDERS[spec.provider](spec, service)

    def _material(self, service: str, spec: RotatedKey, value: str, key_id: str | None) -> NewKey:
        """Keep the new key in the store under each of its deployment variables."""
        values = {name: value for name in spec.env}
        if spec.id_env and key_id:
            values[spec.id_env] = key_id
        return NewKey(name=spec.name, key_id=key_id, fingerprint=fingerprint(value),
                      ref=self._store.put(service, values))

    @activity.defn(name="keys.plan")
    async def plan(self, request: KeyPlanRequest) -> list[KeyPlanItem]:
        """Each key's provider, how it is created and revoked, and the old key's id and fingerprint
        (from the captured environment, read here)."""
        configured = self._config.service(request.service).keys
        if not configured:
            raise fail(f"service {request.service!r} has no `keys` in its config; nothing to rotate", kind="KeyUnknown")
        names = request.keys or [k.name for k in configured]
        if len(set(names)) != len(names):
            raise fail(f"a key is named twice in {', '.join(names)}; nothing was changed", kind="KeyUnknown")
        self._check_legacy_together(request.service, names)
        current, _ = self._store.get(request.service, request.ref)
        items = []
        for name in names:
            spec, provider = self._provider(request.service, name)
            old = current.get(spec.env[0])
            if not old:
                raise fail(f"key {name}: variable {spec.env[0]} is not set (or not readable) in the deployment's "
                           "environment, so there is no old key to replace; nothing was changed", kind="KeyUnknown")
            old_id = current.get(spec.id_env) if spec.id_env else None
            # without the old key's id the API cannot revoke it: a person does, and the approval says so
            by_api = provider.can_revoke and (bool(old_id) or not getattr(provider, "needs_key_id", True))
            items.append(KeyPlanItem(
                name=name, provider=spec.provider, env=spec.env, id_env=spec.id_env,
                create="api" if provider.can_create else "person", revoke="api" if by_api else "person",
                test_call=has_test_call(spec), old_key_id=old_id, old_fingerprint=fingerprint(old)))
        return items

    def _check_legacy_together(self, service: str, names: list[str]) -> None:
        """Supabase disables its legacy anon and service_role keys together: rotating one alone
        would break the app that still runs with the other."""
        legacy: dict[str, list[str]] = {}
        for spec in self._config.service(service).keys:
            if spec.provider == "supabase" and (spec.kind or "").startswith("legacy_"):
                legacy.setdefault(spec.project or "", []).append(spec.name)
        for project, keys in legacy.items():
            chosen = [k for k in keys if k in names]
            if chosen and len(chosen) != len(keys):
                left = ", ".join(k for k in keys if k not in names)
                raise fail(f"Supabase disables the legacy anon and service_role keys of project {project} together: "
                           f"rotate {', '.join(keys)} in one run (not {', '.join(chosen)} without {left}); nothing "
                           "was changed", kind="KeyUnknown")

    @activity.defn(name="keys.create")
    async def create(self, request: KeyCreateRequest) -> NewKey:
        """A new key from the provider's API, kept in the store. Once per change_key: a retry
        after the create went through returns the key made then (the ledger holds ids and refs)."""
        spec, provider = self._provider(request.service, request.key)
        if not provider.can_create:
            raise fail(f"key {request.key}: {spec.provider} keys cannot be created by API here; a person provides "
                       "it (`rollback keys provide`)", kind="KeyUnknown")
        # claimed in the shared state store before the call, so a second worker waits for this one
        async with self._config.state.once("keys-created", f"{request.service}/{request.change_key}") as once:
            if once.done:
                return NewKey.model_validate(once.result)
            async with http_client(timeout=30) as client:
                key_id, value = await provider.create(client, f"{request.service} {request.key} (rollback keys rotate)")
            material = self._material(request.service, spec, value, key_id)
            once.record(material.model_dump(mode="json"))
        return material

    def _read_reference(self, service: str, key: str, reference: str) -> str:
        match = REFERENCE.fullmatch(reference.strip())
        if match is None:
            raise fail("a key reference is file:/path, env:NAME or store:REF; nothing was recorded",
                       kind="KeyReference")
        kind, where = match.groups()
        if kind == "file":
            path = Path(where)
            if not path.is_absolute():
                raise fail(f"file reference {where!r} must be an absolute path on the worker", kind="KeyReference")
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise fail(f"the worker cannot read {where}: {exc.strerror}; nothing was recorded",
                           kind="KeyReference") from None
        if kind == "env":
            value = os.environ.get(where, "").strip()
            if not value:
                raise fail(f"variable {where} is not set in the worker; nothing was recorded", kind="KeyReference")
            return value
        if not REF.fullmatch(where):
            raise fail(f"{where!r} is not a reference of the protected store", kind="KeyReference")
        values, _ = self._store.get(service, where)
        if key not in values:
            raise fail(f"stored reference {where} holds no value for {key}; nothing was recorded", kind="KeyReference")
        return values[key].strip()

    @activity.defn(name="keys.adopt")
    async def adopt(self, request: KeyAdoptRequest) -> NewKey:
        """A key a person created, read from where the reference points; refused with a one-line
        reason when it is empty, is the old key, or fails the provider's test call."""
        spec, provider = self._provider(request.service, request.key)
        value = self._read_reference(request.service, request.key, request.reference)
        if not value:
            raise fail(f"{request.reference} is empty; nothing was recorded", kind="KeyReference")
        if request.old_fingerprint and fingerprint(value) == request.old_fingerprint:
            raise fail(f"{request.reference} holds the key {request.key} already runs with, not a new one; nothing "
                       "was recorded", kind="KeyReference")
        if has_test_call(spec):
            async with http_client(timeout=30) as client:
                works, detail = await provider.test(client, None, value)
            if not works:
                raise fail(f"the key in {request.reference} does not work with {spec.provider} ({detail}); nothing "
                           "was recorded", kind="KeyReference")
        return self._material(request.service, spec, value, None)

    @activity.defn(name="keys.merge")
    async def merge(self, request: KeyMergeRequest) -> str:
        """One stored environment with every new key, so the deployment is set and rebuilt once."""
        values: dict[str, str] = {}
        for ref in request.refs:
            values.update(self._store.get(request.service, ref)[0])
        return self._store.put(request.service, values)

    @activity.defn(name="keys.test")
    async def test(self, request: KeyTestRequest) -> KeyTestResult:
        """The provider's test call with the key stored behind `ref` (a new key, or the old one in
        the captured environment)."""
        spec, provider = self._provider(request.service, request.key)
        if not has_test_call(spec):
            return KeyTestResult(key=spec.name, checked=False, detail="no provider test call configured")
        values, _ = self._store.get(request.service, request.ref)
        value = values.get(spec.env[0], "")
        async with http_client(timeout=30) as client:
            works, detail = await provider.test(client, values.get(spec.id_env) if spec.id_env else None, value)
        return KeyTestResult(key=spec.name, checked=True, works=works, detail=detail)

    @activity.defn(name="keys.revoke")
    async def revoke(self, request: KeyRevokeRequest) -> KeyRevokeResult:
        """Revoke the old key through the provider's API; a key already gone counts as revoked (a retry)."""
        spec, provider = self._provider(request.service, request.key)
        if not provider.can_revoke:
            raise fail(f"key {spec.name}: {spec.provider} keys are revoked by a person", kind="KeyUnknown")
        if not request.key_id and getattr(provider, "needs_key_id", True):
            raise fail(f"key {spec.name}: the old key's id is unknown (variable {spec.id_env} was empty); revoke it "
                       "by hand", kind="KeyUnknown")
        async with http_client(timeout=30) as client:
            deleted = await provider.revoke(client, request.key_id, compromised=request.compromised)
        if getattr(provider, "legacy", False):  # Supabase's legacy keys: one switch for the project
            return KeyRevokeResult(key=spec.name, revoked=True,
                                   detail=f"legacy anon and service_role keys of project {spec.project} disabled")
        return KeyRevokeResult(key=spec.name, revoked=True,
                               detail=f"{request.key_id} deleted" if deleted else f"{request.key_id} was already gone")
