"""PostgreSQL: read the live schema version from a migration tool's tracking table."""

from __future__ import annotations

import asyncio
import csv
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, open_private, resolve_secret
from workflows.policy import qualified
from workflows.models import (
    CountsRequest,
    DropRequest,
    KeptDatabase,
    RecentRowsRequest,
    ReimportRequest,
    RestoreIntoRequest,
    SchemaRequest,
    ServiceRef,
    SchemaVersion,
    SwapRequest,
    SwapResult,
)

LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD", "dbname": "PGDATABASE",
             "sslmode": "PGSSLMODE"}


def service_dsn(config: ConfigSource, service: str) -> tuple[str, str]:
    """The service's DSN (resolved in the worker only) and its database name."""
    database = config.service(service).database
    if database is None:
        raise fail(f"service {service!r} has no database configured")
    dsn = resolve_secret(database.dsn_env, service)
    return dsn, conninfo_to_dict(dsn).get("dbname") or "postgres"


def libpq_env(dsn: str, dbname: str | None = None) -> dict[str, str]:
    """Connection settings for pg_dump/pg_restore as environment, so no password shows in `ps`."""
    import os

    parts = conninfo_to_dict(dsn)
    if dbname:
        parts["dbname"] = dbname
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({LIBPQ_ENV[k]: str(v) for k, v in parts.items() if k in LIBPQ_ENV and v is not None})
    return env


def on_loopback_port(dsn: str, port: int) -> str:
    """The same database and credentials on another server: 127.0.0.1:<port>."""
    parts = conninfo_to_dict(dsn)
    parts.update(host="127.0.0.1", port=str(port))
    return make_conninfo(**parts)


def with_database(dsn: str, dbname: str) -> str:
    parts = conninfo_to_dict(dsn)
    parts["dbname"] = dbname
    return make_conninfo(**parts)


async def connect_to(dsn: str, autocommit: bool = True) -> psycopg.AsyncConnection:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        host = conninfo_to_dict(dsn).get("host", "?")
        raise ApplicationError(f"database on {host} unreachable: {type(exc).__name__}") from None


async def user_tables(conn: psycopg.AsyncConnection) -> list[tuple[str, str]]:
    """(schema, table) of every user table, sorted."""
    return await (await conn.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
        "ORDER BY 1, 2")).fetchall()


async def table_counts(conn: psycopg.AsyncConnection) -> dict[str, int]:
    """Exact row counts of every user table, by schema-qualified name."""
    counts = {}
    for schema, table in await user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[f"{schema}.{table}"] = (await (await conn.execute(query)).fetchone())[0]
    return counts

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


async def toc_items(pg_restore: str, archive: str) -> int:
    """How many entries the archive's table of contents has (the restore's progress total)."""
    process = await asyncio.create_subprocess_exec(pg_restore, "--list", archive, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.DEVNULL)
    listing = (await process.communicate())[0].decode(errors="replace")
    return sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";"))


class RestoreActivities:
    """Restore into a new database and swap it in by rename; the old database is kept."""

    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="postgres.restore_into")
    async def restore_into(self, request: RestoreIntoRequest) -> dict[str, int]:
        """pg_restore into a fresh database; a half-restored one from a crashed attempt is replaced."""
        from activities.backups import run_tool  # the same heartbeating runner (backups imports this module)

        dsn, _ = service_dsn(self._config, request.service)
        admin = with_database(dsn, "postgres")
        name = sql.Identifier(request.database)
        async with await connect_to(admin) as conn:
            exists = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                               (request.database,))).fetchone()
            if exists:  # our own database from an earlier attempt of this run: never live, safe to redo
                await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
            await conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(request.label)))
        pg_restore = shutil.which("pg_restore") or "/usr/lib/postgresql/15/bin/pg_restore"
        done, total = [0], await toc_items(pg_restore, request.archive)

        def count(line: str) -> None:  # --verbose names each TOC item as it starts
            if re.match(r"pg_restore: (creating|processing data for|executing|launching item) ", line):
                done[0] = min(done[0] + 1, total)

        code, stderr = await run_tool(
            [pg_restore, "-j", str(self._config.service(request.service).database.dump_jobs), "--exit-on-error", "--no-owner", "--no-password", "--verbose",
             "-d", request.database, request.archive], libpq_env(dsn, request.database),
            lambda: {"restoring": request.database, "toc_items_done": done[0], "toc_items": total}, count)
        if code != 0:
            raise ApplicationError(f"pg_restore into {request.database} failed: {stderr.strip()[-300:]}")
        async with await connect_to(with_database(dsn, request.database)) as conn:
            return await table_counts(conn)

    @activity.defn(name="postgres.check_database")
    async def check_database(self, request: CountsRequest) -> list[str]:
        """The configured critical tables exist and the `verify_sql` checks return true, in
        `request.database` (a restored one, before it is swapped in); the problems found."""
        settings = self._config.service(request.service).database
        dsn, live = service_dsn(self._config, request.service)
        if request.port:
            dsn = on_loopback_port(dsn, request.port)
        problems = []
        async with await connect_to(with_database(dsn, request.database or live)) as conn:
            present = {f"{schema}.{table}" for schema, table in await user_tables(conn)}  # names; no counting
            problems += [f"critical table {t} is missing" for t in settings.critical_tables if qualified(t) not in present]
            for check in settings.verify_sql:
                try:
                    row = await (await conn.execute(check)).fetchone()
                except psycopg.Error as exc:
                    problems.append(f"check {check!r} failed: {str(exc).strip()}")
                    continue
                if not row or not row[0]:
                    problems.append(f"check {check!r} returned {row[0] if row else 'no row'}")
        return problems

    @activity.defn(name="postgres.table_counts")
    async def counts(self, request: CountsRequest) -> dict[str, int]:
        dsn, live = service_dsn(self._config, request.service)
        if request.port:
            dsn = on_loopback_port(dsn, request.port)
        async with await connect_to(with_database(dsn, request.database or live)) as conn:
            return await table_counts(conn)

    @activity.defn(name="postgres.recent_rows")
    async def recent_rows(self, request: RecentRowsRequest) -> dict[str, int]:
        """Runbook 003's "minimizing data loss": export the live rows newer than the backup (by the
        configured timestamp columns) to CSV in the incident directory, before the swap drops them."""
        service = self._config.service(request.service)
        columns = service.database.recent_data_columns
        # the kill switch table is ours: its rows change during every run and are no user data
        bookkeeping = {qualified(s.table) for s in service.kill_switches if s.store == "postgres"}
        dsn, _ = service_dsn(self._config, request.service)
        out = Path(request.artifact_dir) / "recent-rows"
        exported: dict[str, int] = {}
        async with await connect_to(dsn) as conn:
            candidates = await (await conn.execute(
                "SELECT table_schema, table_name, column_name FROM information_schema.columns "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND column_name = ANY(%s) "
                "AND data_type LIKE 'timestamp%%' ORDER BY 1, 2, 3", (columns,))).fetchall()
            by_table: dict[tuple[str, str], list[str]] = {}
            for schema, table, column in candidates:
                by_table.setdefault((schema, table), []).append(column)
            for (schema, table), found in by_table.items():
                if f"{schema}.{table}" in bookkeeping:
                    continue
                condition = sql.SQL(" OR ").join(
                    sql.SQL("{} > {}").format(sql.Identifier(c), sql.Literal(request.since)) for c in found)
                query = sql.SQL("SELECT * FROM {}.{} WHERE ").format(sql.Identifier(schema), sql.Identifier(table))
                query += condition
                rows = (await (await conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS recent").format(query)))
                        .fetchone())[0]
                if not rows:
                    continue
                out.mkdir(parents=True, exist_ok=True)
                target = out / f"{schema}.{table}.csv"
                with open_private(target, "wb") as fh:
                    async with conn.cursor().copy(
                            sql.SQL("COPY ({}) TO STDOUT WITH CSV HEADER").format(query)) as copy:
                        async for block in copy:
                            fh.write(block)
                exported[f"{schema}.{table}"] = rows
        return exported

    def _kept_pattern(self, service: str) -> tuple[str, re.Pattern]:
        dsn, live = service_dsn(self._config, service)
        return dsn, re.compile(rf"{re.escape(live)}_(?:before_restore|restore)_(\d{{14}})")

    @activity.defn(name="postgres.kept_databases")
    async def kept_databases(self, request: ServiceRef) -> list[KeptDatabase]:
        """Databases our restores left: the replaced `<db>_before_restore_<ts>` and unswapped
        `<db>_restore_<ts>`, recognised by exact name, oldest first."""
        dsn, pattern = self._kept_pattern(request.service)
        async with await connect_to(with_database(dsn, "postgres")) as conn:
            rows = await (await conn.execute(
                "SELECT d.datname, pg_database_size(d.oid), (SELECT count(*) FROM pg_stat_activity a "
                "WHERE a.datname = d.datname) FROM pg_database d ORDER BY 1")).fetchall()
        kept = []
        for name, size, connections in rows:
            if match := pattern.fullmatch(name):
                since = datetime.strptime(match[1], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
                kept.append(KeptDatabase(name=name, kept_since=since, size_bytes=size, connections=connections))
        return sorted(kept, key=lambda k: k.kept_since)

    @activity.defn(name="postgres.drop_kept")
    async def drop_kept(self, request: DropRequest) -> list[str]:
        """Drop approved kept databases; only names a restore of this service made, never one in use."""
        dsn, pattern = self._kept_pattern(request.service)
        dropped = []
        async with await connect_to(with_database(dsn, "postgres")) as conn:
            for name in request.databases:
                if not pattern.fullmatch(name):
                    raise fail(f"{name} is not a database a restore of {request.service} kept; not dropped")
                try:
                    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                except psycopg.errors.ObjectInUse:
                    raise fail(f"{name} is in use (someone is connected); dropped so far: {dropped or 'none'}; "
                               "disconnect and run the cleanup again") from None
                dropped.append(name)
        return dropped

    @activity.defn(name="postgres.reimport_rows")
    async def reimport_rows(self, request: ReimportRequest) -> dict[str, dict[str, int | str]]:
        """Put the exported newer rows back into the restored database, table by table, each in one
        transaction: rows whose key already exists are skipped (rejected), and a table whose columns
        no longer fit is left alone with the reason. Sequences are moved past the imported keys."""
        dsn, _ = service_dsn(self._config, request.service)
        folder = Path(request.artifact_dir) / "recent-rows"
        report: dict[str, dict[str, int | str]] = {}
        async with await connect_to(dsn) as conn:
            for table, rows in request.tables.items():
                schema, name = table.split(".", 1)
                target = sql.Identifier(schema, name)
                csv_file = folder / f"{table}.csv"
                with csv_file.open(newline="") as fh:
                    header = next(csv.reader(fh), [])
                existing = {r[0] for r in await (await conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (schema, name))).fetchall()}
                missing = [c for c in header if c not in existing]
                if not existing or missing:
                    why = "table is gone" if not existing else f"columns {', '.join(missing)} are gone"
                    report[table] = {"imported": 0, "rejected": rows, "reason": why}
                    continue
                columns = sql.SQL(", ").join(map(sql.Identifier, header))
                try:
                    async with conn.transaction():
                        await conn.execute(sql.SQL("CREATE TEMP TABLE reimport ON COMMIT DROP AS "
                                                   "SELECT {} FROM {} WITH NO DATA").format(columns, target))
                        async with conn.cursor().copy(sql.SQL("COPY reimport ({}) FROM STDIN WITH CSV HEADER")
                                                      .format(columns)) as copy:
                            await copy.write(csv_file.read_bytes())
                        inserted = await conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM reimport "
                                                              "ON CONFLICT DO NOTHING").format(target, columns, columns))
                        imported = inserted.rowcount
                        for column in header:
                            sequence = (await (await conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (
                                sql.Identifier(schema, name).as_string(conn), column))).fetchone())[0]
                            if sequence:
                                await conn.execute(sql.SQL("SELECT setval(%s::regclass, GREATEST((SELECT max({}) "
                                                           "FROM {})::bigint, 1))").format(sql.Identifier(column),
                                                                                           target), (sequence,))
                except psycopg.Error as exc:
                    report[table] = {"imported": 0, "rejected": rows, "reason": str(exc).strip().splitlines()[0]}
                    continue
                report[table] = {"imported": imported, "rejected": rows - imported,
                                 "reason": "key already present" if imported < rows else ""}
        return report

    @activity.defn(name="postgres.swap")
    async def swap(self, request: SwapRequest) -> SwapResult:
        """From the `postgres` database: stop connections, terminate sessions, rename both in one
        transaction, allow connections again. On failure the names are put back as they were."""
        dsn, live = service_dsn(self._config, request.service)
        admin = with_database(dsn, "postgres")
        live_id, new_id, old_id = (sql.Identifier(n) for n in (live, request.new_database, request.keep_old_as))
        async with await connect_to(admin) as conn:
            names = {r[0] for r in await (await conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                ([live, request.new_database, request.keep_old_as],))).fetchall()}
            if request.keep_old_as in names and request.new_database not in names:
                # an earlier attempt swapped, and may have died before it let connections in again
                for database in (live_id, old_id):
                    await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(database))
                return SwapResult(live=live, kept_old_as=request.keep_old_as, downtime_seconds=0.0,
                                  terminated_sessions=0)
            if request.new_database not in names:
                raise fail(f"restored database {request.new_database} is missing; nothing was swapped")
            started = time.monotonic()
            await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(live_id))
            try:
                terminated = 0
                for _ in range(50):  # sessions can race in before ALLOW_CONNECTIONS took effect
                    rows = await (await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (live,))).fetchall()
                    terminated += len(rows)
                    try:
                        async with conn.transaction():
                            await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(live_id, old_id))
                            await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(new_id, live_id))
                        break
                    except psycopg.errors.ObjectInUse:
                        await asyncio.sleep(0.1)
                else:
                    raise ApplicationError(f"sessions kept reconnecting to {live}; nothing was swapped")
            except BaseException as exc:
                await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live_id))
                if isinstance(exc, psycopg.Error):
                    raise fail(f"swap of {live} failed ({type(exc).__name__}: {str(exc).strip()}); {live} is "
                               f"unchanged and accepts connections again") from None
                raise
            await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live_id))
            downtime = time.monotonic() - started
            await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(old_id))
        return SwapResult(live=live, kept_old_as=request.keep_old_as, downtime_seconds=downtime,
                          terminated_sessions=terminated)
