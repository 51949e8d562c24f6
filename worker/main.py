"""The worker process: loads config, registers every workflow and activity, runs until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.audit import AuditActivities
from activities.assess import AssessActivities
from activities.capture import CaptureActivities
from activities.common import ConfigSource
from activities.config import ConfigActivities
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
from activities.statuspage import StatuspageActivities
from activities.supabase import SupabaseActivities
from activities.vercel import VercelActivities
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
    ]
    found = []
    for obj in objects:
        for name in dir(obj):
            attr = getattr(obj, name)
            if callable(attr) and hasattr(attr, "__temporal_activity_definition"):
                found.append(attr)
    return found


def build_worker(client: Client, config: ConfigSource, task_queue: str, replace: list | None = None,
                 **options) -> Worker:
    """The worker; `replace` swaps activities for stand-ins registered under the same names, and
    `options` go to temporalio's Worker as they are (tests: interceptors, no workflow cache)."""
    replaced = {fn.__temporal_activity_definition.name for fn in replace or []}
    activities = [fn for fn in activities_for(config, client) if fn.__temporal_activity_definition.name not in replaced]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[*activities, *(replace or [])],
        # the migration activities are synchronous (psycopg, Alembic) and run in these threads
        activity_executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="activity"),
        # Activities that are mid-step when SIGTERM arrives get this long to finish or heartbeat out.
        graceful_shutdown_timeout=timedelta(seconds=30),
        **options,
    )


async def run_worker(client: Client, config: ConfigSource, task_queue: str, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop taking work and let running activities finish."""
    worker = build_worker(client, config, task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    log.info("worker started task_queue=%s namespace=%s", task_queue, client.namespace)
    async with worker:
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("worker stopping: letting running activities finish")
    log.info("worker stopped")
