"""The protected store of environment values: the only place a deployment's env values are kept.

Temporal history is plain text, so workflows only ever see an `EnvSnapshot`: names, keyed
hashes and a `ref`. The values behind a ref live in a 0600 file under
``<state_dir>/env/<service>/values/<ref>.json``, written by the worker and read by it alone, or,
with a shared state database (`state_dsn_env`), in that database (kind `env-values`), so any
worker can read them: protect that database like the secrets it holds.

For a key rotation (or anything else that must set a secret): `EnvStore.put` the new value in
the worker, pass the returned ref to the provider's ``<provider>.env_set`` activity
(`EnvSetRequest(service=S, ref=R, names=[NAME], change_key=K)`): it sets NAME to the value
behind R and redeploys, so the value never crosses a workflow boundary.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from temporalio import activity

from activities.common import ConfigSource, fail, open_private, read_json
from workflows.models import EnvSnapshot, EnvSnapshotRequest

REF = re.compile(r"[0-9a-f]{32}")
# Snapshots kept per service (each a small metadata line; the value files they point at stay
# until a person prunes them, so an old deployment's environment can always be put back).
KEEP_SNAPSHOTS = 200


class EnvStore:
    """Values in 0600 files on the worker's disk; with a shared state database (`state_dsn_env`)
    in that database instead, so every worker can put back what another one recorded."""

    def __init__(self, config: ConfigSource):
        self._config = config
        self._shared = config.config.state_dsn_env is not None

    def _dir(self, service: str) -> Path:
        directory = Path(self._config.config.state_dir) / "env" / service / "values"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory

    def _key(self) -> bytes:
        """The store's hashing key: hashes in history are keyed, so a short value ("true", a
        4-digit PIN) cannot be found again by hashing guesses."""
        if self._shared:  # read it; only the first worker ever writes it
            known = self._config.state.get("env-secrets", "hash-key") or self._config.state.update(
                "env-secrets", "hash-key", lambda known: known or os.urandom(32).hex())
            return bytes.fromhex(known)
        path = self._config.state_path("env", "hash.key")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
        return path.read_bytes()

    def hashes(self, values: dict[str, str]) -> dict[str, str]:
        key = self._key()
        return {name: hmac.new(key, value.encode(), hashlib.sha256).hexdigest() for name, value in values.items()}

    def put(self, service: str, values: dict[str, str], meta: dict[str, dict] | None = None) -> str:
        """Keep `values` (and per-variable provider details such as Vercel's type) privately;
        the ref is derived from the content, so storing the same environment twice is one file."""
        document = json.dumps({"values": values, "meta": meta or {}}, sort_keys=True)
        ref = hmac.new(self._key(), document.encode(), hashlib.sha256).hexdigest()[:32]
        if self._shared:
            self._config.state.update("env-values", f"{service}/{ref}", lambda known: known or document)
            return ref
        path = self._dir(service) / f"{ref}.json"
        if not path.exists():
            with open_private(path) as fh:
                fh.write(document)
        return ref

    def get(self, service: str, ref: str) -> tuple[dict[str, str], dict[str, dict]]:
        if not REF.fullmatch(ref or ""):
            raise fail(f"{ref!r} is not an environment reference of this store; nothing was changed",
                       kind="EnvRefUnknown")
        if self._shared:
            stored = self._config.state.get("env-values", f"{service}/{ref}")
            if stored is None:
                raise fail(f"service {service!r}: no stored environment {ref} in the state database; nothing was "
                           "changed", kind="EnvRefUnknown")
            document = json.loads(stored)
            return document["values"], document.get("meta") or {}
        path = self._dir(service) / f"{ref}.json"
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise fail(f"service {service!r}: no stored environment {ref} in {path.parent}; nothing was changed",
                       kind="EnvRefUnknown") from None
        return document["values"], document.get("meta") or {}

    # -- snapshots: which deployment ran with which environment ---------------------------------
    # (the index lives in the shared state store, so every worker sees it; the values stay in the
    # protected files above)
    SNAPSHOTS = "env-snapshots"

    def snapshots(self, service: str) -> list[EnvSnapshot]:
        """Oldest first."""
        return [EnvSnapshot.model_validate(item) for item in self._config.state.get(self.SNAPSHOTS, service, [])]

    def record(self, service: str, provider: str, deployment: str, label: str, values: dict[str, str],
               meta: dict[str, dict] | None = None, healthy: bool | None = None, reason: str = "",
               unreadable: list[str] = ()) -> EnvSnapshot:
        """Store the values and note that `deployment` ran with them. A variable whose value cannot
        be read back (Vercel's sensitive type) is recorded by name with the hash "unreadable"."""
        ref = self.put(service, values, meta)
        hashes = {**self.hashes(values), **{name: "unreadable" for name in unreadable}}
        snapshot = EnvSnapshot(service=service, provider=provider, deployment=deployment, label=label,
                               taken_at=datetime.now(timezone.utc), hashes=dict(sorted(hashes.items())), ref=ref,
                               healthy=healthy, reason=reason)
        def add(known: list) -> list:
            earlier = [EnvSnapshot.model_validate(item) for item in known]
            same = [s for s in earlier if s.deployment == deployment and s.ref == ref]
            if healthy is None and same:  # a later look without a health verdict keeps the earlier verdict
                snapshot.healthy = same[-1].healthy
            kept = [s for s in earlier if not (s.deployment == deployment and s.ref == ref)] + [snapshot]
            return [s.model_dump(mode="json") for s in kept[-KEEP_SNAPSHOTS:]]

        self._config.state.update(self.SNAPSHOTS, service, add, [])
        return snapshot

    def find(self, service: str, deployment: str) -> EnvSnapshot:
        """The newest snapshot of `deployment` (an id, or a unique prefix of one)."""
        known = self.snapshots(service)
        matches = [s for s in known if s.deployment == deployment]
        if not matches and deployment:
            matches = [s for s in known if s.deployment.startswith(deployment)]
        if not matches:
            listed = ", ".join(dict.fromkeys(s.deployment for s in reversed(known))) or "none yet"
            raise fail(f"service {service!r}: no recorded environment for deployment {deployment!r} (recorded: "
                       f"{listed}; see `rollback env diff {service}`); nothing was changed", kind="EnvUnknown")
        if len({s.deployment for s in matches}) > 1:
            raise fail(f"deployment {deployment!r} is ambiguous for service {service!r}: give more of the id",
                       kind="EnvUnknown")
        return matches[-1]

    def last_good(self, service: str, current: str) -> EnvSnapshot | None:
        """The newest environment of another deployment that was healthy when recorded."""
        return next((s for s in reversed(self.snapshots(service))
                     if s.deployment != current and s.healthy), None)

    # -- what this tool set: Vercel's sensitive values cannot be read back -------------------------
    def remember(self, service: str, values: dict[str, str]) -> None:
        if self._shared:
            self._config.state.update("env-set-by-us", service, lambda known: {**(known or {}), **values})
            return
        path = self._config.state_path("env", service, "set-by-us.json")
        known = read_json(path, {})
        known.update(values)
        with open_private(path) as fh:
            json.dump(known, fh)

    def recall(self, service: str) -> dict[str, str]:
        if self._shared:
            return self._config.state.get("env-set-by-us", service, {})
        return read_json(self._config.state_path("env", service, "set-by-us.json"), {})


class EnvStoreActivities:
    def __init__(self, config: ConfigSource):
        self._store = EnvStore(config)

    @activity.defn(name="env.snapshot")
    async def snapshot(self, request: EnvSnapshotRequest) -> EnvSnapshot:
        """The recorded environment of a deployment, or the last good one before `current`."""
        if request.deployment:
            return self._store.find(request.service, request.deployment)
        found = self._store.last_good(request.service, request.current)
        if found is None:
            raise fail(f"service {request.service!r}: no environment of an earlier healthy deployment is recorded; "
                       f"pass --to DEPLOYMENT (see `rollback env diff {request.service}`)", kind="EnvUnknown")
        return found

    @activity.defn(name="env.last_good")
    async def last_good(self, request: EnvSnapshotRequest) -> EnvSnapshot | None:
        return self._store.last_good(request.service, request.current)
