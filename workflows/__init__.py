"""Deterministic workflow code: rollback workflows, shared models, config models and policy."""

from workflows.app_rollback import AppRollbackWorkflow
from workflows.incident import AssessWorkflow, IncidentWorkflow
from workflows.migration import MigrationRepairWorkflow, MigrationRollbackWorkflow, MigrationStatusWorkflow
from workflows.restore import BackupWorkflow, BaseBackupWorkflow, DatabaseRestoreWorkflow, RestoreCleanupWorkflow
from workflows.volume import VolumeBackupWorkflow, VolumeRestoreWorkflow

WORKFLOWS = [AppRollbackWorkflow, IncidentWorkflow, AssessWorkflow, BackupWorkflow, BaseBackupWorkflow, DatabaseRestoreWorkflow, MigrationRollbackWorkflow,
             MigrationRepairWorkflow, MigrationStatusWorkflow, RestoreCleanupWorkflow, VolumeBackupWorkflow,
             VolumeRestoreWorkflow]

__all__ = ["AppRollbackWorkflow", "AssessWorkflow", "IncidentWorkflow", "BackupWorkflow", "BaseBackupWorkflow", "DatabaseRestoreWorkflow",
           "MigrationRepairWorkflow", "MigrationRollbackWorkflow", "MigrationStatusWorkflow", "RestoreCleanupWorkflow", "VolumeBackupWorkflow",
           "VolumeRestoreWorkflow", "WORKFLOWS"]
