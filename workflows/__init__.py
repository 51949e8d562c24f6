"""Deterministic workflow code: rollback workflows, shared models, config models and policy."""

from workflows.app_rollback import AppRollbackWorkflow

WORKFLOWS = [AppRollbackWorkflow]

__all__ = ["AppRollbackWorkflow", "WORKFLOWS"]
