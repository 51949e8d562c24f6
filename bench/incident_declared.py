"""Alert -> "incident declared" on Slack: the time from the receiver's call
(`start_or_signal_incident`, signal-with-start) to the declaration reaching the (contract) Slack
webhook, over 30 alerts to 30 services, against the real dev server and worker. Prints p50/p99
(target p99 < 1 s); gates nothing.

    .venv/bin/python bench/incident_declared.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import peak_rss_mb, report, worker_process  # noqa: E402
from starter import engines  # noqa: E402
from starter.start import start_or_signal_incident  # noqa: E402
from tests.contract.server import serve  # noqa: E402
from tests.contract.slack import HOOK_PATH, FakeSlack  # noqa: E402
from worker.codec import data_converter  # noqa: E402
from workflows.base import SEARCH_ATTRIBUTES  # noqa: E402
from workflows.models import AlertNotice, IncidentInput  # noqa: E402

ALERTS = 30


async def main() -> None:
    slack = FakeSlack()
    server = serve(slack.app())
    os.environ["BENCH_SLACK_WEBHOOK"] = server.url + HOOK_PATH
    root = Path(tempfile.mkdtemp(prefix="bench-incident-"))
    services = [f"svc{i}" for i in range(ALERTS)]
    (root / "rollback.yaml").write_text(yaml.safe_dump({
        "state_dir": str(root / "state"), "artifact_dir": str(root / "incidents"),
        "services": {name: {"app": {"provider": "docker", "docker": {"container": name}},
                            "health": {"url": "http://127.0.0.1:9/health"},
                            "notify": {"slack_webhook_env": "BENCH_SLACK_WEBHOOK"}} for name in services}}))
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=engines.temporal_binary(),
                                                search_attributes=SEARCH_ATTRIBUTES,
                                                data_converter=data_converter(), dev_server_log_level="error")
    seconds = []
    queue = f"bench-{uuid.uuid4()}"
    try:
        async with worker_process(env.client, root / "rollback.yaml", queue) as worker:
            for service in services:
                started = time.perf_counter()
                handle = await start_or_signal_incident(
                    env.client, queue, IncidentInput(service=service, severity="P0", reason="bench alert"),
                    AlertNotice(source="alertmanager", summary="HighErrorRate", fingerprint=service))
                while not any(f"Service: {service}\n" in m["text"] for m in slack.messages):
                    await asyncio.sleep(0.002)
                seconds.append(time.perf_counter() - started)
                await handle.terminate("benchmark done")
            worker_rss = peak_rss_mb(worker.pid)
    finally:
        await env.shutdown()
        server.stop()
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * len(ordered))) - 1)]
    print(f"alert -> 'incident declared' on Slack over {len(seconds)} alerts: p50 {statistics.median(seconds) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms (target p99 < 1000 ms); worker process peak RSS "
          f"{worker_rss:.0f} MB")
    report("alert -> incident declared", {"alerts": len(seconds), "p50_ms": round(statistics.median(seconds) * 1000),
                                          "p99_ms": round(p99 * 1000),
                                          "worker_peak_rss_mb": round(worker_rss)})


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)  # a process that ran a worker can crash in interpreter teardown
