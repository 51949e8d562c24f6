"""Connection settings for the worker and the CLI, from the environment (pydantic-settings)."""

from __future__ import annotations

import datetime
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, TLSConfig
from temporalio.service import RPCError, RPCStatusCode

from worker.codec import CodecError, codec_policy, data_converter
from workflows.models import TASK_QUEUE


class TemporalSettings(BaseSettings):
    """Where Temporal is: a local dev server by default, a remote cluster or Temporal Cloud by env."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = TASK_QUEUE
    tls: bool = False  # TLS with the system CAs; implied by any of the settings below
    tls_cert: Path | None = None  # client certificate (mTLS)
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA that signed the server's certificate (default: the system's)
    tls_server_name: str | None = None  # the name on the server's certificate, if not the address's host
    api_key: SecretStr | None = None  # Temporal Cloud API key; implies TLS

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_cert or self.tls_key or self.tls_ca or self.api_key)


class TemporalUnreachable(Exception):
    pass


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TemporalUnreachable(f"{variable}={path}: cannot read it ({exc.strerror or exc})") from None


def _client_certificate(settings: TemporalSettings) -> tuple[bytes, bytes]:
    """The client certificate and key, refused here when the server would refuse them anyway
    with nothing but a closed connection to show for it (TLS 1.3 sends no reason)."""
    from cryptography import x509

    if not (settings.tls_cert and settings.tls_key):
        missing = "TEMPORAL_TLS_KEY" if settings.tls_cert else "TEMPORAL_TLS_CERT"
        raise TemporalUnreachable(f"mTLS needs both TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY; {missing} is not set")
    cert, key = _read(settings.tls_cert, "TEMPORAL_TLS_CERT"), _read(settings.tls_key, "TEMPORAL_TLS_KEY")
    try:
        parsed = x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise TemporalUnreachable(f"TEMPORAL_TLS_CERT={settings.tls_cert} is not a PEM certificate") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    if parsed.not_valid_after_utc < now:
        raise TemporalUnreachable(f"the client certificate TEMPORAL_TLS_CERT={settings.tls_cert} expired on "
                                  f"{parsed.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; the server will refuse it: "
                                  f"renew it")
    if parsed.not_valid_before_utc > now:
        raise TemporalUnreachable(f"the client certificate TEMPORAL_TLS_CERT={settings.tls_cert} is not valid "
                                  f"before {parsed.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert, key


def tls_config(settings: TemporalSettings) -> TLSConfig | bool:
    if not settings.uses_tls:
        return False
    cert = key = None
    if settings.tls_cert or settings.tls_key:
        cert, key = _client_certificate(settings)
    return TLSConfig(
        server_root_ca_cert=_read(settings.tls_ca, "TEMPORAL_TLS_CA") if settings.tls_ca else None,
        domain=settings.tls_server_name,
        client_cert=cert,
        client_private_key=key,
    )


def _explain(settings: TemporalSettings, error: str) -> str:
    """What a connection failure means for the operator, from the transport's own wording."""
    where = f"the Temporal server at {settings.address}"
    ca = f"TEMPORAL_TLS_CA={settings.tls_ca}" if settings.tls_ca else "the system's CAs (TEMPORAL_TLS_CA is not set)"
    if "UnknownIssuer" in error or "BadSignature" in error:
        return f"{where} presented a TLS certificate not signed by {ca}: wrong CA file or wrong server"
    if "NotValidForName" in error:
        return (f"the TLS certificate of {where} is not issued for that host name; set TEMPORAL_TLS_SERVER_NAME "
                f"to the name it carries")
    if "InvalidCertificate(Expired" in error:
        return f"the TLS certificate of {where} has expired (a server-side problem)"
    if "InvalidContentType" in error or "CorruptMessage" in error or "InvalidMessage" in error:
        return f"{where} did not answer with TLS: unset TEMPORAL_TLS* if it speaks plain gRPC"
    # TLS 1.3 checks the client certificate after the client thinks the handshake is done: a
    # refusal shows up only as the connection closing under the first call, in several wordings
    closed = any(sign in error for sign in ("transport error", "close_notify", "BrokenPipe", "ConnectionReset",
                                            "Canceled"))
    if settings.tls_cert and closed:
        return (f"{where} closed the connection after the TLS handshake: it refused the client certificate "
                f"TEMPORAL_TLS_CERT={settings.tls_cert} (not signed by a CA it trusts, or revoked)")
    if settings.uses_tls and closed:
        return f"{where} closed the TLS connection: it probably requires a client certificate (TEMPORAL_TLS_CERT/KEY)"
    if not settings.uses_tls and closed:
        return (f"{where} closed the connection: if it expects TLS, set TEMPORAL_TLS=true (or TEMPORAL_TLS_CA, "
                f"TEMPORAL_TLS_CERT/KEY, TEMPORAL_API_KEY)")
    return (f"cannot reach {where} (namespace {settings.namespace}): {error.splitlines()[0][:200]}. "
            "Start one with `rollback up` or set TEMPORAL_ADDRESS.")


async def connect(settings: TemporalSettings | None = None, environ: dict[str, str] | None = None) -> Client:
    """A client for the configured cluster and namespace, with the payload codec `codec_policy`
    requires (keys from `environ`, default os.environ). Every failure a person can fix is a
    one-line TemporalUnreachable saying what to fix."""
    settings = settings or TemporalSettings()
    try:
        codec = codec_policy(settings.address, settings.uses_tls, environ)
    except CodecError as exc:
        raise TemporalUnreachable(str(exc)) from None
    tls = tls_config(settings)
    try:
        client = await Client.connect(
            settings.address,
            namespace=settings.namespace,
            data_converter=data_converter(codec),
            tls=tls,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        )
    except RuntimeError as exc:
        raise TemporalUnreachable(_explain(settings, str(exc))) from None
    # Connecting checks the server only; a misspelt namespace would otherwise fail later, per call.
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=settings.namespace))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise TemporalUnreachable(f"namespace {settings.namespace!r} does not exist on the Temporal server at "
                                      f"{settings.address}: check TEMPORAL_NAMESPACE") from None
        if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
            raise TemporalUnreachable(f"the Temporal server at {settings.address} refused these credentials for "
                                      f"namespace {settings.namespace!r}: {exc.message[:200]}") from None
        raise
    return client
