"""`rollback env diff|restore` and `rollback config revert` as a person runs them."""

from __future__ import annotations

import asyncio
import json
import uuid

from tests.conftest import running_worker
from tests.integration.test_env_rollback import break_it, shop  # noqa: F401 - the fixture
from tests.test_cli import assert_one_line_error, cli


async def test_env_diff_then_restore_from_the_cli(client, task_queue, temporal_address, shop):  # noqa: F811
    fake, config, canary = shop
    env = {"ROLLBACK_CONFIG": str(config._path)}
    async with running_worker(client, config, task_queue):
        first = await asyncio.to_thread(cli, "env", "diff", "shop", address=temporal_address, task_queue=task_queue,
                                        extra_env=env)
        assert first.returncode == 0, first.stderr
        assert "dpl_goodzzzzzz" in first.stdout and "healthy" in first.stdout
        break_it(fake, canary)
        second = await asyncio.to_thread(cli, "env", "diff", "shop", address=temporal_address,
                                         task_queue=task_queue, extra_env=env)
        restored = await asyncio.to_thread(cli, "env", "restore", "shop", "--wait", "--json",
                                           address=temporal_address, task_queue=task_queue, extra_env=env)
    assert second.returncode == 0, second.stderr
    for line in ("+ DEBUG", "- API_URL", "~ FEATURE_FLAGS", "~ STRIPE_SECRET", "last good: "):
        assert line in second.stdout, second.stdout
    assert canary not in second.stdout + restored.stdout
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["outcome"] == "rolled_back"
    assert fake.production_env("prj_shop")["FEATURE_FLAGS"] == "checkout-v1"


async def test_unknown_service_is_refused_before_anything_starts(client, temporal_address, task_queue, shop):  # noqa: F811
    fake, config, canary = shop
    env = {"ROLLBACK_CONFIG": str(config._path)}
    for args in (("env", "diff", "nosuch"), ("env", "restore", "nosuch"), ("config", "revert", "nosuch", "--to", "x")):
        proc = await asyncio.to_thread(cli, *args, address=temporal_address, task_queue=task_queue, extra_env=env)
        assert_one_line_error(proc, 2, "unknown service 'nosuch'; the config defines: shop")
    assert (await client.count_workflows(f"TaskQueue = '{task_queue}'")).count == 0


async def test_unknown_deployment_is_one_line(client, task_queue, temporal_address, shop):  # noqa: F811
    fake, config, canary = shop
    env = {"ROLLBACK_CONFIG": str(config._path)}
    async with running_worker(client, config, task_queue):
        proc = await asyncio.to_thread(cli, "env", "restore", "shop", "--to", f"dpl_{uuid.uuid4().hex[:6]}", "--wait",
                                       address=temporal_address, task_queue=task_queue, extra_env=env)
    assert proc.returncode == 1
    assert "no recorded environment for deployment" in proc.stdout and "Traceback" not in proc.stderr + proc.stdout
