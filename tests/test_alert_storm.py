"""An alert storm on one open rollback: 20,000 alerts with distinct fingerprints, as Alertmanager
sends them (grouped, 10 per delivery). Every delivery is answered 2xx, every alert is counted on
the run, and the run's history, status and result stay small."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import running_worker
from tests.helpers import assert_eventually, wait_for_phase
from tests.receiver import receiver, signed_headers  # noqa: F401 - receiver is a fixture
from workflows import AppRollbackWorkflow
from workflows.base import MAX_DISTINCT_ALERTS, TIMELINE_HEAD, TIMELINE_TAIL
from workflows.models import AppRollbackResult, ApprovalInput, RollbackStatus

DELIVERIES, PER_DELIVERY, AT_ONCE = 2_000, 10, 20


def delivery(n: int) -> bytes:
    alerts = [{"status": "firing", "labels": {"alertname": "HighErrorRate", "service": "shop", "pod": f"web-{n}-{i}",
                                              "severity": "critical"},
               "annotations": {"summary": f"pod web-{n}-{i} 5xx", "value": "0.23"},
               "startsAt": "2026-11-25T14:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
               "fingerprint": f"{n:05d}{i:02d}"} for i in range(PER_DELIVERY)]
    return json.dumps({"version": "4", "groupKey": f"{{}}:{{pod=\"{n}\"}}", "status": "firing", "receiver": "rollback",
                       "groupLabels": {}, "commonLabels": {"service": "shop"}, "commonAnnotations": {},
                       "externalURL": "http://127.0.0.1:9093", "alerts": alerts}).encode()


async def test_twenty_thousand_alerts_on_one_open_run(receiver, client, task_queue, vercel):
    hook = receiver(policy={"app_approval": "always"})
    handle = client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult)
    async with running_worker(client, hook.config, task_queue), hook.http() as http:
        first = await http.post("/alerts/alertmanager", content=delivery(0),
                                headers=signed_headers("alertmanager", delivery(0)))
        assert first.status_code == 202 and first.json()["alerts"][0]["started"]
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        statuses: list[int] = []
        limit = asyncio.Semaphore(AT_ONCE)

        async def send(n: int) -> None:
            raw = delivery(n)
            async with limit:
                answer = await http.post("/alerts/alertmanager", content=raw,
                                         headers=signed_headers("alertmanager", raw))
            statuses.append(answer.status_code)

        await asyncio.gather(*(send(n) for n in range(1, DELIVERIES)))
        assert set(statuses) <= {200, 202} and len(statuses) == DELIVERIES - 1

        async def all_counted() -> bool:
            status = await handle.query(AppRollbackWorkflow.status, result_type=RollbackStatus)
            return status.alerts_received == DELIVERIES * PER_DELIVERY

        await assert_eventually(all_counted, timeout=120, interval=1, message="every alert counted on the run")
        status = await handle.query(AppRollbackWorkflow.status, result_type=RollbackStatus)
        await handle.execute_update(AppRollbackWorkflow.reject, ApprovalInput(approver="oncall", reason="storm test"))
        result = await handle.result()
    history = [e async for e in handle.fetch_history_events()]
    print(f"storm: {len(history)} history events, status {len(status.model_dump_json())} bytes")
    assert len(history) < 5_000, len(history)
    # every alert is counted on the run (itemised for at most 1000 fingerprints), and the receiver
    # keeps each one it forwarded: all but the one that started the run, none twice
    archive = Path(hook.config.config.state_dir) / "webhook" / "alerts" / f"{receiver.workflow_id}.jsonl"
    archived = [json.loads(line)["alert"]["fingerprint"] for line in archive.read_text().splitlines()]
    assert status.alerts_distinct <= MAX_DISTINCT_ALERTS
    assert len(archived) == len(set(archived)) == DELIVERIES * PER_DELIVERY - 1
    assert len(status.model_dump_json()) < 200_000 and len(status.timeline) <= TIMELINE_HEAD + TIMELINE_TAIL + 1
    assert len(result.model_dump_json()) < 200_000
    assert vercel.count("POST", "/rollback/") == 0  # one run, waiting: the storm started nothing else
