"""Deterministic workflow code: rollback workflows, shared models, config models and policy."""

from workflows.app_rollback import AppRollbackWorkflow
from workflows.config_files import ConfigRevertWorkflow
from workflows.drill import DrillWorkflow
from workflows.env import EnvDiffWorkflow, EnvRollbackWorkflow
from workflows.keys import KeyRotationWorkflow
from workflows.incident import AssessWorkflow, IncidentWorkflow
from workflows.lock import ResourceLockWorkflow
from workflows.migration import MigrationRepairWorkflow, MigrationRollbackWorkflow, MigrationStatusWorkflow
from workflows.restore import BackupWorkflow, BaseBackupWorkflow, DatabaseRestoreWorkflow, RestoreCleanupWorkflow
from workflows.volume import VolumeBackupWorkflow, VolumeRestoreWorkflow

WORKFLOWS = [AppRollbackWorkflow, AssessWorkflow, BackupWorkflow, BaseBackupWorkflow, ConfigRevertWorkflow,
             DatabaseRestoreWorkflow, DrillWorkflow, EnvDiffWorkflow, EnvRollbackWorkflow, IncidentWorkflow,
             KeyRotationWorkflow, MigrationRollbackWorkflow, MigrationRepairWorkflow, MigrationStatusWorkflow,
             ResourceLockWorkflow, RestoreCleanupWorkflow, VolumeBackupWorkflow, VolumeRestoreWorkflow]

__all__ = ["AppRollbackWorkflow", "AssessWorkflow", "BackupWorkflow", "BaseBackupWorkflow", "ConfigRevertWorkflow",
           "DatabaseRestoreWorkflow", "DrillWorkflow", "EnvDiffWorkflow", "EnvRollbackWorkflow",
           "IncidentWorkflow", "KeyRotationWorkflow", "MigrationRepairWorkflow", "MigrationRollbackWorkflow",
           "MigrationStatusWorkflow",
           "ResourceLockWorkflow", "RestoreCleanupWorkflow", "VolumeBackupWorkflow", "VolumeRestoreWorkflow",
           "WORKFLOWS"]
