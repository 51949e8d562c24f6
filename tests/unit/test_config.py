from pathlib import Path

import pytest

from workflows.config import ConfigError, load_config, missing_secrets

ROOT = Path(__file__).resolve().parents[2]

SERVICE = """
services:
  web:
    app:
      provider: vercel
      vercel: {project: prj_1, token_env: WEB_VERCEL_TOKEN}
    health:
      url: http://127.0.0.1:1/health
"""


def test_demo_config_loads():
    config = load_config(ROOT / "deploy" / "demo" / "rollback.yaml")
    web = config.service("demo-web")
    assert web.app.provider == "docker" and web.health.rollback_error_rate == 0.05
    assert web.policy.database_approval == "always"


def test_runbook_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SERVICE)
    health = load_config(path).service("web").health
    assert (health.rollback_error_rate, health.warn_error_rate) == (0.05, 0.01)


def test_typo_names_file_service_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SERVICE.replace("url: http", "ulr: http"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert "services.web.health.ulr: unknown field" in message
    assert "services.web.health.url: required field is missing" in message


def test_provider_without_its_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SERVICE.replace("provider: vercel", "provider: docker"))
    with pytest.raises(ConfigError, match="provider is 'docker' but the 'docker' section is missing"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_missing_secret_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SERVICE)
    config = load_config(path)
    assert missing_secrets(config, {}) == ["service 'web': environment variable WEB_VERCEL_TOKEN is not set"]
    assert missing_secrets(config, {"WEB_VERCEL_TOKEN": "x"}) == []


def test_unknown_service_lists_the_known_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SERVICE)
    with pytest.raises(ConfigError, match=r"unknown service 'api' \(configured: web\)"):
        load_config(path).service("api")


def test_config_source_parses_once_and_sees_edits(tmp_path):
    import os

    from activities.common import ConfigSource

    path = tmp_path / "c.yaml"
    path.write_text(SERVICE)
    source = ConfigSource(path)
    first = source.config
    assert source.config is first  # not re-parsed while the file is unchanged
    path.write_text(SERVICE.replace("prj_1", "prj_2222"))
    os.utime(path, (first_mtime := path.stat().st_mtime + 1, first_mtime))
    assert source.config.service("web").app.vercel.project == "prj_2222"
