"""The `keys` section of a service: defaults and what a provider needs, refused at load time."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workflows.config import RotatedKey, ServiceConfig

APP = {"app": {"provider": "vercel", "vercel": {"project": "p", "token_env": "VERCEL_TOKEN"}},
       "health": {"url": "http://127.0.0.1/health"}}


def test_env_defaults_to_the_key_name_and_admin_tokens_are_secrets_the_worker_needs():
    service = ServiceConfig.model_validate({**APP, "keys": [
        {"name": "STRIPE_SECRET_KEY", "provider": "stripe"},
        {"name": "TWILIO_API_SECRET", "provider": "twilio", "id_env": "TWILIO_API_KEY", "account": "AC1",
         "admin_token_env": "TWILIO_AUTH_TOKEN"}]})
    assert service.keys[0].env == ["STRIPE_SECRET_KEY"] and service.keys[0].base_url() == "https://api.stripe.com"
    assert "TWILIO_AUTH_TOKEN" in service.secret_env_names()


def test_twilio_without_account_token_or_id_variable_is_refused():
    with pytest.raises(ValidationError) as error:
        RotatedKey.model_validate({"name": "TWILIO_API_SECRET", "provider": "twilio"})
    assert "twilio needs account, admin_token_env, id_env" in str(error.value)


def test_a_provider_without_support_is_refused():
    with pytest.raises(ValidationError):
        RotatedKey.model_validate({"name": "OPENAI_API_KEY", "provider": "openai"})
