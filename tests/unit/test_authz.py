"""Who may approve, what a restore may read, and what outside text may do in Slack and Markdown."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from activities.backups import BackupActivities
from activities.capture import render_postmortem
from activities.common import ConfigSource
from activities.docker import DockerActivities
from activities.notify import slack_payload
from starter.slack_actions import signature, verified
from workflows.approvals import refusal, resolve_rules
from workflows.config import RollbackConfig
from workflows.models import (ArchiveRequest, BackupManifest, NotifyRequest, PostmortemRequest, RestoreInput,
                              TimelineEvent, VolumeRestoreInput)

SERVICE = {"app": {"provider": "docker", "docker": {"container": "web"}}, "health": {"url": "http://127.0.0.1:9/h"}}


def config(**top) -> RollbackConfig:
    return RollbackConfig.model_validate({"services": {"web": {**SERVICE, **top.pop("service", {})}}, **top})


def test_policy_admits_people_and_groups_and_refuses_the_rest():
    rules = resolve_rules(config(people={"alice": {"groups": ["leads"]}, "dana": {"groups": ["dba"]}, "eve": {}},
                                 approvals={"app": {"groups": ["leads"]}, "database": {"people": ["dana"]}}), "web")
    assert refusal(rules, ["app"], "alice", "bob", approving=True) is None
    assert "eve may not decide app steps" in refusal(rules, ["app"], "eve", "bob", approving=True)
    assert "may not decide database" in refusal(rules, ["database"], "alice", "bob", approving=True)
    assert "four eyes" in refusal(rules, ["database"], "dana", "dana", approving=True)
    assert refusal(rules, ["database"], "dana", "dana", approving=False) is None  # rejecting one's own run is fine
    assert refusal(rules, ["repair"], "anyone", "x", approving=True) is None  # a kind without a list is open
    assert "already approved" in refusal(rules, ["app"], "alice", "bob", approving=True, already=["alice"])
    # approval 1 of 2 given, then a change of mind: the same person may still reject
    assert refusal(rules, ["app"], "alice", "bob", approving=False, already=["alice"]) is None


def test_service_policy_overrides_the_top_level_per_kind():
    loaded = config(people={"a": {}, "b": {}}, approvals={"app": {"people": ["a"]}, "min_approvers_p0_restore": 2},
                    service={"approvals": {"database": {"people": ["b"]}}})
    rules = resolve_rules(loaded, "web")
    assert rules.allowed == {"app": ["a"], "database": ["b"]} and rules.min_approvers_p0_restore == 2
    assert resolve_rules(config(), "web") is None  # no policy: as before


@pytest.mark.parametrize("broken, message", [
    ({"approvals": {"app": {"people": ["ghost"]}}}, "unknown person 'ghost'"),
    ({"people": {"a": {}}, "approvals": {"app": {"groups": ["nobody"]}}}, "no person is in group 'nobody'"),
    ({"people": {"a": {"slack": "U1"}, "b": {"slack": "U1"}}}, "Slack user ID is given to two people"),
    ({"approvals": {"deploy": {}}}, "Extra inputs"),
])
def test_bad_policies_are_config_errors(broken, message):
    with pytest.raises(ValidationError, match=message):
        config(**broken)


@pytest.mark.parametrize("source", ["/etc/passwd", "../other/b1", "b1/../../x", "a/b", "..", ".hidden", "x\\y", ""])
def test_backup_ids_that_are_paths_are_refused_by_the_models(source):
    with pytest.raises(ValidationError, match="not a backup id"):
        RestoreInput(service="web", source=source)
    with pytest.raises(ValidationError, match="not a backup id"):
        VolumeRestoreInput(service="web", source=source)


def test_special_restore_sources_still_work():
    assert RestoreInput(service="web", source="pitr").source == "pitr"
    assert RestoreInput(service="web", source="latest-before:2026-11-25T14:00:00Z").source.startswith("latest-before:")
    assert RestoreInput(service="web", source="shop-20261125140000-abcdef123456").source


def _manifest(directory, backup_id, archive) -> None:
    (directory / f"{backup_id}.manifest.json").write_text(BackupManifest(
        backup_id=backup_id, service="web", database="web", archive=str(archive), size_bytes=1, sha256="0" * 64,
        server_version="15", pg_dump_version="15", created_at=datetime.now(timezone.utc)).model_dump_json())


@pytest.fixture
def backups(tmp_path):
    directory, outside = tmp_path / "backups", tmp_path / "elsewhere"
    directory.mkdir(), outside.mkdir()
    loaded = config(service={"database": {"dsn_env": "X", "backup_dir": str(directory)}})
    return BackupActivities(ConfigSource(config=loaded)), directory, outside


@pytest.mark.parametrize("source", ["/tmp/evil.dump", "../elsewhere/b1", "b1/../../elsewhere/b1"])
async def test_validate_refuses_paths(backups, source):
    activities, directory, outside = backups
    with pytest.raises(ApplicationError, match="not a backup id"):
        await activities.validate(ArchiveRequest(service="web", archive=source))


async def test_validate_refuses_a_manifest_symlinked_from_outside(backups):
    activities, directory, outside = backups
    _manifest(outside, "b1", outside / "b1.dump")
    os.symlink(outside / "b1.manifest.json", directory / "b1.manifest.json")
    with pytest.raises(ApplicationError, match="outside the backup directory"):
        await activities.validate(ArchiveRequest(service="web", archive="b1"))


@pytest.mark.parametrize("archive", ["absolute", "symlink"])
async def test_validate_refuses_an_archive_outside_the_directory(backups, archive):
    activities, directory, outside = backups
    (outside / "b2.dump").write_bytes(b"PGDMP")
    if archive == "symlink":  # a link inside the directory pointing out
        os.symlink(outside / "b2.dump", directory / "b2.dump")
        _manifest(directory, "b2", directory / "b2.dump")
    else:
        _manifest(directory, "b2", outside / "b2.dump")
    with pytest.raises(ApplicationError, match="outside the backup directory"):
        await activities.validate(ArchiveRequest(service="web", archive="b2"))


def test_volume_validate_refuses_paths_and_archives_outside(tmp_path):
    directory, outside = tmp_path / "vol", tmp_path / "elsewhere"
    outside.mkdir()
    loaded = config(service={"app": {"provider": "docker", "docker": {"container": "web",
                                                                      "volume_backup_dir": str(directory)}}})
    activities = DockerActivities(ConfigSource(config=loaded))
    with pytest.raises(ApplicationError, match="not a backup id"):
        activities._volume_validate("web", "../elsewhere/v1")
    directory.mkdir(exist_ok=True)
    (directory / "v1.json").write_text(json.dumps({
        "backup_id": "v1", "service": "web", "volume": "data", "container": "web", "mount_path": "/data",
        "archive": str(outside / "v1.tar"), "size_bytes": 1, "sha256": "0" * 64, "files": 1,
        "created_at": "2026-11-25T14:00:00Z", "verified": True}))
    with pytest.raises(ApplicationError, match="outside the backup directory"):
        activities._volume_validate("web", "v1")


def test_slack_signature_is_slacks_documented_example():
    # api.slack.com/authentication/verifying-requests-from-slack, the worked example
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
            b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
            b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    assert signature("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body) == \
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    headers = {"x-slack-request-timestamp": "1531420618",
               "x-slack-signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    assert verified("8f742231b10e8888abcd99yyyzzz85a5", headers, body, now=1531420618 + 299)
    assert not verified("8f742231b10e8888abcd99yyyzzz85a5", headers, body, now=1531420618 + 301)
    assert not verified("8f742231b10e8888abcd99yyyzzz85a5", headers, body + b"x", now=1531420618)


def test_alert_text_cannot_ping_or_link_in_slack_or_markdown():
    hostile = "<!channel> pay here <https://evil.example|invoice> & [click](https://evil.example)"
    payload = slack_payload(NotifyRequest(service="web", key="k", text=hostile, fields={"alert": "<@U123>"}))
    sent = json.dumps(payload)
    assert "<!channel>" not in sent and "<https://evil" not in sent and "<@U123>" not in sent
    assert "&lt;!channel&gt;" in payload["text"] and "&amp;" in payload["text"]
    document = render_postmortem(PostmortemRequest(
        service="web", artifact_dir="", title="web: [x](https://evil.example)", summary={"alert": hostile},
        timeline=[TimelineEvent(at=datetime.now(timezone.utc), kind="signal", message=hostile, actor="<b>x</b>")]))
    assert "](https://evil" not in document.replace("\\]", "") and "<b>" not in document and "<!channel>" not in document
    assert "\\[click\\]" in document
