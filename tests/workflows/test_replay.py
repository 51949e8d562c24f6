"""Replay recorded histories against today's workflow code: a deploy that would break running
rollbacks (non-determinism) fails here first. Record new ones with `--record-history`."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.integration.test_vercel_rollback import vercel_service
from workflows import WORKFLOWS, AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)


def test_recorded_histories_exist():
    # an empty folder would turn the parametrized replay below into a silent skip
    assert sorted(HISTORIES.glob("*.json")), f"no recorded histories in {HISTORIES}: record with --record-history"


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_history_replays(path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer().replay_workflow(history)


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
