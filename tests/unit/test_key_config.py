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
    with pytest.raises(ValidationError) as error:
        RotatedKey.model_validate({"name": "AWS_SECRET_ACCESS_KEY", "provider": "aws"})
    assert "'twilio', 'stripe', 'supabase', 'openai' or 'generic'" in str(error.value)


def test_supabase_and_openai_need_where_keys_are_made_and_default_their_kind():
    with pytest.raises(ValidationError) as error:
        RotatedKey.model_validate({"name": "SUPABASE_SECRET_KEY", "provider": "supabase"})
    assert "supabase needs project, admin_token_env" in str(error.value)
    with pytest.raises(ValidationError) as error:  # project keys are made only for a service account
        RotatedKey.model_validate({"name": "OPENAI_API_KEY", "provider": "openai", "admin_token_env": "OPENAI_ADMIN"})
    assert "openai needs project, service_account" in str(error.value)
    admin = RotatedKey.model_validate({"name": "OPENAI_ADMIN_KEY", "provider": "openai", "kind": "admin",
                                       "admin_token_env": "OPENAI_ADMIN"})
    assert admin.base_url() == "https://api.openai.com"
    supabase = RotatedKey.model_validate({"name": "SUPABASE_SECRET_KEY", "provider": "supabase", "project": "abc",
                                          "admin_token_env": "SUPABASE_ACCESS_TOKEN"})
    assert supabase.kind == "secret" and supabase.base_url() == "https://api.supabase.com"


def test_a_kind_the_provider_does_not_have_is_refused():
    with pytest.raises(ValidationError) as error:
        RotatedKey.model_validate({"name": "K", "provider": "supabase", "project": "abc", "admin_token_env": "T",
                                   "kind": "service_role"})
    assert "supabase kind is one of secret, publishable, legacy_anon, legacy_service_role" in str(error.value)
    with pytest.raises(ValidationError) as error:
        RotatedKey.model_validate({"name": "STRIPE_SECRET_KEY", "provider": "stripe", "kind": "admin"})
    assert "`kind` is for supabase and openai keys" in str(error.value)
