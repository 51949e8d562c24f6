"""Hands a service's configuration (secret names only, never values) to workflows."""

from __future__ import annotations

import socket
from pathlib import Path

from temporalio import activity

from activities.common import ConfigSource
from workflows.approvals import resolve_rules
from workflows.models import ServiceContext, ServiceRef


class ConfigActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="config.service")
    async def service(self, request: ServiceRef) -> ServiceContext:
        service = self._config.service(request.service)
        info = activity.info()
        artifact_dir = Path(self._config.config.artifact_dir) / request.service / info.workflow_id / info.workflow_run_id
        # the incident artifacts index: which host's artifact_dir holds this run's files
        entry = {"service": request.service, "workflow_id": info.workflow_id, "run_id": info.workflow_run_id,
                 "directory": str(artifact_dir), "host": socket.gethostname()}
        await self._config.state.aupdate("artifacts", f"{info.workflow_id}/{info.workflow_run_id}", lambda _: entry)
        return ServiceContext(service=request.service, config=service, artifact_dir=str(artifact_dir),
                              approvers=resolve_rules(self._config.config, request.service))
