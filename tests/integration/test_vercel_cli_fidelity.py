"""The real Vercel CLI (npm `vercel@48`) against our contract server: if the real client is
satisfied, the fake answers the way Vercel does. `.ci/run` installs the CLI into .tools/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, unavailable
from tests.contract.server import serve
from tests.contract.vercel import FakeVercel, realistic


def vercel_cli() -> str:
    for candidate in (os.environ.get("VERCEL_CLI"), ROOT / ".tools" / "node_modules" / ".bin" / "vercel",
                      shutil.which("vercel")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    unavailable("the Vercel CLI is not installed: npm install --prefix .tools vercel@48")


@pytest.fixture
def linked(tmp_path):
    # the CLI sends `teamId` on its polls only, so the token's default scope must be the team
    fake = FakeVercel(team_id="team_acme", default_team_id="team_acme")
    realistic(fake)
    server = serve(fake.app())
    (tmp_path / ".vercel").mkdir()
    (tmp_path / ".vercel" / "project.json").write_text(json.dumps({"projectId": "prj_shop", "orgId": "team_acme"}))
    cli = vercel_cli()

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "VERCEL_TELEMETRY_DISABLED": "1", "HOME": str(tmp_path), "NO_COLOR": "1", "CI": "1"}
        return subprocess.run([cli, "--api", server.url, "--token", fake.token, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    yield fake, run
    server.stop()


def url_of(fake: FakeVercel, uid: str) -> str:
    return next(d["url"] for d in fake.deployments if d["uid"] == uid)


def test_real_cli_rollback_then_promote(linked):
    fake, run = linked
    rolled = run("rollback", url_of(fake, "dpl_goodprodzz"), "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert "was rolled back to" in rolled.stderr + rolled.stdout
    assert fake.production["prj_shop"] == "dpl_goodprodzz"
    assert fake.count("POST", "/v9/projects/prj_shop/rollback/dpl_goodprodzz") == 1

    promoted = run("promote", url_of(fake, "dpl_badprodzzz"), "--yes")
    assert promoted.returncode == 0, promoted.stderr
    assert fake.production["prj_shop"] == "dpl_badprodzzz"
    assert fake.count("POST", "/v10/projects/prj_shop/promote/dpl_badprodzzz") == 1


def test_real_cli_reads_our_error_bodies(linked):
    fake, run = linked
    missing = run("rollback", "no-such-deployment.vercel.app", "--yes")
    assert missing.returncode != 0
    assert "Can't find the deployment" in missing.stderr  # the CLI understood our 404
    assert fake.count("POST", "") == 0

    fake.inject["rollback"].append((409, {}))
    conflict = run("rollback", url_of(fake, "dpl_goodprodzz"), "--yes")
    assert conflict.returncode != 0
    assert "A rollback is already in progress (409)" in conflict.stderr  # our error body, as the CLI prints it
    assert fake.production["prj_shop"] == "dpl_badprodzzz"
