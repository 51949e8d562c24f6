"""Connection settings for the worker and the CLI, from the environment (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter

from workflows.models import TASK_QUEUE


class TemporalSettings(BaseSettings):
    """Where Temporal is: a local dev server by default, a remote cluster or Temporal Cloud by env."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = TASK_QUEUE
    tls_cert: Path | None = None  # client certificate (mTLS)
    tls_key: Path | None = None
    tls_ca: Path | None = None
    api_key: SecretStr | None = None  # Temporal Cloud API key; implies TLS


class TemporalUnreachable(Exception):
    pass


async def connect(settings: TemporalSettings | None = None) -> Client:
    settings = settings or TemporalSettings()
    tls: TLSConfig | bool = False
    if settings.tls_cert and settings.tls_key:
        tls = TLSConfig(
            client_cert=settings.tls_cert.read_bytes(),
            client_private_key=settings.tls_key.read_bytes(),
            server_root_ca_cert=settings.tls_ca.read_bytes() if settings.tls_ca else None,
        )
    elif settings.api_key:
        tls = True
    try:
        return await Client.connect(
            settings.address,
            namespace=settings.namespace,
            data_converter=pydantic_data_converter,
            tls=tls,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        )
    except RuntimeError as exc:
        raise TemporalUnreachable(
            f"cannot reach the Temporal server at {settings.address} (namespace {settings.namespace}): "
            f"{str(exc).splitlines()[0][:200]}. Start one with `rollback up` or set TEMPORAL_ADDRESS."
        ) from None
