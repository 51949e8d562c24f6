"""A remote cluster for real: the dev server behind a TLS terminator that demands a client
certificate (tests/tls_terminator.py), reached only through env settings, as `rollback worker`
and the CLI reach it. Each mistake an operator makes is one line saying which."""

from __future__ import annotations

import base64
import os
import uuid

import pytest
from temporalio.client import Client, TLSConfig

from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.integration.test_vercel_rollback import vercel_service
from tests.test_cli import assert_one_line_error, cli
from tests.tls_terminator import CertificateAuthority, TlsTerminator
from worker.codec import KEYS_ENV
from worker.settings import TemporalSettings, TemporalUnreachable, connect
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

KEYS = {KEYS_ENV: "k1:" + base64.b64encode(os.urandom(32)).decode()}


class Pki:
    def __init__(self, directory):
        self.ca = CertificateAuthority(directory, "cluster-ca")
        self.other_ca = CertificateAuthority(directory, "someone-elses-ca")
        self.server = self.ca.issue("frontend", server=True)
        self.client = self.ca.issue("worker")
        self.expired = self.ca.issue("worker-last-year", expired=True)
        self.stranger = self.other_ca.issue("stranger")


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def cluster(env, temporal_address, pki):
    """The dev server as a remote mTLS cluster: only 127.0.0.1:<port> with TLS and a client cert."""
    terminator = TlsTerminator(temporal_address, pki.server, client_ca=pki.ca.pem).start()
    yield terminator
    terminator.stop()


def settings(cluster, pki, **overrides) -> TemporalSettings:
    values = {"address": cluster.address, "tls_ca": pki.ca.pem, "tls_cert": pki.client.cert,
              "tls_key": pki.client.key, **overrides}
    return TemporalSettings(**values)


async def test_mtls_with_the_right_ca_and_client_cert_runs_a_rollback(cluster, pki, task_queue, vercel,
                                                                      write_config, monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    client = await connect(settings(cluster, pki), environ=KEYS)
    async with running_worker(client, write_config({"shop": vercel_service(vercel)}), task_queue):
        result = await client.execute_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop"),
                                               id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                               result_type=AppRollbackResult)
    assert result.outcome == "rolled_back"
    assert any(headers.get("temporal-namespace") == "default" for headers in cluster.headers)


async def test_a_wrong_ca_is_named(cluster, pki):
    with pytest.raises(TemporalUnreachable) as failed:
        await connect(settings(cluster, pki, tls_ca=pki.other_ca.pem), environ=KEYS)
    assert str(failed.value) == (f"the Temporal server at {cluster.address} presented a TLS certificate not signed "
                                 f"by TEMPORAL_TLS_CA={pki.other_ca.pem}: wrong CA file or wrong server")


async def test_an_expired_client_cert_is_named(cluster, pki):
    with pytest.raises(TemporalUnreachable) as failed:
        await connect(settings(cluster, pki, tls_cert=pki.expired.cert, tls_key=pki.expired.key), environ=KEYS)
    assert str(failed.value).startswith(f"the client certificate TEMPORAL_TLS_CERT={pki.expired.cert} expired on ")
    # and the terminator does refuse it: the check above only says so before the server does
    with pytest.raises(RuntimeError):
        await Client.connect(cluster.address, tls=TLSConfig(
            server_root_ca_cert=pki.ca.pem.read_bytes(), client_cert=pki.expired.cert.read_bytes(),
            client_private_key=pki.expired.key.read_bytes()))


async def test_a_client_cert_the_cluster_does_not_trust_is_named(cluster, pki):
    with pytest.raises(TemporalUnreachable) as failed:
        await connect(settings(cluster, pki, tls_cert=pki.stranger.cert, tls_key=pki.stranger.key), environ=KEYS)
    assert "refused the client certificate" in str(failed.value)
    assert str(pki.stranger.cert) in str(failed.value)


async def test_a_wrong_namespace_is_named(cluster, pki):
    with pytest.raises(TemporalUnreachable) as failed:
        await connect(settings(cluster, pki, namespace="prod-typo"), environ=KEYS)
    assert str(failed.value) == (f"namespace 'prod-typo' does not exist on the Temporal server at {cluster.address}: "
                                 "check TEMPORAL_NAMESPACE")


async def test_tls_without_codec_keys_is_refused(cluster, pki):
    with pytest.raises(TemporalUnreachable) as failed:
        await connect(settings(cluster, pki), environ={})
    assert "payload encryption is required" in str(failed.value)
    assert (await connect(settings(cluster, pki), environ={"ROLLBACK_CODEC": "off"})).namespace == "default"


def test_the_cli_says_which_in_one_line(cluster, pki):
    """What an operator sees from `rollback list` with each mistake: one line, no traceback."""
    base = {"TEMPORAL_TLS_CA": str(pki.ca.pem), "TEMPORAL_TLS_CERT": str(pki.client.cert),
            "TEMPORAL_TLS_KEY": str(pki.client.key), **KEYS}
    assert cli("list", address=cluster.address, extra_env=base).returncode == 0
    assert_one_line_error(cli("list", address=cluster.address, extra_env={**base, "TEMPORAL_TLS_CA": str(pki.other_ca.pem)}),
                          1, "not signed by TEMPORAL_TLS_CA=")
    assert_one_line_error(cli("list", address=cluster.address,
                              extra_env={**base, "TEMPORAL_TLS_CERT": str(pki.expired.cert),
                                         "TEMPORAL_TLS_KEY": str(pki.expired.key)}), 1, "expired on")
    assert_one_line_error(cli("list", address=cluster.address, extra_env={**base, "TEMPORAL_NAMESPACE": "prod-typo"}),
                          1, "namespace 'prod-typo' does not exist")
    no_key = {name: value for name, value in base.items() if name != "TEMPORAL_TLS_KEY"}
    assert_one_line_error(cli("list", address=cluster.address, extra_env=no_key), 1, "TEMPORAL_TLS_KEY is not set")


async def test_an_api_key_is_sent_as_a_bearer_token(env, temporal_address, pki):
    """Temporal Cloud's API-key mode: server TLS only, the key in `authorization` metadata."""
    terminator = TlsTerminator(temporal_address, pki.server, client_ca=None).start()
    try:
        key = f"tcld_{uuid.uuid4().hex}"
        client = await connect(TemporalSettings(address=terminator.address, tls_ca=pki.ca.pem, api_key=key),
                               environ=KEYS)
        await client.count_workflows()
    finally:
        terminator.stop()
    sent = [headers for headers in terminator.headers if headers.get(":path", "").endswith("/CountWorkflowExecutions")]
    assert sent and all(headers.get("authorization") == f"Bearer {key}" for headers in sent)
