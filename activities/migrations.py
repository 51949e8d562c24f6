"""Migration tools, read directly: each tool's files and tracking table, so no tool binary is
needed (Alembic, which is Python, through its own API). Down migrations run one per transaction
under a PostgreSQL advisory lock, and the tracking table moves in the same transaction, so a
failure leaves the database at the last good version with a truthful tracking table.

These activities are synchronous (psycopg and Alembic are blocking); the worker runs them in
its thread pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import sqlparse
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from temporalio import activity

from activities.common import ConfigSource, fail, open_private, resolve_secret
from activities.docker import DeployLedger
from workflows.config import DatabaseConfig
from workflows.models import (
    DamageRequest,
    DataDamage,
    DataLoss,
    DataLossExportRequest,
    DownStepRequest,
    DownStepResult,
    ForceVersionRequest,
    MarkStableRequest,
    MigrationInfo,
    MigrationPlan,
    MigrationPlanRequest,
    MigrationStatus,
    MigrationStep,
    MigrationVerifyRequest,
    ServiceRef,
)
from workflows.policy import qualified

LOCK_WAIT_SECONDS = 10


@dataclass
class Migration:
    version: str  # as the tracking table stores it
    name: str
    down_file: Path
    up_sql: str | None = None
    down_sql: str | None = None


def _numbered_migrations(directory: Path) -> list[Migration]:
    """`{version}_{title}.up.sql` / `.down.sql` files, oldest first (golang-migrate and plain)."""
    found: dict[int, dict[str, Path]] = {}
    for path in directory.glob("*.sql"):
        match = re.fullmatch(r"(\d+)_(.+)\.(up|down)\.sql", path.name)
        if match:
            found.setdefault(int(match[1]), {})[match[3]] = path
    migrations = []
    for version, files in sorted(found.items()):
        any_file = files.get("up") or files["down"]
        title = re.fullmatch(r"\d+_(.+)\.(up|down)\.sql", any_file.name)[1]
        migrations.append(Migration(
            version=str(version), name=title, down_file=any_file.with_name(any_file.name[: -len(".up.sql")] + ".down.sql")
            if "down" not in files else files["down"],
            up_sql=_read(files["up"]) if "up" in files else None,
            down_sql=_read(files["down"]) if "down" in files else None))
    return migrations


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


class SqlTool:
    """A tool whose migrations are SQL files and whose state is one tracking table."""

    name = ""
    table = ""

    def __init__(self, directory: Path):
        if not directory.is_dir():
            raise fail(f"migrations directory {directory} does not exist", kind="MigrationInvalid")
        self.directory = directory

    def migrations(self) -> list[Migration]:
        raise NotImplementedError

    def ensure_table(self, conn: psycopg.Connection) -> None:
        raise NotImplementedError

    def applied(self, conn: psycopg.Connection) -> tuple[list[str], bool]:
        """Applied versions (oldest first) and whether the tool marked the state dirty."""
        raise NotImplementedError

    def record_up(self, conn: psycopg.Connection, migration: Migration) -> None:
        raise NotImplementedError

    def record_down(self, conn: psycopg.Connection, migration: Migration, previous: str | None) -> None:
        raise NotImplementedError

    def missing_down(self, migration: Migration) -> str:
        return f"migration {migration.version} ({migration.name}) has no down script: {migration.down_file} is missing"

    def tracking_exists(self, conn: psycopg.Connection) -> bool:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()[0]


class GolangMigrate(SqlTool):
    """golang-migrate: one row `schema_migrations(version bigint, dirty boolean)`."""

    name, table = "golang-migrate", "schema_migrations"

    def migrations(self) -> list[Migration]:
        return _numbered_migrations(self.directory)

    def ensure_table(self, conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, "
                     "dirty boolean NOT NULL)")

    def applied(self, conn):
        if not self.tracking_exists(conn):
            return [], False
        row = conn.execute("SELECT version, dirty FROM schema_migrations LIMIT 1").fetchone()
        if row is None:
            return [], False
        return [m.version for m in self.migrations() if int(m.version) <= row[0]], row[1]

    def set_version(self, conn, version: str | None, dirty: bool = False) -> None:
        # golang-migrate's SetVersion: truncate, then one row (none for "no version", unless dirty)
        conn.execute("TRUNCATE schema_migrations")
        if version is not None:
            conn.execute("INSERT INTO schema_migrations (version, dirty) VALUES (%s, %s)", (int(version), dirty))

    def record_up(self, conn, migration):
        self.set_version(conn, migration.version)

    def record_down(self, conn, migration, previous):
        self.set_version(conn, previous)

    def current_row(self, conn) -> tuple[str | None, bool]:
        row = conn.execute("SELECT version, dirty FROM schema_migrations LIMIT 1").fetchone()
        return (str(row[0]), row[1]) if row else (None, False)


class Plain(SqlTool):
    """Ordered `{version}_{title}.up.sql` / `.down.sql` files with our own tracking table."""

    name, table = "plain", "rollback_schema_migrations"

    def migrations(self) -> list[Migration]:
        return _numbered_migrations(self.directory)

    def ensure_table(self, conn):
        conn.execute("CREATE TABLE IF NOT EXISTS rollback_schema_migrations (version bigint PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")

    def applied(self, conn):
        if not self.tracking_exists(conn):
            return [], False
        return [str(r[0]) for r in conn.execute("SELECT version FROM rollback_schema_migrations ORDER BY 1")], False

    def record_up(self, conn, migration):
        conn.execute("INSERT INTO rollback_schema_migrations (version, name) VALUES (%s, %s)",
                     (int(migration.version), migration.name))

    def record_down(self, conn, migration, previous):
        conn.execute("DELETE FROM rollback_schema_migrations WHERE version = %s", (int(migration.version),))


class Dbmate(SqlTool):
    """dbmate: `-- migrate:up` / `-- migrate:down` sections; one `schema_migrations` row per migration."""

    name, table = "dbmate", "schema_migrations"

    def migrations(self) -> list[Migration]:
        found = []
        for path in sorted(self.directory.glob("*.sql")):
            match = re.fullmatch(r"(\d+)_(.+)\.sql", path.name)
            if not match:
                continue
            sections = re.split(r"^--\s*migrate:(up|down)\b[^\n]*$", path.read_text(), flags=re.M)
            parts = dict(zip(sections[1::2], sections[2::2]))
            down = (parts.get("down") or "").strip()
            found.append(Migration(version=match[1], name=match[2], down_file=path,
                                   up_sql=parts.get("up"), down_sql=down or None))
        return found

    def missing_down(self, migration):
        return (f"migration {migration.version} ({migration.name}) has an empty `-- migrate:down` section in "
                f"{migration.down_file}")

    def ensure_table(self, conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version varchar(128) PRIMARY KEY)")

    def applied(self, conn):
        if not self.tracking_exists(conn):
            return [], False
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")], False

    def record_up(self, conn, migration):
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))

    def record_down(self, conn, migration, previous):
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (migration.version,))


class Prisma(SqlTool):
    """Prisma: `<name>/migration.sql` plus the documented `down.sql` convention; `_prisma_migrations`."""

    name, table = "prisma", "_prisma_migrations"

    def migrations(self) -> list[Migration]:
        return [Migration(version=d.name, name=d.name, down_file=d / "down.sql",
                          up_sql=_read(d / "migration.sql"), down_sql=_read(d / "down.sql"))
                for d in sorted(self.directory.iterdir()) if (d / "migration.sql").exists()]

    def missing_down(self, migration):
        return (f"Prisma migration {migration.name} has no down.sql beside its migration.sql. Prisma does not "
                f"write down migrations: generate one with `prisma migrate diff --from-schema-datamodel <new> "
                f"--to-schema-datamodel <old> --script > {migration.down_file}`, review it, and retry")

    def ensure_table(self, conn):
        conn.execute("""CREATE TABLE IF NOT EXISTS _prisma_migrations (
            id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz,
            migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz,
            started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count integer NOT NULL DEFAULT 0)""")

    def applied(self, conn):
        if not self.tracking_exists(conn):
            return [], False
        rows = conn.execute("SELECT migration_name, finished_at IS NOT NULL FROM _prisma_migrations "
                            "WHERE rolled_back_at IS NULL ORDER BY migration_name").fetchall()
        # a started but unfinished migration is what `prisma migrate deploy` refuses as P3009
        return [r[0] for r in rows if r[1]], any(not r[1] for r in rows)

    def record_up(self, conn, migration):
        checksum = hashlib.sha256((migration.up_sql or "").encode()).hexdigest()
        conn.execute("INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, started_at, "
                     "applied_steps_count) VALUES (%s, %s, now(), %s, now(), 1)",
                     (str(uuid.uuid4()), checksum, migration.version))

    def record_down(self, conn, migration, previous):
        # what `prisma migrate resolve --rolled-back` writes: the row stays, marked rolled back
        conn.execute("UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = %s "
                     "AND rolled_back_at IS NULL", (migration.version,))


class Alembic:
    """Alembic through its own API: the script directory for revisions, `alembic_version` for state,
    `command.downgrade` to run a step (on our connection, so it runs in our transaction)."""

    name, table = "alembic", "alembic_version"

    def __init__(self, directory: Path, ini: Path | None = None):
        from alembic.config import Config

        self.ini = ini or directory / "alembic.ini"
        if not self.ini.exists():
            raise fail(f"alembic config {self.ini} does not exist", kind="MigrationInvalid")
        self.config = Config(str(self.ini))

    def script(self):
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config)

    def migrations(self) -> list[Migration]:
        script = self.script()
        if len(script.get_heads()) > 1:
            raise fail(f"alembic has several heads ({', '.join(script.get_heads())}); merge them first",
                       kind="MigrationInvalid")
        revisions = list(reversed(list(script.walk_revisions())))
        return [Migration(version=r.revision, name=(r.doc or "").strip(), down_file=Path(r.path)) for r in revisions]

    def applied(self, conn: psycopg.Connection) -> tuple[list[str], bool]:
        if not conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]:
            return [], False
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        if row is None:
            return [], False
        versions = [m.version for m in self.migrations()]
        if row[0] not in versions:
            raise fail(f"alembic_version says {row[0]}, which is not a revision in {self.ini.parent}",
                       kind="MigrationInvalid")
        return versions[: versions.index(row[0]) + 1], False

    def up_sql(self, revision: str, previous: str | None) -> str:
        """What `alembic upgrade --sql previous:revision` prints: the SQL of a revision's upgrade()
        (Python), rendered offline, so the data-damage check can read it like a .sql file."""
        import io

        from alembic import command
        from alembic.config import Config

        buffer = io.StringIO()
        offline = Config(str(self.ini), output_buffer=buffer)
        offline.set_main_option("sqlalchemy.url", "postgresql://")
        command.upgrade(offline, f"{previous}:{revision}" if previous else revision, sql=True)
        return buffer.getvalue()

    def down_sql(self, step: MigrationStep) -> str:
        """The step's SQL, as `alembic downgrade --sql` prints it (offline mode, no connection)."""
        import io

        from alembic import command
        from alembic.config import Config

        buffer = io.StringIO()
        offline = Config(str(self.ini), output_buffer=buffer)
        offline.set_main_option("sqlalchemy.url", "postgresql://")  # offline SQL needs only the dialect
        command.downgrade(offline, f"{step.version}:{step.previous or 'base'}", sql=True)
        return buffer.getvalue()

    def run_down(self, dsn: str, step: MigrationStep, timeouts: DatabaseConfig) -> None:
        """One `alembic downgrade`, on a connection env.py takes from `config.attributes`."""
        from alembic import command
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                for statement in _timeout_statements(timeouts):
                    connection.exec_driver_sql(statement)
                self.config.attributes["connection"] = connection
                try:
                    command.downgrade(self.config, step.previous or "base")
                    connection.commit()
                except Exception as exc:
                    connection.rollback()
                    raise _down_failed(step, exc) from None
                finally:
                    self.config.attributes.pop("connection", None)
        finally:
            engine.dispose()


TOOLS = {"golang-migrate": GolangMigrate, "dbmate": Dbmate, "prisma": Prisma, "plain": Plain}


def _timeout_statements(database: DatabaseConfig) -> list[str]:
    ms = lambda delta: int(delta.total_seconds() * 1000)  # noqa: E731
    return [f"SET LOCAL lock_timeout = {ms(database.lock_timeout)}",
            f"SET LOCAL statement_timeout = {ms(database.statement_timeout)}"]


def _down_failed(step: MigrationStep, exc: Exception):
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return fail(f"down migration {step.version} ({step.name}) failed and was rolled back: {detail}; "
                f"the database is still at {step.version}", kind="MigrationFailed")


def _without_transaction_control(script: str) -> str:
    """Drop BEGIN/COMMIT lines: the step runs in our transaction with the tracking-table update."""
    return re.sub(r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END)\s*;\s*$", "", script, flags=re.M | re.I)


def advisory_lock_id(database: str, table: str) -> int:
    """golang-migrate's lock id (crc32 of schema, table and database, times its salt), so our
    rollback and the team's own `migrate` exclude each other."""
    checksum = zlib.crc32("\x00".join(["public", table, database]).encode())
    return (checksum * 1486364155) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The data-loss guard: what a down script would remove

_NAME = r'((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)'
_NOT_COLUMNS = {"constraint", "default", "not", "identity", "expression"}


def destructive_statements(script: str) -> list[dict]:
    """DROP TABLE, DROP COLUMN, TRUNCATE and DELETE in a script, comments and strings respected."""
    found = []
    flags = re.I | re.S
    for statement in sqlparse.split(sqlparse.format(script, strip_comments=True)):
        text = statement.strip().rstrip(";").strip()
        if m := re.match(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(.+?)(?:\s+CASCADE|\s+RESTRICT)?$", text, flags):
            found += [{"statement": "drop_table", "table": t.strip()} for t in m[1].split(",")]
        elif m := re.match(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_NAME}\s+(.*)$", text, flags):
            for action in m[2].split(","):
                d = re.match(rf"\s*DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?{_NAME}", action, flags)
                if d and d[1].lower() not in _NOT_COLUMNS:
                    found.append({"statement": "drop_column", "table": m[1], "column": d[1]})
        elif m := re.match(r"TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(.+?)(?:\s+(?:RESTART|CONTINUE)\s+IDENTITY)?"
                           r"(?:\s+CASCADE|\s+RESTRICT)?$", text, flags):
            found += [{"statement": "truncate", "table": t.strip()} for t in m[1].split(",")]
        elif m := re.match(rf"DELETE\s+FROM\s+(?:ONLY\s+)?{_NAME}(?:\s+(?:AS\s+)?(?!WHERE\b)(\w+))?"
                           r"(?:\s+WHERE\s+(.*))?$", text, flags):
            found.append({"statement": "delete", "table": m[1], "alias": m[2], "where": m[3]})
    return found


def data_destroying_statements(script: str) -> list[dict]:
    """In an *up* script: what a down script cannot undo. UPDATE or DELETE without WHERE, DROP
    COLUMN, TRUNCATE, and a column type change (which may truncate or round values)."""
    found = [item for item in destructive_statements(script)
             if item["statement"] in ("drop_column", "truncate") or (item["statement"] == "delete" and not item["where"])]
    for item in found:
        if item["statement"] == "delete":
            item["statement"] = "delete_all"
    flags = re.I | re.S
    for statement in sqlparse.split(sqlparse.format(script, strip_comments=True)):
        text = statement.strip().rstrip(";").strip()
        if m := re.match(rf"UPDATE\s+(?:ONLY\s+)?{_NAME}(?:\s+(?:AS\s+)?(?!SET\b)\w+)?\s+SET\s+(.*)$", text, flags):
            if not re.search(r"\bWHERE\b", m[2], re.I):
                columns = re.findall(r"(?:^|,)\s*(\"[^\"]+\"|[\w$]+)\s*=", m[2])
                found += [{"statement": "update_all", "table": m[1], "column": c} for c in columns]
        elif m := re.match(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_NAME}\s+(.*)$", text, flags):
            for action in m[2].split(","):
                if t := re.match(rf"\s*ALTER\s+(?:COLUMN\s+)?{_NAME}\s+(?:SET\s+DATA\s+)?TYPE\b", action, flags):
                    found.append({"statement": "type_change", "table": m[1], "column": t[1]})
    return found


def _doomed_rows_query(item: dict) -> sql.Composable:
    """SELECT of the rows (or, for DROP COLUMN, the rows holding a value) the statement removes.
    The table, column and WHERE text come from the migration file, which is about to run anyway."""
    query = sql.SQL("SELECT * FROM {}").format(sql.SQL(item["table"]))
    if item.get("alias"):
        query += sql.SQL(" AS {}").format(sql.SQL(item["alias"]))
    if item["statement"] == "drop_column":
        query += sql.SQL(" WHERE {} IS NOT NULL").format(sql.SQL(item["column"]))
    elif item["statement"] == "delete" and item.get("where"):
        query += sql.SQL(" WHERE ") + sql.SQL(item["where"])
    return query


# ---------------------------------------------------------------------------------------------


class MigrationActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    # -- helpers --------------------------------------------------------------------------------
    def _database(self, service: str) -> DatabaseConfig:
        database = self._config.service(service).database
        if database is None or database.migration_tool is None or database.migrations_dir is None:
            raise fail(f"service {service!r} has no database.migration_tool and migrations_dir configured",
                       kind="ConfigError")
        return database

    def _tool(self, service: str):
        database = self._database(service)
        directory = Path(database.migrations_dir)
        if database.migration_tool == "alembic":
            return Alembic(directory)
        return TOOLS[database.migration_tool](directory)

    def _connect(self, service: str, autocommit: bool = True) -> psycopg.Connection:
        dsn = resolve_secret(self._database(service).dsn_env, service)
        try:
            return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)
        except psycopg.OperationalError as exc:
            host = conninfo_to_dict(dsn).get("host", "?")
            raise fail(f"database of {service!r} on {host} is unreachable ({type(exc).__name__}); "
                       "nothing was changed", kind="DatabaseUnreachable") from None

    @contextlib.contextmanager
    def _migration_lock(self, service: str, tool):
        """The advisory lock every migrator of this database takes; refuse after a short wait."""
        with self._connect(service) as conn:
            database = conn.info.dbname
            key = advisory_lock_id(database, tool.table)
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise fail(f"another migration holds the migration lock of {database} (advisory lock {key}); "
                               "nothing was changed: wait for it to finish and retry", kind="MigrationLocked")
                activity.heartbeat({"waiting_for": "migration lock"})
                time.sleep(0.5)
            try:
                yield conn
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _status(self, service: str, conn: psycopg.Connection, tool) -> tuple[MigrationStatus, list[Migration]]:
        migrations = tool.migrations()
        applied, dirty = tool.applied(conn)
        if isinstance(tool, GolangMigrate) and tool.tracking_exists(conn):
            current, dirty = tool.current_row(conn)
        else:
            current = applied[-1] if applied else None
        stable = self._config.state.get("migrations-stable", service, {}).get("version")
        status = MigrationStatus(
            service=service, tool=tool.name, current=current, dirty=dirty, last_stable=stable,
            migrations=[MigrationInfo(version=m.version, name=m.name, applied=m.version in applied,
                                      has_down=m.down_sql is not None or isinstance(tool, Alembic))
                        for m in migrations])
        return status, migrations

    def _down_sql(self, service: str, tool, migration: Migration, step: MigrationStep) -> str:
        return tool.down_sql(step) if isinstance(tool, Alembic) else migration.down_sql or ""

    # -- activities -----------------------------------------------------------------------------
    @activity.defn(name="migrations.status")
    def status(self, request: ServiceRef) -> MigrationStatus:
        with self._connect(request.service) as conn:
            return self._status(request.service, conn, self._tool(request.service))[0]

    @activity.defn(name="migrations.plan")
    def plan(self, request: MigrationPlanRequest) -> MigrationPlan:
        """Resolve the target and check everything a rollback needs before anything changes:
        a clean tracking table, a known target below the current version, every down script."""
        service = request.service
        tool = self._tool(service)
        with self._connect(service) as conn:
            status, migrations = self._status(service, conn, tool)
            if status.dirty:
                raise fail(f"{tool.table} says version {status.current} is dirty (a migration failed half-way); "
                           f"inspect the schema, then `rollback migrations repair {service} --version V` with the "
                           "version it really is at", kind="MigrationDirty")
            applied_versions = {i.version for i in status.migrations if i.applied}
            applied = [m for m in migrations if m.version in applied_versions]
            versions = [m.version for m in applied]
            target = self._resolve_target(request.target, status, versions, [m.version for m in migrations])
            if target == status.current:
                return MigrationPlan(service=service, tool=tool.name, current=status.current, target=target,
                                     tracking_table=tool.table)
            start = versions.index(target) + 1 if target is not None else 0
            steps = []
            for index in range(len(applied) - 1, start - 1, -1):
                migration = applied[index]
                if migration.down_sql is None and not isinstance(tool, Alembic):
                    raise fail(tool.missing_down(migration) + "; nothing was changed", kind="MigrationInvalid")
                steps.append(MigrationStep(version=migration.version, name=migration.name,
                                           previous=versions[index - 1] if index > 0 else None,
                                           down_file=str(migration.down_file)))
            by_version = {m.version: m for m in applied}
            data_loss = []
            for step in steps:
                for item in destructive_statements(self._down_sql(service, tool, by_version[step.version], step)):
                    data_loss.append(DataLoss(version=step.version, statement=item["statement"], table=item["table"],
                                              column=item.get("column"), rows=self._count(conn, item)))
            critical = {qualified(t) for t in self._database(service).critical_tables}
            for loss in data_loss:
                if loss.statement == "drop_table" and qualified(loss.table) in critical:
                    raise fail(f"rolling back to {target} would drop critical table {loss.table} (down migration "
                               f"{loss.version}); refused, nothing was changed", kind="MigrationInvalid")
        return MigrationPlan(service=service, tool=tool.name, current=status.current, target=target,
                             tracking_table=tool.table, steps=steps, data_loss=data_loss)

    @staticmethod
    def _resolve_target(wanted: str, status: MigrationStatus, applied: list[str], known: list[str]) -> str | None:
        wanted = wanted.strip()
        if wanted == "last-stable":
            if not status.last_stable:
                raise fail(f"no stable version recorded for {status.service} yet (one is recorded after a "
                           "verified migration rollback); give a version instead", kind="MigrationInvalid")
            wanted = status.last_stable
        if re.fullmatch(r"-\d+", wanted):
            steps = int(wanted[1:])
            if steps == 0 or steps > len(applied):
                raise fail(f"cannot go back {steps} step(s): {len(applied)} migration(s) are applied",
                           kind="MigrationInvalid")
            return applied[-steps - 1] if steps < len(applied) else None
        if wanted in ("0", "base"):
            return None
        if wanted not in known:
            # golang-migrate and plain versions are numbers: 0003 and 3 are the same version
            numeric = [v for v in known if wanted.isdigit() and v.isdigit() and int(v) == int(wanted)]
            if not numeric:
                raise fail(f"unknown version {wanted!r}: the migrations are {', '.join(known) or 'none'}",
                           kind="MigrationInvalid")
            wanted = numeric[0]
        if wanted not in applied:
            raise fail(f"target {wanted} is above the current version {status.current or 'none'}: a rollback only "
                       "goes down", kind="MigrationInvalid")
        return wanted

    @staticmethod
    def _count(conn: psycopg.Connection, item: dict) -> int:
        try:
            query = sql.SQL("SELECT count(*) FROM ({}) AS doomed").format(_doomed_rows_query(item))
            return conn.execute(query).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0  # DROP TABLE IF EXISTS of a table that is not there
        except psycopg.Error as exc:
            raise fail(f"cannot count the rows {item['statement']} on {item['table']} would remove: "
                       f"{str(exc).strip()}", kind="MigrationInvalid") from None

    @activity.defn(name="migrations.damage_since")
    def damage_since(self, request: DamageRequest) -> list[DataDamage]:
        """The applied up migrations newer than `since_version` whose SQL destroys data, with when
        each was applied: from the tracking table where the tool records it (plain, Prisma), else
        when the version now serving was deployed (the Docker deploy ledger)."""
        service = request.service
        tool = self._tool(service)
        with self._connect(service) as conn:
            status, migrations = self._status(service, conn, tool)
            applied = [m for m in migrations if any(i.version == m.version and i.applied for i in status.migrations)]
            versions = [m.version for m in applied]
            newer = applied[versions.index(request.since_version) + 1:] if request.since_version in versions else (
                applied if request.since_version is None else [])
            times = self._applied_times(conn, tool)
        ledger = DeployLedger(self._config.state, service).entries()
        deployed = datetime.fromisoformat(ledger[-1]["seen_at"]) if ledger else None
        found = []
        for migration in newer:
            up = migration.up_sql or ""
            if isinstance(tool, Alembic):  # Python migrations: the SQL their upgrade() emits
                index = versions.index(migration.version)
                up = tool.up_sql(migration.version, versions[index - 1] if index else None)
            for item in data_destroying_statements(up):
                when, source = times.get(migration.version), "tracking table"
                if when is None:
                    when, source = deployed, "deploy ledger" if deployed else ""
                found.append(DataDamage(version=migration.version, name=migration.name, statement=item["statement"],
                                        table=item["table"], column=item.get("column"), applied_at=when,
                                        applied_at_source=source))
        return found

    @staticmethod
    def _applied_times(conn: psycopg.Connection, tool) -> dict[str, datetime]:
        query = {"plain": "SELECT version::text, applied_at FROM rollback_schema_migrations",
                 "prisma": "SELECT migration_name, finished_at FROM _prisma_migrations WHERE finished_at IS NOT NULL"}
        if tool.name not in query or not tool.tracking_exists(conn):
            return {}
        return {str(v): t for v, t in conn.execute(query[tool.name])}

    @activity.defn(name="migrations.export_data_loss")
    def export_data_loss(self, request: DataLossExportRequest) -> list[DataLoss]:
        """CSV of every row the down scripts remove, in the incident directory, before they run."""
        out = Path(request.artifact_dir) / "data-loss"
        out.mkdir(parents=True, exist_ok=True)
        exported = []
        with self._connect(request.service) as conn:
            for loss in request.plan.data_loss:
                item = loss.model_dump()
                if loss.rows == 0:
                    exported.append(loss)
                    continue
                what = loss.table.replace('"', "") + (f".{loss.column}" if loss.column else "")
                target = out / f"{loss.version}-{loss.statement}-{what}.csv"
                with open_private(target, "wb") as fh, conn.cursor().copy(
                        sql.SQL("COPY ({}) TO STDOUT WITH CSV HEADER").format(_doomed_rows_query(item))) as copy:
                    for block in copy:
                        fh.write(block)
                exported.append(loss.model_copy(update={"csv": str(target)}))
        return exported

    @activity.defn(name="migrations.down_step")
    def down_step(self, request: DownStepRequest) -> DownStepResult:
        """One down migration in one transaction with the tracking-table update, under the lock.
        Idempotent: a retry after the commit finds the database already at the step's target."""
        service, step = request.service, request.step
        database = self._database(service)
        tool = self._tool(service)
        started = time.monotonic()
        with self._migration_lock(service, tool) as lock_conn:
            status, migrations = self._status(service, lock_conn, tool)
            if status.current == step.previous:
                return DownStepResult(version=step.previous, already_done=True)
            if status.current != step.version or status.dirty:
                raise fail(f"expected {step.version} before its down migration, found {status.current}"
                           f"{' (dirty)' if status.dirty else ''}: someone else migrated; stopping",
                           kind="MigrationFailed")
            activity.heartbeat({"running": step.version})
            if isinstance(tool, Alembic):
                tool.run_down(resolve_secret(database.dsn_env, service), step, database)
            else:
                migration = next(m for m in migrations if m.version == step.version)
                with self._connect(service, autocommit=False) as conn:
                    try:
                        for statement in _timeout_statements(database):
                            conn.execute(statement)
                        conn.execute(_without_transaction_control(migration.down_sql or ""))
                        tool.record_down(conn, migration, step.previous)
                        conn.commit()
                    except psycopg.Error as exc:
                        conn.rollback()
                        raise _down_failed(step, exc) from None
        return DownStepResult(version=step.previous, seconds=time.monotonic() - started)

    @activity.defn(name="migrations.verify")
    def verify(self, request: MigrationVerifyRequest) -> list[str]:
        """The tracking table is at the target and the configured SQL checks pass; the problems
        found (an empty list means verified). Row counts are compared by the workflow."""
        problems = []
        with self._connect(request.service) as conn:
            status, _ = self._status(request.service, conn, self._tool(request.service))
            if status.current != request.target or status.dirty:
                problems.append(f"tracking table says {status.current}{' (dirty)' if status.dirty else ''}, "
                                f"expected {request.target}")
            for check in self._database(request.service).verify_sql:
                try:
                    row = conn.execute(check).fetchone()
                except psycopg.Error as exc:
                    problems.append(f"check {check!r} failed: {str(exc).strip()}")
                    continue
                if not row or not row[0]:
                    problems.append(f"check {check!r} returned {row[0] if row else 'no row'}")
        return problems

    @activity.defn(name="migrations.mark_stable")
    def mark_stable(self, request: MarkStableRequest) -> None:
        self._config.state.put("migrations-stable", request.service,
                               {"version": request.version, "at": datetime.now(timezone.utc).isoformat()})

    @activity.defn(name="migrations.force_version")
    def force_version(self, request: ForceVersionRequest) -> MigrationStatus:
        """golang-migrate's `force V`: set the version and clear the dirty flag, under the lock."""
        tool = self._tool(request.service)
        if not isinstance(tool, GolangMigrate):
            raise fail("repair clears golang-migrate's dirty flag; this service uses "
                       f"{tool.name}, which has none", kind="MigrationInvalid")
        if request.version not in [m.version for m in tool.migrations()]:
            raise fail(f"unknown version {request.version!r}", kind="MigrationInvalid")
        with self._migration_lock(request.service, tool):
            with self._connect(request.service, autocommit=False) as conn:
                tool.set_version(conn, request.version)
                conn.commit()
            with self._connect(request.service) as conn:
                return self._status(request.service, conn, tool)[0]


def apply_up(dsn: str, tool_name: str, directory: Path, to: str | None = None) -> list[str]:
    """Our up runner (tests and demos): apply pending migrations, each in a transaction with its
    tracking row. Returns the versions applied."""
    tool = TOOLS[tool_name](directory)
    done = []
    with psycopg.connect(dsn) as conn:
        tool.ensure_table(conn)
        conn.commit()
        applied, _ = tool.applied(conn)
        for migration in tool.migrations():
            if migration.version in applied:
                continue
            conn.execute(_without_transaction_control(migration.up_sql or ""))
            tool.record_up(conn, migration)
            conn.commit()
            done.append(migration.version)
            if migration.version == to:
                break
    return done
