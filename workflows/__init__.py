"""Deterministic workflow code: rollback workflows, shared models, config models and policy."""

from workflows.app_rollback import AppRollbackWorkflow
from workflows.restore import BackupWorkflow, DatabaseRestoreWorkflow

WORKFLOWS = [AppRollbackWorkflow, BackupWorkflow, DatabaseRestoreWorkflow]

__all__ = ["AppRollbackWorkflow", "BackupWorkflow", "DatabaseRestoreWorkflow", "WORKFLOWS"]
