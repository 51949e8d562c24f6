"""Incident classification, the plan's combination, the data-destruction parser, and the
PagerDuty activity against the contract server's 202 / 400 / 429."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.common import ConfigSource
from activities.migrations import data_destroying_statements
from activities.pagerduty import PagerDutyActivities
from workflows.models import AppVersion, BackupManifest, DataDamage, PagerDutyRequest, SchemaCheck
from workflows.policy import classify_incident, plan_incident

T0 = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)


def test_classification_names_its_rule():
    assert classify_incident("P3", "security")[0] == "P0"  # a named P0 trigger wins over what was typed
    assert classify_incident(None, "", 0.27) == ("P1", "P1: error rate 27.0% above 10 % (runbook 001)")
    assert classify_incident("P2")[0] == "P2"
    assert classify_incident(None, "cosmetic")[0] == "P3"
    assert classify_incident(None)[0] == "P1"


def test_up_scripts_that_destroy_data():
    found = data_destroying_statements("ALTER TABLE a ADD COLUMN t text; UPDATE a SET plan = NULL; "
                                       "UPDATE a SET x = 1 WHERE id = 2; DELETE FROM b WHERE id = 1;")
    assert [(f["statement"], f["table"], f.get("column")) for f in found] == [("update_all", "a", "plan")]


def manifest(backup_id: str, at: datetime, verified: bool = True) -> BackupManifest:
    return BackupManifest(backup_id=backup_id, service="web", database="shop", archive="x", size_bytes=1, sha256="0",
                          server_version="15", pg_dump_version="15", created_at=at, verified=verified)


def test_plan_restores_the_newest_verified_backup_before_the_damage():
    damage = [DataDamage(version="4", name="tiers", statement="update_all", table="accounts", column="plan",
                         applied_at=T0, applied_at_source="tracking table")]
    backups = [manifest("after", T0 + timedelta(minutes=1)), manifest("unverified", T0 - timedelta(minutes=1), False),
               manifest("good", T0 - timedelta(minutes=5)), manifest("older", T0 - timedelta(hours=1))]
    schema = SchemaCheck(checked=True, message="", target_schema_version="3", live_schema_version="4",
                         migration_rollback_needed=True)
    plan = plan_incident(AppVersion(provider="docker", id="b", label="v2"), AppVersion(provider="docker", id="a",
                         label="v1"), schema, damage, backups, data_corruption=False)
    assert plan.kind == "app+schema+restore" and plan.restore_from == "good" and plan.migration_target == "3"
    assert "cannot bring those values back" in plan.notes[0]
    none = plan_incident(None, None, None, damage, [manifest("after", T0 + timedelta(minutes=1))], False, "no image")
    assert none.kind == "none" and any("no verified backup was taken before 4" in n for n in none.notes)


async def test_pagerduty_event_contract(pagerduty, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "services": {"web": {
        "app": {"provider": "docker", "docker": {"container": "web"}}, "health": {"url": "http://127.0.0.1:9/h"},
        "notify": {"pagerduty": {"routing_key_env": "TEST_PD_ROUTING_KEY", "api_url": pagerduty.url}}}}}))
    activities = PagerDutyActivities(ConfigSource(tmp_path / "c.yaml"))
    trigger = PagerDutyRequest(service="web", key="run1:trigger", action="trigger", dedup_key="incident-web",
                               summary="P0 on web")
    pagerduty.inject.append(429)
    with pytest.raises(ApplicationError) as limited:
        await ActivityEnvironment().run(activities.event, trigger)
    assert limited.value.next_retry_delay == timedelta(seconds=30) and pagerduty.events == []
    assert await ActivityEnvironment().run(activities.event, trigger)
    assert await ActivityEnvironment().run(activities.event, trigger)  # a retry: recorded, not sent again
    assert len(pagerduty.events) == 1 and pagerduty.alerts == {"incident-web": "triggered"}
    invalid = PagerDutyRequest(service="web", key="run1:bad", action="trigger", dedup_key="x", summary="",
                               severity="critical")
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(activities.event, invalid)
    assert refused.value.non_retryable and "invalid" in str(refused.value)


def test_verification_names_critical_tables_that_lost_rows():
    from workflows.policy import rows_lost

    before = {"public.accounts": 11, "public.orders": 40}
    assert rows_lost(before, {"public.accounts": 11, "public.orders": 41}) == []  # grown is fine
    assert rows_lost(before, {"public.accounts": 9, "public.orders": 40}) == [
        "critical table public.accounts has 9 rows, had 11 before the rollback"]
    assert rows_lost(before, {}) == []  # unreadable tables are reported by the database check instead
