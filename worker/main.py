"""The worker process: loads config, registers every workflow and activity, runs until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.audit import AuditActivities
from activities.assess import AssessActivities
from activities.capture import CaptureActivities
from activities.common import ConfigSource
from activities.config import ConfigActivities
from activities.drills import DrillActivities
from activities.docker import ComposeActivities, DockerActivities
from activities.envstore import EnvStoreActivities
from activities.keys import KeyActivities
from activities.flags import FlagActivities
from activities.git import GitActivities
from activities.health import HealthActivities
from activities.locks import LockActivities
from activities.migrations import MigrationActivities
from activities.notify import NotifyActivities
from activities.pagerduty import PagerDutyActivities
from activities.pitr import PitrActivities
from activities.backups import BackupActivities
from activities.postgres import PostgresActivities, RestoreActivities
from activities.state import import_legacy_files
from activities.statuspage import StatuspageActivities
from activities.supabase import SupabaseActivities
from activities.vercel import VercelActivities
from activities.visibility import VisibilityActivities
from workflows import WORKFLOWS

log = logging.getLogger("rollback.worker")


def activities_for(config: ConfigSource, client: Client) -> list:
    """Every activity, bound to the clients and config it needs."""
    objects = [
        LockActivities(client, config),
        ConfigActivities(config),
        HealthActivities(config),
        DockerActivities(config),
        ComposeActivities(config),
        VercelActivities(config),
        EnvStoreActivities(config),
        KeyActivities(config),
        GitActivities(config),
        PostgresActivities(config),
        RestoreActivities(config),
        BackupActivities(config),
        MigrationActivities(config),
        FlagActivities(config),
        PitrActivities(config),
        SupabaseActivities(config),
        NotifyActivities(config),
        StatuspageActivities(config),
        PagerDutyActivities(config),
        AssessActivities(config),
        CaptureActivities(config),
        AuditActivities(config),
        VisibilityActivities(client, config),
        DrillActivities(config),
    ]
    found = []
    for obj in objects:
        for name in dir(obj):
            attr = getattr(obj, name)
            if callable(attr) and hasattr(attr, "__temporal_activity_definition"):
                found.append(attr)
    return found


async def prepare_state(config: ConfigSource) -> None:
    """Open the state store (creating its table), bring in JSON ledgers an older version wrote,
    and prune idempotency records past `state_retention_days`."""
    settings = config.config
    store = await asyncio.to_thread(lambda: config.state)
    imported = await asyncio.to_thread(import_legacy_files, settings, store)
    pruned = await asyncio.to_thread(store.prune, settings.state_retention_days * 86400)
    log.info("state store %s: %d legacy file(s) imported, %d old record(s) pruned",
             type(store).__name__, imported, pruned)


# The sandbox still refuses non-deterministic calls (clocks, randomness, I/O) in workflow code, but
# no longer re-imports the workflow modules for every run: that cost each new run (every alert's
# rollback, every lock) about 60 ms of CPU before its first step. The modules it passes through
# hold no mutable state (tests/workflows/test_replay.py checks that).
WORKFLOW_RUNNER = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules())


def build_worker(client: Client, config: ConfigSource, task_queue: str, replace: list | None = None,
                 **options) -> Worker:
    """The worker; `replace` swaps activities for stand-ins registered under the same names, and
    `options` go to temporalio's Worker as they are (tests: interceptors, no workflow cache)."""
    replaced = {fn.__temporal_activity_definition.name for fn in replace or []}
    # Activities that are mid-step when SIGTERM arrives get this long to finish or heartbeat out;
    # `rollback worker --shutdown-grace` raises it where the platform waits longer (Kubernetes).
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=30))
    activities = [fn for fn in activities_for(config, client) if fn.__temporal_activity_definition.name not in replaced]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[*activities, *(replace or [])],
        # the migration activities are synchronous (psycopg, Alembic) and run in these threads
        activity_executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="activity"),
        workflow_runner=WORKFLOW_RUNNER,
        **options,
    )


async def run_worker(client: Client, config: ConfigSource, task_queue: str, ready: asyncio.Event | None = None,
                     shutdown_grace: timedelta = timedelta(seconds=30)) -> None:
    """Run until SIGTERM or SIGINT, then stop taking work and give running activities
    `shutdown_grace` to finish before they are cancelled."""
    worker = build_worker(client, config, task_queue, graceful_shutdown_timeout=shutdown_grace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await prepare_state(config)
    codec = client.data_converter.payload_codec
    payloads = f"encrypted with key {codec.key_ids[0]}" if hasattr(codec, "key_ids") else "plain text (no codec)"
    log.info("worker started task_queue=%s namespace=%s payloads=%s", task_queue, client.namespace, payloads)
    # Everything imported and built so far lives as long as the process: out of the collector's
    # sight, a full collection takes microseconds instead of ~100 ms, a pause that otherwise lands
    # at random in the middle of a rollback's steps.
    gc.freeze()
    async with worker:
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("worker stopping: letting running activities finish (up to %ss)", int(shutdown_grace.total_seconds()))
    log.info("worker stopped")
