"""What Temporal's visibility store says about earlier runs: how many automatic rollbacks of a
service started lately (the cooldown and the hourly cap).

Asked by the rollback itself, in the worker, rather than by the alert receiver before it starts
the run: the receiver's answer then waits for the durable start only, not for two visibility
queries (slow under an alert storm, and eventually consistent anyway)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from temporalio import activity
from temporalio.client import Client

from activities.common import ConfigSource
from workflows.models import RecentRollbacks, ServiceRef


def _since(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class VisibilityActivities:
    def __init__(self, client: Client, config: ConfigSource):
        self._client = client
        self._config = config

    async def _count(self, service: str, since: datetime, but_run: str) -> int:
        query = (f"RollbackService = '{service}' AND RollbackTrigger = 'automatic' "
                 f"AND StartTime > '{_since(since)}' AND RunId != '{but_run}'")
        return (await self._client.count_workflows(query)).count

    @activity.defn(name="visibility.recent_automatic_rollbacks")
    async def recent_automatic_rollbacks(self, request: ServiceRef) -> RecentRollbacks:
        """Other automatic rollbacks of the service within its cooldown and within the last hour
        (this run itself not counted)."""
        policy = self._config.service(request.service).policy
        now, me = datetime.now(timezone.utc), activity.info().workflow_run_id
        in_cooldown = await self._count(request.service, now - policy.cooldown, me)
        in_hour = await self._count(request.service, now - timedelta(hours=1), me)
        return RecentRollbacks(in_cooldown=in_cooldown, in_hour=in_hour,
                               limit_reached=in_cooldown > 0 or in_hour >= policy.max_auto_rollbacks_per_hour)
