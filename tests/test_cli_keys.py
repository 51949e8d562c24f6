"""`rollback keys rotate|provide` as a person runs them: a Stripe key handed over on stdin goes
into the protected store and only its reference reaches the workflow."""

from __future__ import annotations

import asyncio
import os
import subprocess

from temporalio.client import WorkflowHandle

from tests.conftest import running_worker
from tests.helpers import history_text, wait_for_phase
from tests.integration.test_key_rotation import (LEAD, shop, stripe, twilio, waiting_for_keys)  # noqa: F401
from tests.test_cli import ROLLBACK, assert_one_line_error, cli
from workflows import KeyRotationWorkflow
from workflows.models import KeyRotationResult


def provide(*args: str, stdin: str, address: str, task_queue: str, config) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env.update(TEMPORAL_ADDRESS=address, TEMPORAL_TASK_QUEUE=task_queue, ROLLBACK_CONFIG=str(config._path))
    return subprocess.run([ROLLBACK, "keys", "provide", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


async def test_rotate_and_provide_a_key_on_stdin(client, task_queue, temporal_address, shop, stripe,  # noqa: F811
                                                 vercel):
    config, old = shop
    env = {"ROLLBACK_CONFIG": str(config._path)}
    new_key = stripe.new_key()
    async with running_worker(client, config, task_queue):
        started = await asyncio.to_thread(cli, "keys", "rotate", "shop", "--key", "STRIPE_SECRET_KEY",
                                          address=temporal_address, task_queue=task_queue, extra_env=env)
        assert started.returncode == 0, started.stderr
        handle: WorkflowHandle = client.get_workflow_handle("keys-rotate-shop", result_type=KeyRotationResult)
        await waiting_for_keys(handle)
        for_twilio = await asyncio.to_thread(provide, "keys-rotate-shop", "--key", "TWILIO_API_SECRET", "--stdin",
                                             stdin="whatever", address=temporal_address, task_queue=task_queue,
                                             config=config)
        assert_one_line_error(for_twilio, 1, "not waiting for key 'TWILIO_API_SECRET'")
        given = await asyncio.to_thread(provide, "keys-rotate-shop", "--key", "STRIPE_SECRET_KEY", "--stdin",
                                        stdin=new_key + "\n", address=temporal_address, task_queue=task_queue,
                                        config=config)
        assert given.returncode == 0, given.stderr
        assert "STRIPE_SECRET_KEY accepted for keys-rotate-shop: sha256:" in given.stdout
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        stripe.roll(old["stripe"])
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
        history = history_text(await handle.fetch_history())
    assert result.outcome == "rotated", result.message
    assert vercel.live_env("prj_shop")["STRIPE_SECRET_KEY"] == new_key
    assert new_key not in history and '"store:' in history  # the reference, not the key
