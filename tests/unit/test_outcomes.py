"""One list of outcomes for every workflow and the CLI: each outcome a workflow can end with is an
Outcome, and the CLI's exit code follows Outcome.succeeded."""

from __future__ import annotations

import re
from pathlib import Path

from workflows.models import Outcome

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def test_every_outcome_a_workflow_ends_with_is_known():
    used = set()
    for source in WORKFLOWS.glob("*.py"):
        used |= set(re.findall(r"finish\(\s*\w+,\s*\"(\w+)\"", source.read_text()))
    assert used and used <= {o.value for o in Outcome}, used - {o.value for o in Outcome}


def test_success_and_failure():
    for ok in ("rolled_back", "restored", "recovered", "repaired", "cleaned", "dry_run", "nothing_to_do", "not_dirty"):
        assert Outcome.succeeded(ok), ok
    for bad in ("rejected", "not_approved", "compensated", "failed", "rejectd"):
        assert not Outcome.succeeded(bad), bad
