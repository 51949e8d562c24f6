"""Rollback drills (runbook 003) from a real Temporal Schedule: the database drill restores the
newest verified backup into a scratch database on the real PostgreSQL and leaves nothing behind;
a corrupt newest backup fails the drill loudly; the app drill rolls a docker staging copy back."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource
from activities.drills import DrillActivities, drill_records
from activities.state import import_legacy_files
from starter import engines
from starter.drills import put_schedule
from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.helpers import assert_eventually, create_database, git_service, kinds, sh, shop_service
from tests.integration.test_docker_rollback import docker_service
from tests.integration.test_pitr import archive_current_wal, archiving, ids  # noqa: F401 - archiving: a fixture
from tests.integration.test_restore import backup, count, databases
from tests.integration.test_vercel_rollback import vercel_service
from workflows import BackupWorkflow, BaseBackupWorkflow, DrillWorkflow
from workflows.models import (
    AppVersion,
    BackupInput,
    BackupManifest,
    BaseBackup,
    DrillCheckRequest,
    DrillInput,
    DrillMeasure,
    DrillRecordRequest,
    DrillResult,
    ScratchDatabaseRequest,
    ScratchServerRequest,
)


@pytest.fixture
def drill_db(postgres, write_config, monkeypatch, tmp_path, platform):
    """The shop database (100 users, 50 orders) with critical tables and a verify_sql check."""
    name, dsn = create_database(postgres, "shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100) g")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric)")
        conn.execute("INSERT INTO orders SELECT g, 1 + g % 100, g * 1.5 FROM generate_series(1, 50) g")
    monkeypatch.setenv("TEST_SHOP_DSN", dsn)

    def make(notify: dict):
        database = {"dsn_env": "TEST_SHOP_DSN", "backup_dir": str(tmp_path / "backups"),
                    "critical_tables": ["users", "orders"], "verify_sql": ["SELECT count(*) = 100 FROM users"]}
        return write_config({"shop": shop_service(platform, tmp_path / "backups", database=database, notify=notify)})

    return name, dsn, postgres, make


def records(config, service: str = "shop") -> list[dict]:
    """The drill records every worker sees: the shared state store's, not a file of one worker."""
    return [m.model_dump() for m in drill_records(config.state, service)]


@pytest.mark.postgres
async def test_scheduled_database_drill_restores_into_a_scratch_database_and_leaves_nothing(
        client, task_queue, drill_db, slack):
    name, dsn, admin, make = drill_db
    config = make({"slack_webhook_env": "TEST_SLACK_WEBHOOK"})
    await backup(client, task_queue, config)
    async with running_worker(client, config, task_queue):
        schedule, created = await put_schedule(client, "shop", timedelta(days=90), "db", task_queue)
        try:
            assert created and schedule.id == "drill-shop"
            described = await schedule.describe()
            assert described.info.next_action_times[0] > datetime.now(timezone.utc) + timedelta(days=89)
            await schedule.trigger()

            started: dict = {}

            async def drill_started() -> bool:
                actions = (await schedule.describe()).info.recent_actions
                started["id"] = actions[-1].action.workflow_id if actions else None
                return bool(actions)

            await assert_eventually(drill_started, timeout=30, message="the schedule started a drill")
            result = await client.get_workflow_handle(started["id"], result_type=DrillResult).result()
            # a second drill (started by hand) reports the trend against the first
            second = await client.execute_workflow(
                DrillWorkflow.run, DrillInput(service="shop", kind="db"), id=f"drill-shop-now-{uuid.uuid4().hex[:6]}",
                task_queue=task_queue, result_type=DrillResult)
        finally:
            await schedule.delete()

    assert started["id"].startswith("drill-shop-")
    assert result.outcome == "verified"
    (measure,) = result.measures
    assert measure.kind == "db" and measure.passed and measure.target_seconds == 20 * 60
    assert 0 < measure.seconds < measure.target_seconds
    assert "2 tables match the manifest, 2 critical table(s), 1 SQL check(s)" in measure.detail
    assert any(e.kind.value == "executing" and "_drill_" in e.message and e.message.endswith("dropped")
               for e in result.timeline)
    assert databases(admin, f"{name}_drill_") == set()  # the scratch copies are gone
    assert result.earlier == [] and "First recorded drill" in result.report
    assert second.earlier[0].run_id == measure.run_id and "Earlier: " in second.report
    assert [(r["kind"], r["passed"]) for r in records(config)] == [("db", True), ("db", True)]
    reports = [m["text"] for m in slack.messages if "Rollback drill of shop passed" in m["text"]]
    assert len(reports) == 2 and "PASS db drill (database)" in reports[0]
    assert (count(dsn, "users"), count(dsn, "orders")) == (100, 50)


@pytest.mark.postgres
async def test_a_corrupt_newest_backup_fails_the_drill_loudly(client, task_queue, drill_db, slack):
    name, dsn, admin, make = drill_db
    # only the escalation webhook is set: whatever reaches Slack went through the escalation path
    config = make({"escalation_slack_webhook_env": "TEST_SLACK_WEBHOOK"})
    await backup(client, task_queue, config)  # an older good backup does not save the drill
    newest = await backup(client, task_queue, config)
    archive = Path(newest.archive)
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\x00" * 64  # garbled after its manifest was written
    archive.write_bytes(bytes(data))

    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(DrillWorkflow.run, DrillInput(service="shop", kind="db"),
                                             id=f"drill-shop-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    message = str(failure.value.cause)
    assert "rollback drill of shop failed" in message and f"backup {newest.backup_id} cannot be restored" in message
    assert "is corrupt" in message
    (alert,) = slack.messages
    assert alert["text"].startswith("ESCALATION: rollback drill of shop FAILED") and "FAIL db drill" in alert["text"]
    assert [(r["kind"], r["passed"], r["seconds"]) for r in records(config)] == [("db", False, None)]
    assert (count(dsn, "users"), count(dsn, "orders")) == (100, 50)  # production untouched
    assert databases(admin, f"{name}_drill_") == set()
    with pytest.raises(ApplicationError, match="not a drill scratch database"):
        await DrillActivities(config).drop_scratch(ScratchDatabaseRequest(service="shop", database=name))


@pytest.mark.postgres
async def test_database_drill_recovers_a_point_in_time_on_a_scratch_server_and_removes_it(
        client, task_queue, archiving):
    dsn, admin, config = archiving
    config_file = Path(config._path)
    settings = yaml.safe_load(config_file.read_text())
    shop = settings["services"]["shop"]
    shop["database"].update(critical_tables=["orders"], verify_sql=["SELECT count(*) >= 10 FROM orders"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO orders (id) SELECT generate_series(1, 10)")

    def drill_at(age: str) -> None:
        shop["drill"] = {"pitr_age": age}
        config_file.write_text(yaml.safe_dump(settings))

    def leftovers(run_id: str, port: int | None) -> list[str]:
        work = Path(config.config.state_dir) / "pitr" / f"drill-{run_id}"
        found = [f"{work} exists"] if work.exists() else []
        if subprocess.run(["pgrep", "-f", str(work)], capture_output=True).returncode == 0:
            found.append("a server process still runs from it")
        if port is not None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    found.append(f"port {port} still answers")
        return found

    async with running_worker(client, config, task_queue):
        await client.execute_workflow(BaseBackupWorkflow.run, BackupInput(service="shop"), id=f"wf-{uuid.uuid4()}",
                                      task_queue=task_queue, result_type=BaseBackup)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO orders (id) SELECT generate_series(11, 20)")
            time.sleep(5)
            conn.execute("INSERT INTO orders (id) SELECT generate_series(21, 30)")
            last_commit = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        archive_current_wal(admin)
        await client.execute_workflow(BackupWorkflow.run, BackupInput(service="shop"), id=f"wf-{uuid.uuid4()}",
                                      task_queue=task_queue, result_type=BackupManifest)
        # the point in time: 2.5 s before the last insert, so rows 1-20 and not 21-30
        drill_at(f"PT{(datetime.now(timezone.utc) - last_commit).total_seconds() + 2.5:.3f}S")
        handle = await client.start_workflow(DrillWorkflow.run, DrillInput(service="shop", kind="db"),
                                             id=f"drill-shop-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
        result = await handle.result()
        # a point in time the archived WAL does not reach cannot be recovered: the drill fails loudly
        drill_at("PT0.001S")
        failing = await client.start_workflow(DrillWorkflow.run, DrillInput(service="shop", kind="db"),
                                              id=f"drill-shop-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await failing.result()

    dump, pitr = result.measures
    assert dump.kind == "db" and dump.passed
    assert pitr.kind == "pitr" and pitr.method == "pitr" and pitr.passed, pitr.detail
    assert pitr.row_counts == {"public.orders": 20}  # exactly the rows of that point in time
    assert pitr.target_seconds == 20 * 60 and 0 < pitr.seconds < pitr.target_seconds
    assert "1 critical table(s) with data, 1 SQL check(s)" in pitr.detail
    messages = " | ".join(e.message for e in result.timeline)
    port = int(re.search(r"on scratch server 127\.0\.0\.1:(\d+)", messages)[1])
    assert leftovers(handle.result_run_id, port) == []
    assert "scratch server stopped and its data directory removed" in messages
    assert "PASS pitr drill (pitr)" in result.report

    message = str(failure.value.cause)
    assert "rollback drill of shop failed" in message and "pitr: point-in-time recovery to" in message
    assert "recovery ended before configured recovery target was reached" in message
    assert leftovers(failing.result_run_id, None) == []
    assert [(r["kind"], r["passed"]) for r in records(config)] == [("db", True), ("pitr", True),
                                                                   ("db", True), ("pitr", False)]
    assert ids(dsn) == list(range(1, 31))  # the live database was only read
    with pytest.raises(ApplicationError, match="not a drill's point-in-time recovery"):
        await DrillActivities(config).discard_pitr(ScratchServerRequest(service="shop", key="restore-run"))


@pytest.mark.docker
async def test_app_drill_rolls_the_docker_staging_copy_back_to_the_baseline(client, task_queue, docker_engine,
                                                                           write_config):
    suffix = uuid.uuid4().hex[:8]
    prod, staging = f"web-prod-{suffix}", f"web-stg-{suffix}"
    prod_port, staging_port = engines.free_port(), engines.free_port()
    drill = {"staging_service": "web-staging", "baseline_image": "demo-web:v1", "problem_image": "demo-web:v2",
             "targets": {"docker": "PT2M"}}
    config = write_config({"web": docker_service(docker_engine, prod, prod_port, drill=drill),
                           "web-staging": docker_service(docker_engine, staging, staging_port)})
    containers = {}
    for name, port in ((prod, prod_port), (staging, staging_port)):
        containers[name] = docker_engine.client.containers.run(
            docker_engine.images["v1"], name=name, detach=True, network_mode="host", init=True,
            environment={"PORT": str(port)}, labels={"io.rollback.test": "1"})

    async with running_worker(client, config, task_queue):
        workflow_id = f"drill-web-{suffix}"
        result = await client.execute_workflow(DrillWorkflow.run, DrillInput(service="web", kind="app"),
                                               id=workflow_id, task_queue=task_queue, result_type=DrillResult)
        child = await client.get_workflow_handle(f"{workflow_id}-app-rollback").describe()

    assert result.outcome == "verified"
    (measure,) = result.measures
    assert measure.kind == "app" and measure.method == "docker" and measure.passed
    assert measure.target_seconds == 120 and 0 < measure.seconds < 120
    assert child.workflow_type == "AppRollbackWorkflow" and child.status.name == "COMPLETED"
    after = docker_engine.client.containers.get(staging)
    assert after.attrs["Image"] == docker_engine.images["v1"]  # back on the baseline, really serving it
    assert httpx.get(f"http://127.0.0.1:{staging_port}/version", timeout=2).text.strip() == "v1"
    assert "deployed demo-web:v1 then demo-web:v2" in " ".join(e.message for e in result.timeline)
    # production was never touched
    production = docker_engine.client.containers.get(prod)
    assert production.id == containers[prod].id and production.attrs["Image"] == docker_engine.images["v1"]
    assert "verified" in kinds(result.timeline)


async def test_app_drill_on_a_vercel_staging_project_promotes_baseline_then_problem_and_rolls_back(
        client, task_queue, vercel, write_config, monkeypatch):
    realistic(vercel)  # production: prj_shop, never touched by the drill
    vercel.add_project("prj_shop_stg", "shop-staging")
    start = 1_770_000_000_000
    vercel.add_deployment("prj_shop_stg", "dpl_stggood01", start, meta={"schemaVersion": "3"})
    problem = vercel.add_deployment("prj_shop_stg", "dpl_stgbad001", start + 60_000, meta={
        "schemaVersion": "3", "health": "degraded", "errorRate": 0.3})  # the known benign issue
    vercel.add_deployment("prj_shop_stg", "dpl_stgnewest", start + 120_000)  # what staging serves before
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    staging = vercel_service(vercel)
    staging["app"]["vercel"]["project"] = "prj_shop_stg"
    staging["health"].update(url=f"{vercel.url}/_site/prj_shop_stg/health",
                             version_url=f"{vercel.url}/_site/prj_shop_stg/version")
    drill = {"staging_service": "shop-staging", "baseline_deployment": "dpl_stggood01",
             "problem_deployment": problem["url"], "targets": {"vercel": "PT2M"}}  # an id or a URL
    config = write_config({"shop": vercel_service(vercel, drill=drill), "shop-staging": staging})

    async with running_worker(client, config, task_queue):
        workflow_id = f"drill-shop-{uuid.uuid4().hex[:6]}"
        result = await client.execute_workflow(DrillWorkflow.run, DrillInput(service="shop", kind="app"),
                                               id=workflow_id, task_queue=task_queue, result_type=DrillResult)
        child = await client.get_workflow_handle(f"{workflow_id}-app-rollback").describe()

    assert result.outcome == "verified", result.report
    (measure,) = result.measures
    assert measure.method == "vercel" and measure.passed and measure.target_seconds == 120
    assert 0 < measure.seconds < 120
    assert child.workflow_type == "AppRollbackWorkflow" and child.status.name == "COMPLETED"
    # promote the baseline, promote the problem version, then the child's instant rollback
    changes = [p.rsplit("/", 2)[-2:] for m, p, _, _ in vercel.calls if m == "POST" and "/prj_shop_stg/" in p]
    assert changes == [["promote", "dpl_stggood01"], ["promote", "dpl_stgbad001"], ["rollback", "dpl_stggood01"]]
    assert vercel.production["prj_shop_stg"] == "dpl_stggood01"
    assert httpx.get(f"{vercel.url}/_site/prj_shop_stg/version", timeout=2).text == "dpl_stggood01"
    # production was never touched
    assert vercel.production["prj_shop"] == "dpl_badprodzzz"
    assert not [p for m, p, _, _ in vercel.calls if m == "POST" and "/prj_shop/" in p]


async def test_app_drill_on_a_git_staging_branch_pushes_a_problem_commit_and_reverts_it(
        client, task_queue, repo, platform, write_config, tmp_path):
    remote, commits = repo
    sh("git", "--git-dir", str(remote), "branch", "staging", "main")
    production = git_service(remote, platform)
    del production["app"]["git"]["deploy_hook_url_env"]  # production deploys on push to main: never pushed here
    production["drill"] = {"staging_service": "web-staging", "problem_file": "drill/PROBLEM"}
    staging = git_service(remote, platform)
    staging["app"]["git"]["branch"] = "staging"
    platform.broken_deploys = {2}  # the problem version's deploy comes up unhealthy
    config = write_config({"web": production, "web-staging": staging})

    def on_remote(*args: str) -> str:
        return sh("git", "--git-dir", str(remote), *args)

    async def drill() -> DrillResult:
        return await client.execute_workflow(DrillWorkflow.run, DrillInput(service="web", kind="app"),
                                             id=f"drill-web-{uuid.uuid4().hex[:6]}", task_queue=task_queue,
                                             result_type=DrillResult)

    async with running_worker(client, config, task_queue):
        result = await drill()
        child = await client.get_workflow_handle(f"{result.measures[0].workflow_id}-app-rollback").describe()
        head, problem_commit = on_remote("rev-parse", "staging"), on_remote("rev-parse", "staging~1")
        hooks = list(platform.hooks)
        # the next quarter's drill starts from where this one left the branch, and compares with it
        again = await drill()
        # a problem commit left serving (an earlier drill's rollback never happened) is no baseline
        seed = tmp_path / "leftover"
        sh("git", "clone", "--quiet", "--branch", "staging", str(remote), str(seed))
        (seed / "drill").mkdir(exist_ok=True)
        (seed / "drill" / "PROBLEM").write_text("left over\n")
        sh("git", "add", "-A", cwd=seed)
        sh("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m",
           "drill problem left over\n\nDrill-Key: drill:0123", cwd=seed)
        sh("git", "push", "--quiet", "origin", "HEAD:staging", cwd=seed)
        with pytest.raises(WorkflowFailureError) as refused:
            await drill()

    assert result.outcome == "verified", result.report
    (measure,) = result.measures
    assert measure.method == "git" and measure.passed and measure.target_seconds == 8 * 60
    assert child.workflow_type == "AppRollbackWorkflow" and child.status.name == "COMPLETED"
    assert on_remote("rev-parse", f"{problem_commit}~1") == commits["bad2"]  # baseline: the head at the start
    assert on_remote("diff", commits["bad2"], head) == ""  # its code is back
    assert on_remote("diff", "--name-only", commits["bad2"], problem_commit) == "drill/PROBLEM"
    assert "Drill-Key: drill:" in on_remote("log", "-1", "--format=%B", problem_commit)
    assert "Rollback-Key: " in on_remote("log", "-1", "--format=%B", head)  # the child's revert
    assert hooks == [commits["bad2"], problem_commit, head]  # baseline, problem, revert: each deployed once
    assert on_remote("rev-parse", "main") == commits["bad2"]  # production's branch untouched
    assert "problem version a commit changing drill/PROBLEM" in " ".join(e.message for e in result.timeline)

    assert again.outcome == "verified" and again.measures[0].passed, again.report
    assert on_remote("rev-parse", "staging~3") == head and "Earlier: " in again.report
    assert "is an earlier drill's problem commit" in str(refused.value.cause)
    assert "nothing was deployed" in str(refused.value.cause)
    # the check after the rollback compares code (trees), so it does see a head that is not the baseline's
    check = DrillActivities(config).check_baseline
    assert await check(DrillCheckRequest(service="web-staging", production="web",
                                         baseline=AppVersion(provider="git", id=on_remote("rev-parse", "staging")))) == ""
    assert "with SCHEMA_VERSION, app.txt, drill/PROBLEM changed" in await check(DrillCheckRequest(
        service="web-staging", production="web", baseline=AppVersion(provider="git", id=commits["good"])))


@pytest.mark.docker
async def test_app_drill_refuses_a_staging_target_that_is_production(client, task_queue, docker_engine,
                                                                    write_config, slack):
    name = f"web-prod-{uuid.uuid4().hex[:8]}"
    port = engines.free_port()
    drill = {"staging_service": "web-staging", "baseline_image": "demo-web:v1", "problem_image": "demo-web:v2"}
    config = write_config({
        "web": docker_service(docker_engine, name, port, drill=drill,
                              notify={"escalation_slack_webhook_env": "TEST_SLACK_WEBHOOK"}),
        "web-staging": docker_service(docker_engine, name, port)})  # the same container: production
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(DrillWorkflow.run, DrillInput(service="web", kind="app"),
                                          id=f"drill-web-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
    assert "points at the production target itself" in str(failure.value.cause)
    assert "nothing was changed" in str(failure.value.cause)
    (alert,) = slack.messages
    assert "rollback drill of web refused" in alert["text"]


async def test_drill_cli_schedules_lists_pauses_and_deletes(tmp_path, client, temporal_address, task_queue):
    import asyncio

    from tests.test_cli import assert_one_line_error, cli

    service = f"svc{uuid.uuid4().hex[:6]}"
    path = tmp_path / "rollback.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nservices:\n  {service}:\n"
                    "    app: {provider: docker, docker: {container: web}}\n    health: {url: 'http://127.0.0.1:1/h'}\n")
    env = {"ROLLBACK_CONFIG": str(path)}

    def run(*args: str):
        return asyncio.to_thread(cli, "drill", *args, address=temporal_address, task_queue=task_queue, extra_env=env)

    # refused before anything is created: no staging target, no database
    assert_one_line_error(await run("schedule", service, "--every", "90d", "--kind", "app"), 2,
                          "has no drill staging target")
    assert_one_line_error(await run("run", service, "--kind", "db"), 2, "has no database configured")
    created = await run("schedule", service, "--every", "90d")
    assert created.returncode == 0 and f"created schedule drill-{service}: all drill every 90d; next run" in created.stdout
    try:
        assert (await run("pause", service)).returncode == 0
        updated = await run("schedule", service, "--every", "12w")
        assert updated.returncode == 0 and "updated schedule" in updated.stdout and "paused" in updated.stdout

        async def listed() -> bool:
            proc = await run("list", "--json")
            rows = [r for r in json.loads(proc.stdout)["schedules"] if r["service"] == service]
            return bool(rows) and rows[0]["paused"] and rows[0]["every"] == "84 days, 0:00:00"

        await assert_eventually(listed, timeout=30, message="the paused schedule is listed")
        # drill results: a JSON-lines file an earlier version wrote is imported when a worker starts
        # (a line cut short by a crash is skipped), then lives in the shared state store with the
        # records workers add; `drill list` reads them from there
        earlier = DrillMeasure(service=service, kind="db", method="database", workflow_id="drill-old",
                               run_id="run-old", started_at=datetime(2026, 8, 1, tzinfo=timezone.utc), seconds=42.0,
                               target_seconds=1200, passed=True, detail="old")
        (tmp_path / "state" / "drills").mkdir(parents=True)
        (tmp_path / "state" / "drills" / f"{service}.jsonl").write_text(earlier.model_dump_json() + "\n{\"cut")
        source = ConfigSource(path)
        assert import_legacy_files(source.config, source.state) == 1
        newer = earlier.model_copy(update={"run_id": "run-new", "workflow_id": "drill-new", "passed": False})
        seen = await DrillActivities(source).record(DrillRecordRequest(service=service, measures=[newer]))
        assert [m.run_id for m in seen] == ["run-old"]
        await DrillActivities(source).record(DrillRecordRequest(service=service, measures=[newer]))  # a retry
        proc = await run("list", "--json")
        shown = json.loads(proc.stdout)["last_drills"][service]
        assert [(m["run_id"], m["passed"]) for m in shown] == [("run-old", True), ("run-new", False)]
        text = await run("list")
        assert f"{service}: 2026-08-01 00:00 db  PASS 42.0s (target 1200s) old" in text.stdout
        description = await client.get_schedule_handle(f"drill-{service}").describe()
        assert description.schedule.state.paused and description.schedule.action.task_queue == task_queue
    finally:
        assert (await run("delete", service)).returncode == 0
    assert_one_line_error(await run("pause", service), 1, f"no drill schedule drill-{service}")
