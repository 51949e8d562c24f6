"""The tracking tables of golang-migrate and Prisma, pinned to the tools' own source. Neither tool
has an offline binary on our machines (dbmate and alembic are checked against the real tool in
tests/integration/test_migrations.py), so the DDL below is copied verbatim from their code:

- golang-migrate: database/postgres/postgres.go (github.com/golang-migrate/migrate, read at
  0165cfcf7b30cd34ff300c03d3853056c3cef42e): `ensureVersionTable` creates the table,
  `SetVersion` truncates it and inserts one row (none for NilVersion unless dirty), `Version`
  reads `SELECT version, dirty FROM … LIMIT 1`.
- Prisma: schema-engine/connectors/sql-schema-connector/src/flavour/postgres.rs
  (github.com/prisma/prisma-engines, read at 1f7ff79b4ab4272161e4f723f09b15f965d7f829),
  `create_migrations_table`.

A table created by the tool itself must be read and written by our code unchanged, and the table
we create when the tool has not run yet must be the tool's own."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from activities.migrations import GolangMigrate, Prisma
from tests.helpers import create_database
from tests.migration_sets import write_migrations

pytestmark = pytest.mark.postgres

GOLANG_MIGRATE_DDL = ('CREATE TABLE IF NOT EXISTS "public"."schema_migrations" '
                      "(version bigint not null primary key, dirty boolean not null)")
GOLANG_MIGRATE_VERSION = 'SELECT version, dirty FROM "public"."schema_migrations" LIMIT 1'

PRISMA_DDL = """
    CREATE TABLE _prisma_migrations (
        id                      VARCHAR(36) PRIMARY KEY NOT NULL,
        checksum                VARCHAR(64) NOT NULL,
        finished_at             TIMESTAMPTZ,
        migration_name          VARCHAR(255) NOT NULL,
        logs                    TEXT,
        rolled_back_at          TIMESTAMPTZ,
        started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
        applied_steps_count     INTEGER NOT NULL DEFAULT 0
    );
"""


def shape(dsn: str, table: str) -> list[tuple]:
    """Columns as PostgreSQL describes them, plus the primary key."""
    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
        key = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary", (table,)).fetchall()
    return [*cols, ("primary key", *[k[0] for k in key])]


def two_databases(postgres: str, tool_ddl: str) -> tuple[str, str]:
    """One database whose table the tool created, one where ours did."""
    _, theirs = create_database(postgres, "tool")
    _, ours = create_database(postgres, "ours")
    with psycopg.connect(theirs) as conn:
        conn.execute(tool_ddl)
    return theirs, ours


def test_golang_migrate_table_and_set_version_match_its_source(postgres, tmp_path: Path):
    tool = GolangMigrate(tmp_path)
    theirs, ours = two_databases(postgres, GOLANG_MIGRATE_DDL)
    with psycopg.connect(ours) as conn:
        tool.ensure_table(conn)
    assert shape(ours, "schema_migrations") == shape(theirs, "schema_migrations")

    write_migrations("golang-migrate", tmp_path)
    migrations = tool.migrations()
    with psycopg.connect(theirs) as conn:
        for migration in migrations:
            tool.record_up(conn, migration)
        tool.record_down(conn, migrations[2], previous="2")
        # SetVersion keeps exactly one row; `migrate version` reads it with LIMIT 1
        assert conn.execute("SELECT version, dirty FROM schema_migrations").fetchall() == [(2, False)]
        assert conn.execute(GOLANG_MIGRATE_VERSION).fetchone() == (2, False)
        assert tool.applied(conn) == (["1", "2"], False)
        tool.record_down(conn, migrations[0], previous=None)  # NilVersion, not dirty: no row at all
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0
        assert tool.applied(conn) == ([], False)


def test_prisma_table_matches_its_source_and_rolled_back_rows_stay(postgres, tmp_path: Path):
    tool = Prisma(tmp_path)
    theirs, ours = two_databases(postgres, PRISMA_DDL)
    with psycopg.connect(ours) as conn:
        tool.ensure_table(conn)
    assert shape(ours, "_prisma_migrations") == shape(theirs, "_prisma_migrations")

    versions = write_migrations("prisma", tmp_path)
    migrations = tool.migrations()
    with psycopg.connect(theirs) as conn:
        for migration in migrations:
            tool.record_up(conn, migration)
        tool.record_down(conn, migrations[2], previous=versions[1])
        rows = conn.execute("SELECT migration_name, finished_at IS NOT NULL, rolled_back_at IS NOT NULL, "
                            "length(checksum), applied_steps_count FROM _prisma_migrations "
                            "ORDER BY migration_name").fetchall()
        # `prisma migrate deploy` re-applies a migration whose only rows are rolled back
        assert rows == [(versions[0], True, False, 64, 1), (versions[1], True, False, 64, 1),
                        (versions[2], True, True, 64, 1)]
        assert tool.applied(conn) == (versions[:2], False)
