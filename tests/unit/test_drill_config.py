"""Which staging targets an app drill accepts: never production, same provider kind."""

from __future__ import annotations

from datetime import timedelta

import pytest

from starter.drills import parse_every
from workflows.config import RollbackConfig


def docker(container: str, drill: dict | None = None) -> dict:
    service = {"app": {"provider": "docker", "docker": {"container": container}},
               "health": {"url": "http://127.0.0.1:1/health"}}
    return {**service, "drill": drill} if drill else service


DRILL = {"staging_service": "web-staging", "baseline_image": "demo-web:v1", "problem_image": "demo-web:v2"}


def problem(services: dict) -> str | None:
    return RollbackConfig.model_validate({"services": services}).drill_staging_problem("web")


def test_a_separate_staging_container_is_accepted_and_targets_keep_the_runbook_defaults():
    config = RollbackConfig.model_validate({"services": {
        "web": docker("web", {**DRILL, "targets": {"docker": "PT1M"}}), "web-staging": docker("web-staging")}})
    assert config.drill_staging_problem("web") is None
    targets = config.services["web"].drill.targets
    assert targets["docker"] == timedelta(minutes=1) and targets["database"] == timedelta(minutes=20)
    assert targets["vercel"] == timedelta(minutes=3) and targets["git"] == timedelta(minutes=8)


@pytest.mark.parametrize("services, why", [
    ({"web": docker("web")}, "has no drill staging target"),
    ({"web": docker("web", DRILL)}, "is not a configured service"),
    ({"web": docker("web", DRILL), "web-staging": docker("web")}, "points at the production target itself"),
    ({"web": docker("web", {**DRILL, "staging_service": "web"})}, "points at the production target itself"),
    ({"web": docker("web", {"staging_service": "web-staging"}), "web-staging": docker("stg")}, "needs drill.baseline"),
])
def test_unfit_staging_targets_are_refused(services, why):
    assert why in problem(services)


def test_a_staging_target_of_another_provider_is_refused():
    staging = {"app": {"provider": "git", "git": {"repo": "/tmp/x"}}, "health": {"url": "http://127.0.0.1:1/h"}}
    assert "must rehearse the same method" in problem({"web": docker("web", DRILL), "web-staging": staging})


def test_drill_intervals():
    assert parse_every("90d") == timedelta(days=90) and parse_every("12w") == timedelta(weeks=12)
    for bad in ("0d", "90", "3 months", "-1d"):
        with pytest.raises(ValueError, match="e.g. 90d"):
            parse_every(bad)


def vercel(project: str, drill: dict | None = None) -> dict:
    service = {"app": {"provider": "vercel", "vercel": {"project": project}}, "health": {"url": "http://127.0.0.1:1/h"}}
    return {**service, "drill": drill} if drill else service


def git(branch: str, drill: dict | None = None) -> dict:
    service = {"app": {"provider": "git", "git": {"repo": "/srv/app.git", "branch": branch}},
               "health": {"url": "http://127.0.0.1:1/h"}}
    return {**service, "drill": drill} if drill else service


def test_vercel_drills_need_both_deployments_and_git_drills_need_nothing_more():
    two = {"staging_service": "web-staging", "baseline_deployment": "dpl_good", "problem_deployment": "dpl_bad"}
    assert problem({"web": vercel("prj_web", two), "web-staging": vercel("prj_web_stg")}) is None
    assert "needs drill.baseline_deployment and drill.problem_deployment" in problem(
        {"web": vercel("prj_web", {"staging_service": "web-staging", "baseline_deployment": "dpl_good"}),
         "web-staging": vercel("prj_web_stg")})
    assert "points at the production target itself" in problem(
        {"web": vercel("prj_web", two), "web-staging": vercel("prj_web")})
    assert problem({"web": git("main", {"staging_service": "web-staging"}), "web-staging": git("staging")}) is None
    assert "points at the production target itself" in problem(
        {"web": git("main", {"staging_service": "web-staging"}), "web-staging": git("main")})


def test_compose_drills_are_refused_clearly():
    def compose(project: str, drill: dict | None = None) -> dict:
        service = {"app": {"provider": "compose", "compose": {"project": project, "service": "web", "file": "c.yml",
                                                                 "image_env": "IMAGE"}},
                   "health": {"url": "http://127.0.0.1:1/h"}}
        return {**service, "drill": drill} if drill else service

    why = problem({"web": compose("shop", {"staging_service": "web-staging"}), "web-staging": compose("shop-stg")})
    assert "on docker, vercel and git targets, not compose" in why


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "a/../../b", ".git/config", " "])
def test_the_git_marker_file_stays_inside_the_repository(path):
    with pytest.raises(ValueError, match="must be a path inside the repository"):
        RollbackConfig.model_validate({"services": {"web": git("main", {"staging_service": "s", "problem_file": path})}})


def test_the_pitr_target_follows_the_database_target_unless_set():
    config = RollbackConfig.model_validate({"services": {
        "a": docker("a", {"targets": {"database": "PT10M"}}), "b": docker("b", {"targets": {"pitr": "PT30M"}})}})
    assert config.services["a"].drill.targets["pitr"] == timedelta(minutes=10)
    assert config.services["b"].drill.targets["pitr"] == timedelta(minutes=30)
    assert config.services["b"].drill.targets["database"] == timedelta(minutes=20)
    assert config.services["a"].drill.pitr_age == timedelta(hours=1)
