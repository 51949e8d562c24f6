"""Encrypted payloads through the real dev server: history holds ciphertext only, rotated keys
read old runs, a missing key is named, and the codec server decrypts for the Temporal UI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload

from starter import engines
from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.integration.test_vercel_rollback import vercel_service
from worker.codec import KEYS_ENV, CodecKeyMissing
from worker.settings import TemporalSettings, TemporalUnreachable, connect
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, RollbackStatus

ROLLBACK = str(Path(sys.executable).parent / "rollback")
CANARY = "canary-7f3e-reason-nobody-may-read"
KEY_A = "key-a:" + base64.b64encode(os.urandom(32)).decode()
KEY_B = "key-b:" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def shop(vercel, write_config, monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    return write_config({"shop": vercel_service(vercel)})


async def client_with(temporal_address: str, *keys: str):
    """A client built the way the worker and CLI build theirs, with these keys (first encrypts)."""
    return await connect(TemporalSettings(address=temporal_address), environ={KEYS_ENV: ",".join(keys)})


async def rollback_with(client, config, task_queue: str) -> str:
    workflow_id = f"wf-codec-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="shop", reason=CANARY, requested_by="alice"),
            id=workflow_id, task_queue=task_queue, result_type=AppRollbackResult)
    assert result.outcome == "rolled_back"
    assert any(CANARY in event.message for event in result.timeline)  # decrypted on the way back
    return workflow_id


def payloads_in(message: Message, skip=("search_attributes",)):
    """Every Payload anywhere in a history event, except search attributes (the server indexes
    those), the SDK's own patch markers (a `workflow.patched` id) and the SDK's bookkeeping in a
    local activity's marker (its `data`: sequence number, attempt, activity type and times, what a
    regular activity's events carry as plain fields): plain by design, documented. A local
    activity's `result` is ours, and is checked."""
    marker = getattr(message, "marker_name", None)
    if marker == "core_patch":
        return
    if marker == "core_local_activity":
        for name, details in message.details.items():
            if name != "data":
                yield from details.payloads
        if message.HasField("failure"):
            yield from payloads_in(message.failure, skip)
        return
    for field, value in message.ListFields():
        if field.name in skip:
            continue
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values())
        else:
            values = [value] if isinstance(value, Message) else list(value)
        for item in values:
            if isinstance(item, Payload):
                yield item
            elif isinstance(item, Message):
                yield from payloads_in(item, skip)


async def raw_history(env, workflow_id: str):
    return await env.client.get_workflow_handle(workflow_id).fetch_history()  # env.client has no codec


async def test_history_holds_ciphertext_only(env, temporal_address, task_queue, shop):
    client = await client_with(temporal_address, KEY_A)
    workflow_id = await rollback_with(client, shop, task_queue)

    history = await raw_history(env, workflow_id)
    assert all(CANARY.encode() not in event.SerializeToString() for event in history.events)
    payloads = [payload for event in history.events for payload in payloads_in(event)]
    assert len(payloads) > 10  # input, activity inputs and results, the result: all of them sealed
    assert {(p.metadata["encoding"], p.metadata["encryption-key-id"]) for p in payloads} == {
        (b"binary/encrypted", b"key-a")}


async def test_rotated_keys_read_old_runs_and_a_missing_key_is_named(env, temporal_address, task_queue, shop):
    old = await client_with(temporal_address, KEY_A)
    workflow_id = await rollback_with(old, shop, task_queue)

    rotated = await client_with(temporal_address, KEY_B, KEY_A)  # B encrypts from now on, A still decrypts
    handle = rotated.get_workflow_handle(workflow_id, result_type=AppRollbackResult)
    assert (await handle.result()).outcome == "rolled_back"
    assert (await handle.describe()).workflow_type == "AppRollbackWorkflow"
    async with running_worker(rotated, shop, task_queue):  # a query replays the old run on a rotated worker
        status = await handle.query("status", result_type=RollbackStatus)
    assert any(CANARY in event.message for event in status.timeline)

    new_id = await rollback_with(rotated, shop, task_queue)
    new_keys = {p.metadata["encryption-key-id"] for e in (await raw_history(env, new_id)).events
                for p in payloads_in(e)}
    assert new_keys == {b"key-b"}

    only_b = await client_with(temporal_address, KEY_B)
    assert (await only_b.get_workflow_handle(new_id, result_type=AppRollbackResult).result()).outcome == "rolled_back"
    with pytest.raises(CodecKeyMissing) as missing:
        await only_b.get_workflow_handle(workflow_id, result_type=AppRollbackResult).result()
    message = str(missing.value)
    assert "key id 'key-a'" in message and "it has: key-b" in message and "\n" not in message
    assert KEY_A.split(":")[1] not in message and KEY_B.split(":")[1] not in message


async def test_a_remote_cluster_without_keys_is_refused_in_one_line():
    with pytest.raises(TemporalUnreachable) as refused:
        await connect(TemporalSettings(address="temporal.example.com:7233"), environ={})
    assert "payload encryption is required" in str(refused.value) and KEYS_ENV in str(refused.value)
    proc = subprocess.run([ROLLBACK, "list"], capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ROLLBACK_"))},
                               "TEMPORAL_ADDRESS": "temporal.example.com:7233"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "payload encryption is required" in proc.stderr
    # the explicit opt-out is honoured (it then fails only on reaching the server, which is not there)
    assert "payload encryption" not in subprocess.run(
        [ROLLBACK, "list"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.2:{engines.free_port()}", "TEMPORAL_TLS": "true",
             "ROLLBACK_CODEC": "off"}).stderr


# ---------------------------------------------------------------------------------------------
# The codec server, as the Temporal UI calls it from the browser

UI = "https://ui.example"
TOKEN = "t0ken-" + uuid.uuid4().hex


@pytest.fixture
def codec_server():
    port = engines.free_port()
    env = {**os.environ, KEYS_ENV: f"{KEY_B},{KEY_A}", "ROLLBACK_CODEC_SERVER_TOKEN": TOKEN}
    process = subprocess.Popen([ROLLBACK, "codec-server", "--port", str(port), "--origin", UI], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not engines.port_open("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def ui_headers(**extra) -> dict:
    return {"Content-Type": "application/json", "X-Namespace": "default", "Origin": UI,
            "Authorization": f"Bearer {TOKEN}", **extra}


async def test_codec_server_decodes_a_history_payload_for_the_ui(env, temporal_address, task_queue, shop,
                                                                 codec_server):
    workflow_id = await rollback_with(await client_with(temporal_address, KEY_A), shop, task_queue)
    started = (await raw_history(env, workflow_id)).events[0]
    sealed = started.workflow_execution_started_event_attributes.input
    body = json_format.MessageToJson(sealed)  # what the UI posts: base64 data and metadata values

    async with httpx.AsyncClient(base_url=codec_server, timeout=10) as http:
        preflight = await http.options("/decode", headers={
            "Origin": UI, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == UI
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"content-type", "x-namespace", "authorization"} <= {h.strip() for h in allowed.split(",")}
        assert "POST" in preflight.headers["access-control-allow-methods"]

        decoded = await http.post("/decode", content=body, headers=ui_headers())
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["access-control-allow-origin"] == UI
        [payload] = decoded.json()["payloads"]
        assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain"
        assert json.loads(base64.b64decode(payload["data"]))["reason"] == CANARY

        for headers in (ui_headers(Authorization=""), ui_headers(Authorization="Bearer wrong")):
            refused = await http.post("/decode", content=body, headers=headers)
            assert refused.status_code == 401 and CANARY not in refused.text
            assert refused.headers["access-control-allow-origin"] == UI  # so the UI can show why
        other_site = await http.options("/decode", headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other_site.headers

        encoded = await http.post("/encode", content=decoded.text, headers=ui_headers())
        [resealed] = encoded.json()["payloads"]
        assert base64.b64decode(resealed["metadata"]["encryption-key-id"]) == b"key-b"  # the current key
        assert CANARY not in encoded.text
        garbage = await http.post("/decode", content="{not json", headers=ui_headers())
        assert garbage.status_code == 400


def test_codec_server_refuses_to_start_without_a_token():
    proc = subprocess.run([ROLLBACK, "codec-server", "--origin", UI], capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("ROLLBACK_")},
                               KEYS_ENV: KEY_A})
    assert proc.returncode == 1 and proc.stderr.startswith("error: set ROLLBACK_CODEC_SERVER_TOKEN")
    assert proc.stderr.strip().count("\n") == 0
