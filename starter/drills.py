"""Rollback drills on Temporal Schedules: one schedule per service, ID `drill-<service>`, visible
and pausable on the Temporal UI's Schedules page. The CLI's `rollback drill ...` commands and the
tests use these helpers."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
)

from workflows.drill import DrillWorkflow
from workflows.models import DrillInput

PREFIX = "drill-"
UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def schedule_id(service: str) -> str:
    return f"{PREFIX}{service}"


def parse_every(text: str) -> timedelta:
    """'90d', '12w', '6h', '30m' -> timedelta; ValueError with what to type otherwise."""
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if not match or int(match[1]) == 0:
        raise ValueError("use a positive number of minutes, hours, days or weeks, e.g. 90d, 12w, 6h")
    return int(match[1]) * UNITS[match[2]]


def drill_schedule(service: str, every: timedelta, kind: str, task_queue: str, paused: bool = False) -> Schedule:
    # Temporal counts intervals from the Unix epoch; the offset makes "every 90d" mean 90 days from
    # now (the first drill a full interval after scheduling), not from an arbitrary epoch multiple.
    offset = timedelta(seconds=int(datetime.now(timezone.utc).timestamp()) % int(every.total_seconds()))
    # Each run's workflow ID is drill-<service>-<scheduled time> (Temporal appends the time).
    # SKIP: a drill still running (a slow restore) is never overlapped by the next one.
    return Schedule(
        action=ScheduleActionStartWorkflow(
            DrillWorkflow.run, DrillInput(service=service, kind=kind, requested_by="schedule",
                                          reason=f"scheduled rollback drill (every {every})"),
            id=schedule_id(service), task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every, offset=offset)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
        state=ScheduleState(paused=paused, note=f"rollback drill of {service} ({kind}) every {every}"),
    )


async def put_schedule(client: Client, service: str, every: timedelta, kind: str,
                       task_queue: str) -> tuple[ScheduleHandle, bool]:
    """Create the service's drill schedule, or update it in place (keeping it paused if it was);
    returns the handle and whether it was created."""
    try:
        handle = await client.create_schedule(schedule_id(service), drill_schedule(service, every, kind, task_queue))
        return handle, True
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id(service))

        def updated(update_input) -> ScheduleUpdate:
            paused = update_input.description.schedule.state.paused
            return ScheduleUpdate(schedule=drill_schedule(service, every, kind, task_queue, paused=paused))

        await handle.update(updated)
        return handle, False


async def drill_schedules(client: Client) -> list[dict]:
    """Every drill schedule: service, interval, kind, paused, next run, the last run's workflow ID."""
    rows = []
    async for listed in await client.list_schedules():
        if not listed.id.startswith(PREFIX):
            continue
        description = await client.get_schedule_handle(listed.id).describe()
        schedule, info = description.schedule, description.info
        intervals = schedule.spec.intervals
        kind = None
        args = getattr(schedule.action, "args", None) or []
        try:  # a described schedule carries its input as raw payloads
            kind = (await client.data_converter.decode(list(args), [DrillInput]))[0].kind if args else None
        except Exception:  # noqa: BLE001 - a schedule someone edited by hand; listed anyway
            pass
        recent = info.recent_actions[-1] if info.recent_actions else None
        rows.append({
            "service": listed.id[len(PREFIX):], "schedule_id": listed.id,
            "every": str(intervals[0].every) if intervals else "",
            "kind": kind or "all",
            "paused": schedule.state.paused,
            "next_run": info.next_action_times[0].isoformat() if info.next_action_times and not schedule.state.paused
            else None,
            "last_started": recent.started_at.isoformat() if recent else None,
            "last_workflow_id": getattr(recent.action, "workflow_id", None) if recent else None,
        })
    return sorted(rows, key=lambda r: r["service"])
