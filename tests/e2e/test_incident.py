"""The full emergency on real parts (Temporal, Docker, PostgreSQL; Slack, Statuspage and
PagerDuty contract servers): demo app v1 on migrations 1-3 with data; a bad v2 applies migration
4, which adds a column and erases `plan` with an UPDATE without WHERE. An alert declares the
incident; it classifies, pages, stabilises, plans migration rollback + restore from the backup
taken before migration 4 + app rollback, executes after one approval, verifies, puts the switch
back, resolves; the post-mortem has the four durations and the erased values are back."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from activities.docker import DeployLedger, deploy
from activities.migrations import apply_up
from starter import engines
from starter.start import start_or_signal_incident
from tests.conftest import running_worker
from tests.helpers import assert_eventually, create_database, kinds, set_postgres_flag, wait_for_phase
from tests.migration_sets import columns, write_migrations
from workflows import BackupWorkflow, IncidentWorkflow
from workflows.models import (AlertNotice, ApprovalInput, BackupInput, BackupManifest, IncidentInput, IncidentResult,
                             ResolveInput)

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

MIGRATIONS = [
    ("create_accounts", "CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL, "
                        "created_at timestamptz NOT NULL DEFAULT now());", "DROP TABLE accounts;"),
    ("add_plan", "ALTER TABLE accounts ADD COLUMN plan text;", "ALTER TABLE accounts DROP COLUMN plan;"),
    ("create_audit", "CREATE TABLE audit (id serial PRIMARY KEY, note text);", "DROP TABLE audit;"),
    # the bad release: a schema change and an UPDATE without WHERE that erases every plan
    ("tiers", "ALTER TABLE accounts ADD COLUMN tier text;\nUPDATE accounts SET plan = NULL;",
     "ALTER TABLE accounts DROP COLUMN tier;"),
]


def schema_image(client, version: str, schema: str) -> str:
    """The demo app image, declaring the schema version it expects (the label the schema check reads)."""
    changes = ['CMD ["/bin/sh", "-c", "exec /bin/httpd -f -p 127.0.0.1:${PORT:-18080} -h /www"]',
               f"LABEL org.opencontainers.image.version={version}", f"LABEL io.rollback.schema-version={schema}"]
    client.api.import_image_from_data(engines.demo_rootfs(version), repository="demo-schema", tag=version,
                                      changes=changes)
    return client.images.get(f"demo-schema:{version}").id




class Production:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def plans(self) -> list:
        with psycopg.connect(self.dsn) as conn:
            return [r[0] for r in conn.execute("SELECT plan FROM accounts ORDER BY id")]

    def flag(self) -> str | None:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT value FROM rollback_flags WHERE name = 'PROCESSING_ENABLED'").fetchone()
            return row[0] if row else None

    def snapshot(self) -> dict:
        """Everything a dry run must leave alone."""
        container = self.docker.containers.get(self.name)
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT id, email, plan, tier FROM accounts ORDER BY id").fetchall()
            flags = conn.execute("SELECT name, value FROM rollback_flags ORDER BY 1").fetchall()
            tracking = conn.execute("SELECT version FROM rollback_schema_migrations ORDER BY 1").fetchall()
        with psycopg.connect(self.admin) as conn:
            databases = sorted(r[0] for r in conn.execute("SELECT datname FROM pg_database"))
        return {"container": (container.id, container.attrs["Image"], container.status),
                "containers": sorted(c.name for c in self.docker.containers.list(all=True)),
                "rows": rows, "flags": flags, "tracking": tracking, "databases": databases,
                "backups": sorted(p.name for p in Path(self.backup_dir).glob("*")),
                "slack": list(self.slack.messages), "pagerduty": list(self.pagerduty.events),
                "statuspage": json.dumps(self.statuspage.incidents, sort_keys=True)}


@pytest.fixture
def production(docker_engine, postgres, write_config, monkeypatch, tmp_path, slack, statuspage, pagerduty):
    images = {"v1": schema_image(docker_engine.client, "v1", "3"), "v2": schema_image(docker_engine.client, "v2", "4")}
    name, port = f"web-{uuid.uuid4().hex[:8]}", engines.free_port()
    _, dsn = create_database(postgres, "shop")
    monkeypatch.setenv("TEST_SHOP_DSN", dsn)
    directory = tmp_path / "migrations"
    write_migrations("plain", directory, MIGRATIONS)
    assert apply_up(dsn, "plain", directory, to="3") == ["1", "2", "3"]
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO accounts (email, plan) SELECT 'user' || g || '@example.com', "
                     "CASE WHEN g <= 4 THEN 'pro' ELSE 'free' END FROM generate_series(1, 10) g")
    set_postgres_flag(dsn, "PROCESSING_ENABLED", "true")
    health = f"http://127.0.0.1:{port}/health"
    config = write_config({"web": {
        "app": {"provider": "docker", "docker": {"container": name, "docker_host": docker_engine.address,
                                                 "stop_timeout": 2}},
        "health": {"url": health, "version_url": f"http://127.0.0.1:{port}/version", "consecutive_checks": 2,
                   "interval_seconds": 0.3, "timeout_seconds": 1},
        "database": {"dsn_env": "TEST_SHOP_DSN", "migration_tool": "plain", "migrations_dir": str(directory),
                     "backup_dir": str(tmp_path / "backups"), "critical_tables": ["accounts"],
                     "verify_sql": ["SELECT count(*) > 0 FROM accounts"]},
        "kill_switches": [{"name": "PROCESSING_ENABLED", "store": "postgres"}],
        "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK", "escalation_slack_webhook_env": "TEST_SLACK_WEBHOOK",
                   "statuspage": {"page_id": statuspage.page_id, "api_key_env": "TEST_STATUSPAGE_KEY",
                                  "component_id": "cmp_web", "api_url": statuspage.url},
                   "pagerduty": {"routing_key_env": "TEST_PD_ROUTING_KEY", "api_url": pagerduty.url}},
        "incident": {"response_times": {"P1": "PT1S"}, "watch_period": "PT1S", "critical_endpoints": [health]},
    }})
    docker_engine.client.containers.run(images["v1"], name=name, detach=True, network_mode="host", init=True,
                                        environment={"PORT": str(port)}, labels={"io.rollback.test": "1"})
    ledger = DeployLedger.of(config.config, "web")
    ledger.record(images["v1"], "demo-schema:v1")
    return Production(config=config, dsn=dsn, admin=postgres, directory=directory, name=name, port=port,
                      images=images, ledger=ledger, docker=docker_engine.client, backup_dir=str(tmp_path / "backups"),
                      slack=slack, statuspage=statuspage, pagerduty=pagerduty)


async def release_bad_v2(client, task_queue, site) -> BackupManifest:
    """The nightly backup, then the bad release: v2 and its migration 4."""
    backup = await client.execute_workflow(BackupWorkflow.run, BackupInput(service="web", reason="nightly"),
                                           id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=BackupManifest)
    with psycopg.connect(site.dsn) as conn:  # a customer signs up after the backup
        conn.execute("INSERT INTO accounts (email, plan) VALUES ('late@example.com', 'pro')")
    assert apply_up(site.dsn, "plain", site.directory) == ["4"]
    deploy(site.docker, site.name, site.images["v2"], site.ledger)
    assert site.plans() == [None] * 11
    return backup


async def test_full_emergency_from_alert_to_postmortem(client, task_queue, production):
    site = production
    async with running_worker(client, site.config, task_queue):
        backup = await release_bad_v2(client, task_queue, site)
        handle = await start_or_signal_incident(
            client, task_queue, IncidentInput(service="web", reason="error ratio 27 % after v2", error_rate=0.27,
                                              automatic=True, requested_by="alertmanager"),
            AlertNotice(source="alertmanager", summary="DemoErrorRatioHigh", fingerprint="f1"))
        await wait_for_phase(handle, "awaiting_approval", timeout=120)
        state = await handle.query(IncidentWorkflow.status)
        # classified with its rule, stabilised: switch off, emergency backup verified
        assert state.severity == "P1" and "error rate 27.0% above 10 %" in state.rule
        assert site.flag() == "false"
        plan = state.plan
        assert plan.kind == "app+schema+restore", plan
        assert plan.migration_target == "3" and plan.restore_from == backup.backup_id
        assert any("update all on accounts.plan" in n for n in plan.notes), plan.notes
        assert "demo-schema:v1" in plan.app_to
        # nobody acknowledged within P1's (test) response time: paged once, escalation posted
        await assert_eventually(lambda: _async(len(site.pagerduty.events) == 1), timeout=30, message="page")
        assert site.pagerduty.events[0]["event_action"] == "trigger"
        # repeats of the alert are counted, not logged one by one
        for _ in range(5):
            await handle.signal(IncidentWorkflow.alert, AlertNotice(source="alertmanager",
                                                                    summary="DemoErrorRatioHigh", fingerprint="f1"))
        await handle.execute_update("approve", ApprovalInput(approver="alice", reason="plan looks right"))
        result = IncidentResult.model_validate(await handle.result())

    assert result.outcome == "resolved", result.message
    assert [(c.workflow, c.outcome) for c in result.children] == [
        ("BackupWorkflow", "verified"), ("MigrationRollbackWorkflow", "rolled_back"),
        ("DatabaseRestoreWorkflow", "restored"), ("AppRollbackWorkflow", "rolled_back")]
    # the erased values are back, the late sign-up re-imported, the schema at 3, v1 serving
    assert site.plans()[:10] == ["pro"] * 4 + ["free"] * 6 and len(site.plans()) == 11
    assert columns(site.dsn, "accounts") == ["id", "email", "created_at", "plan"]
    assert httpx.get(f"http://127.0.0.1:{site.port}/version", timeout=2).text.strip() == "v1"
    assert site.flag() == "true"  # processing back on, after a health check
    assert result.alerts[0].count == 6 and kinds(result.timeline).count("signal") == 1
    # one approval covered the children: each recorded the approver instead of asking
    approvals = [e for e in result.timeline if e.kind.value == "approved"]
    assert [e.actor for e in approvals] == ["alice"]
    assert result.milestones.acknowledged is not None
    # paged, then resolved; Statuspage walked to resolved
    assert [e["event_action"] for e in site.pagerduty.events] == ["trigger", "resolve"]
    (incident,) = site.statuspage.incidents.values()
    assert [u["status"] for u in incident["incident_updates"]] == ["investigating", "monitoring", "resolved"]
    assert site.statuspage.component_history["cmp_web"] == ["partial_outage", "degraded_performance", "operational"]
    texts = [m["text"] for m in site.slack.messages]
    assert texts[0].startswith("🚨 PRODUCTION INCIDENT DECLARED") and any("INCIDENT RESOLVED" in t for t in texts)
    # the post-mortem: four durations, markdown and JSON
    markdown = Path(result.postmortem[0]).read_text()
    for name in ("MTTD", "MTTA", "MTTM", "MTTR"):
        assert name in markdown
    data = json.loads(Path(result.postmortem[1]).read_text())
    assert set(data["durations"]) == {"time_to_detect", "time_to_acknowledge", "time_to_mitigate", "time_to_resolve"}
    assert all(v is not None for v in data["durations"].values())


async def test_critical_rows_the_restore_cannot_bring_back_keep_the_incident_open(client, task_queue, production):
    """Runbook 001's verification counts the critical tables. `audit` has no timestamp column, so
    its rows written after the backup are neither exported nor re-imported by the restore: the
    incident must not call that resolved. It escalates naming the table and both counts, keeps
    processing stopped, and waits for a person."""
    site = production
    settings = yaml.safe_load(Path(site.config._path).read_text())
    settings["services"]["web"]["database"]["critical_tables"] = ["accounts", "audit"]
    Path(site.config._path).write_text(yaml.safe_dump(settings))
    async with running_worker(client, site.config, task_queue):
        await release_bad_v2(client, task_queue, site)
        with psycopg.connect(site.dsn) as conn:  # written after the backup, in a table with no timestamp
            conn.execute("INSERT INTO audit (note) VALUES ('refund 1'), ('refund 2')")
        handle = await start_or_signal_incident(
            client, task_queue, IncidentInput(service="web", reason="error ratio 27 % after v2", error_rate=0.27,
                                              automatic=True, requested_by="alertmanager"),
            AlertNotice(source="alertmanager", summary="DemoErrorRatioHigh", fingerprint="f1"))
        await wait_for_phase(handle, "awaiting_approval", timeout=120)
        await handle.execute_update("approve", ApprovalInput(approver="alice", reason="plan looks right"))
        await wait_for_phase(handle, "mitigating", timeout=180)
        lost = "critical table public.audit has 0 rows, had 2 before the rollback"
        state = await handle.query(IncidentWorkflow.status)
        assert any(e.kind.value == "verification_failed" and lost in e.message for e in state.timeline), \
            state.timeline[-3:]
        await assert_eventually(lambda: _async(any(lost in m["text"] and "ESCALATION" in m["text"]
                                                   for m in site.slack.messages)), timeout=10, message="escalation")
        assert site.flag() == "false"  # processing stays stopped while a person looks
        assert site.plans()[:10] == ["pro"] * 4 + ["free"] * 6  # what the restore did bring back stays
        await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="refunds re-entered by hand",
                                                                           by="alice"))
        result = IncidentResult.model_validate(await handle.result())
    assert result.outcome == "resolved", result.message
    assert not any(e.kind.value == "verified" and "critical tables" in e.message for e in result.timeline)


async def test_dry_run_changes_nothing_anywhere(client, task_queue, production):
    site = production
    async with running_worker(client, site.config, task_queue):
        backup = await release_bad_v2(client, task_queue, site)
        before = site.snapshot()
        result = await client.execute_workflow(
            IncidentWorkflow.run, IncidentInput(service="web", severity="P0", dry_run=True),
            id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=task_queue, result_type=IncidentResult)
    assert result.outcome == "dry_run"
    assert result.plan.kind == "app+schema+restore" and result.plan.restore_from == backup.backup_id
    assert site.snapshot() == before


async def _async(value):
    return value


# Each child's step that changes something, and each message to people: the worker is SIGKILLed
# right after the step did its work and before Temporal heard of it, so the retry (on a new
# worker) meets a world where it already happened.
CHANGING_STEPS = ("backups.dump", "flags.set", "migrations.down_step", "postgres.swap", "docker.execute",
                  "notify.slack", "statuspage.post", "pagerduty.event")


async def test_a_worker_killed_in_each_child_still_does_everything_once(client, temporal_address, task_queue,
                                                                         production, tmp_path):
    from tests.e2e.test_crash_matrix import CrashingWorkers, assert_each_message_once

    site = production
    async with running_worker(client, site.config, task_queue):
        backup = await release_bad_v2(client, task_queue, site)
    backups_before = sorted(Path(site.backup_dir).glob("*.manifest.json"))
    async with CrashingWorkers(client, temporal_address, site.config._path, task_queue, "end", tmp_path,
                               only=",".join(CHANGING_STEPS)) as workers:
        handle = await start_or_signal_incident(
            client, task_queue, IncidentInput(service="web", reason="error ratio 27 % after v2", error_rate=0.27,
                                              automatic=True, requested_by="alertmanager"),
            AlertNotice(source="alertmanager", summary="DemoErrorRatioHigh", fingerprint="f1"))
        result = IncidentResult.model_validate(await workers.run(handle, timeout=400, approvals=1))

    assert result.outcome == "resolved", result.message
    crashed = {call["activity"] for crash in workers.crashes() for call in crash["calls"]}
    assert crashed == set(CHANGING_STEPS), crashed  # every child was hit, and every kind of message
    assert [(c.workflow, c.outcome) for c in result.children] == [
        ("BackupWorkflow", "verified"), ("MigrationRollbackWorkflow", "rolled_back"),
        ("DatabaseRestoreWorkflow", "restored"), ("AppRollbackWorkflow", "rolled_back")]
    assert result.plan.restore_from == backup.backup_id
    # the outcome a crash-free run has: data back, schema at 3, v1 serving, processing back on
    assert site.plans()[:10] == ["pro"] * 4 + ["free"] * 6 and len(site.plans()) == 11
    assert columns(site.dsn, "accounts") == ["id", "email", "created_at", "plan"]
    assert httpx.get(f"http://127.0.0.1:{site.port}/version", timeout=2).text.strip() == "v1"
    assert site.flag() == "true"
    # every side effect once: one emergency backup, one container set aside, each message once
    made = sorted(set(Path(site.backup_dir).glob("*.manifest.json")) - set(backups_before))
    # the incident's emergency backup, the migration rollback's own and the restore's safety backup:
    # none doubled by a dump retried after it finished, and no archive without its manifest
    assert len(made) == 3, made
    archives = {p.name.removesuffix(".dump") for p in Path(site.backup_dir).glob("*.dump")}
    assert archives == {p.name.removesuffix(".manifest.json") for p in Path(site.backup_dir).glob("*.manifest.json")}
    aside = [c for c in site.docker.containers.list(all=True) if c.name.startswith(f"{site.name}-")]
    assert [(c.image.id, c.status) for c in aside] == [(site.images["v2"], "exited")]
    assert_each_message_once(site.slack)
    assert [e["event_action"] for e in site.pagerduty.events] == ["trigger", "resolve"]
    (incident,) = site.statuspage.incidents.values()
    assert [u["status"] for u in incident["incident_updates"]] == ["investigating", "monitoring", "resolved"]
