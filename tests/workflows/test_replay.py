"""Replay recorded histories against today's workflow code: a deploy that would break running
rollbacks (non-determinism) fails here first. Record new ones with `--record-history`."""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio import workflow
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.integration.test_vercel_rollback import vercel_service
import workflows
from worker.codec import data_converter
from worker.main import WORKFLOW_RUNNER
from workflows import WORKFLOWS, AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=data_converter(), workflow_runner=WORKFLOW_RUNNER)


HOW_TO_PATCH = (
    "{name} no longer replays against today's workflow code: a run that is waiting right now (for an "
    "approval, say) would fail with a non-determinism error after this deploy. Keep the old behaviour for "
    "runs that started before the change: `if workflow.patched(\"<change-id>\"): <new code> else: <old "
    "code>` (see the README's \"Changing a workflow safely\"). Replay error: {error}")


def test_the_corpus_covers_every_workflow_type():
    recorded = {path.stem.split("-")[0] for path in RECORDED}
    # a lock workflow ends a minute after its last release, after the test that used it
    missing = {w.__name__ for w in WORKFLOWS} - recorded - {"ResourceLockWorkflow"}
    assert not missing, f"no recorded history for {sorted(missing)}: run the suite with --record-history"


def test_the_corpus_covers_every_patch():
    """Each `workflow.patched` branch has a recorded history, so replay checks the new code too."""
    import re

    from tests.conftest import patch_ids

    patched = {m for path in Path(workflows.__path__[0]).glob("*.py")
               for m in re.findall(r'workflow\.patched\("([a-z0-9-]+)"\)', path.read_text())}
    recorded = set().union(*(patch_ids(WorkflowHistory.from_json(path.stem, path.read_text())) for path in RECORDED))
    missing = patched - recorded
    assert not missing, f"no recorded history runs the patched code of {sorted(missing)}: run the suite with --record-history"


IDS_FILE = HISTORIES / "workflow_ids.json"
WORKFLOW_IDS = json.loads(IDS_FILE.read_text()) if IDS_FILE.exists() else {}


RECORDED = sorted(path for path in HISTORIES.glob("*.json") if path.name != "workflow_ids.json")


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
async def test_recorded_history_replays(path):
    history = WorkflowHistory.from_json(WORKFLOW_IDS.get(path.name, path.stem), path.read_text())
    try:
        await replayer().replay_workflow(history)
    except Exception as exc:  # noqa: BLE001 - said as what to do about it
        pytest.fail(HOW_TO_PATCH.format(name=path.name, error=exc), pytrace=False)


def module_containers() -> dict[str, object]:
    """Every dict, list and set at module level in workflows/: with the modules passed through the
    sandbox (worker/main.py), one run's change to them would leak into every later run."""
    found = {}
    for info in pkgutil.iter_modules(workflows.__path__):
        module = importlib.import_module(f"workflows.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, (dict, list, set)) and not name.startswith("__"):
                found[f"{info.name}.{name}"] = value
    return found


async def test_workflow_code_leaves_module_state_alone():
    """Module-level containers are constants (named so) and no recorded run changes them."""
    containers = module_containers()
    assert all(name.split(".")[1].isupper() for name in containers), sorted(containers)
    before = copy.deepcopy(containers)
    for path in RECORDED:
        await replayer().replay_workflow(
            WorkflowHistory.from_json(WORKFLOW_IDS.get(path.name, path.stem), path.read_text()), raise_on_replay_failure=False)
    changed = [name for name, value in containers.items() if value != before[name]]
    assert not changed, f"workflow code changed module-level state: {changed}"


@workflow.defn(name="AppRollbackWorkflow")
class ChangedAppRollback(AppRollbackWorkflow):
    """Today's app rollback with one careless change: a new timer before everything else."""

    @workflow.run
    async def run(self, request: AppRollbackInput) -> AppRollbackResult:
        await workflow.sleep(1)
        return await super().run(request)


async def test_a_non_deterministic_change_fails_replay():
    """The corpus catches what it exists for: a recorded app rollback replayed against a changed
    copy of the workflow fails with a non-determinism error."""
    path = HISTORIES / "app_rollback_vercel.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    others = [w for w in WORKFLOWS if w is not AppRollbackWorkflow]
    result = await Replayer(workflows=[ChangedAppRollback, *others], data_converter=data_converter(),
                            workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(
        history, raise_on_replay_failure=False)
    assert result.replay_failure is not None and "nondetermin" in str(result.replay_failure).lower()


async def test_fresh_run_replays(client, task_queue, vercel, write_config, monkeypatch, request):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": vercel_service(vercel)})
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)
        assert (await handle.result()).outcome == "rolled_back"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if request.config.getoption("--record-history"):
        (HISTORIES / "app_rollback_vercel.json").write_text(history.to_json())
