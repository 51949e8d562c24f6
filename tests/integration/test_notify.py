"""Slack notifications through the contract server: one message per key, errors handled."""

from __future__ import annotations

import os

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import NotifyActivities
from tests.contract.slack import HOOK_PATH
from workflows.models import NotifyRequest

SERVICE = {"app": {"provider": "docker", "docker": {"container": "x"}}, "health": {"url": "http://127.0.0.1:9/h"},
           "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"}}


async def test_one_message_per_key_even_when_retried(slack, write_config):
    activities = NotifyActivities(write_config({"web": SERVICE}))
    request = NotifyRequest(service="web", key="wf/resolved", text="web rolled back", fields={"reason": "5xx"})
    environment = ActivityEnvironment()
    assert await environment.run(activities.slack, request) is True
    assert await environment.run(activities.slack, request) is True  # a retry after a crash
    assert len(slack.messages) == 1
    message = slack.messages[0]
    assert message["text"] == "web rolled back"
    assert message["blocks"][1]["fields"][0]["text"] == "*reason*\n5xx"


async def test_rate_limit_is_retryable_and_unknown_hook_is_not(slack, write_config, monkeypatch):
    activities = NotifyActivities(write_config({"web": SERVICE}))
    environment = ActivityEnvironment()
    slack.inject.append(429)
    with pytest.raises(ApplicationError) as limited:
        await environment.run(activities.slack, NotifyRequest(service="web", key="k1", text="hi"))
    assert not limited.value.non_retryable and limited.value.next_retry_delay.total_seconds() == 1
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack_url_with_wrong_path())
    with pytest.raises(ApplicationError) as missing:
        await environment.run(activities.slack, NotifyRequest(service="web", key="k2", text="hi"))
    assert missing.value.non_retryable and "HTTP 404" in str(missing.value)
    assert "XXXXSECRETXXXX" not in str(missing.value)  # the webhook URL is a secret


def slack_url_with_wrong_path() -> str:
    return os.environ["TEST_SLACK_WEBHOOK"].replace(HOOK_PATH, "/services/T000/B000/revoked")


async def test_no_slack_configured_sends_nothing(write_config):
    service = {**SERVICE, "notify": {}}
    activities = NotifyActivities(write_config({"web": service}))
    assert await ActivityEnvironment().run(activities.slack, NotifyRequest(service="web", key="k", text="x")) is False
