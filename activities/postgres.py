"""PostgreSQL: read the live schema version from a migration tool's tracking table."""

from __future__ import annotations

import psycopg
from temporalio import activity

from activities.common import ConfigSource, resolve_secret
from workflows.models import SchemaRequest, SchemaVersion

# The query each migration tool's tracking table answers with "the version applied last".
VERSION_QUERIES = {
    "golang-migrate": "SELECT version::text FROM schema_migrations LIMIT 1",
    "dbmate": "SELECT max(version)::text FROM schema_migrations",
    "alembic": "SELECT version_num FROM alembic_version LIMIT 1",
    "prisma": (
        "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL "
        "AND rolled_back_at IS NULL ORDER BY migration_name DESC LIMIT 1"
    ),
    "plain": "SELECT max(version)::text FROM rollback_schema_migrations",
}


class PostgresActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="postgres.schema_version")
    async def schema_version(self, request: SchemaRequest) -> SchemaVersion:
        """The live version, or an explanation of why it could not be read (never the DSN)."""
        database = self._config.service(request.service).database
        if database is None or database.migration_tool is None:
            return SchemaVersion(error="no migration tool configured")
        dsn = resolve_secret(database.dsn_env, request.service)
        try:
            async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=10) as conn:
                row = await (await conn.execute(VERSION_QUERIES[database.migration_tool])).fetchone()
        except psycopg.errors.UndefinedTable:
            return SchemaVersion(tool=database.migration_tool, error="tracking table not found")
        except psycopg.OperationalError as exc:
            return SchemaVersion(tool=database.migration_tool, error=f"database unreachable: {type(exc).__name__}")
        return SchemaVersion(version=row[0] if row else None, tool=database.migration_tool)
