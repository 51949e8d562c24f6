"""Deterministic workflow code: rollback workflows, shared models, config models and policy."""

from workflows.app_rollback import AppRollbackWorkflow
from workflows.lock import ResourceLockWorkflow
from workflows.migration import MigrationRepairWorkflow, MigrationRollbackWorkflow, MigrationStatusWorkflow
from workflows.restore import BackupWorkflow, BaseBackupWorkflow, DatabaseRestoreWorkflow, RestoreCleanupWorkflow
from workflows.volume import VolumeBackupWorkflow, VolumeRestoreWorkflow

WORKFLOWS = [AppRollbackWorkflow, BackupWorkflow, BaseBackupWorkflow, DatabaseRestoreWorkflow, MigrationRollbackWorkflow,
             MigrationRepairWorkflow, MigrationStatusWorkflow, ResourceLockWorkflow, RestoreCleanupWorkflow,
             VolumeBackupWorkflow, VolumeRestoreWorkflow]

__all__ = ["AppRollbackWorkflow", "BackupWorkflow", "BaseBackupWorkflow", "DatabaseRestoreWorkflow",
           "MigrationRepairWorkflow", "MigrationRollbackWorkflow", "MigrationStatusWorkflow", "ResourceLockWorkflow", "RestoreCleanupWorkflow", "VolumeBackupWorkflow",
           "VolumeRestoreWorkflow", "WORKFLOWS"]
