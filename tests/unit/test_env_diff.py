"""Env diff by hash (names only) and the config_files section's validation."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from workflows.config import ServiceConfig
from workflows.env import diff_env
from workflows.models import EnvSnapshot


def snap(deployment: str, **hashes: str) -> EnvSnapshot:
    return EnvSnapshot(service="web", provider="docker", deployment=deployment, taken_at=datetime.now(timezone.utc),
                       hashes=hashes, ref="0" * 32, healthy=True)


def test_diff_names_added_removed_and_changed_by_hash():
    base, now = snap("a", KEEP="1", GONE="2", EDIT="3", SENS="unreadable"), snap("b", KEEP="1", EDIT="4", NEW="5",
                                                                                   SENS="unreadable")
    diff = diff_env(base, now)
    assert (diff.added, diff.removed, diff.changed) == (["NEW"], ["GONE"], ["EDIT", "SENS"])
    assert diff.message.startswith("1 added, 1 removed, 2 changed since a")


def test_no_base_yet_is_said_plainly():
    assert "no earlier healthy deployment" in diff_env(None, snap("b", A="1")).message


def test_config_files_need_a_repository():
    app = {"provider": "vercel", "vercel": {"project": "p"}}
    with pytest.raises(ValidationError, match="config_files needs a `git` section"):
        ServiceConfig.model_validate({"app": app, "health": {"url": "http://x"}, "config_files": {}})
    service = ServiceConfig.model_validate({"app": app, "health": {"url": "http://x"},
                                            "config_files": {"git": {"repo": "/r.git"}}})
    assert service.config_repo().repo == "/r.git" and service.config_files.paths == ["vercel.json", "next.config.js"]
