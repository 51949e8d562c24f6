"""The same three migrations written in each tool's format: create a table, add a column with
data, and a "bad" release that adds a table and a column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg

MIGRATIONS = [
    ("create_accounts", "CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL);",
     "DROP TABLE accounts;"),
    ("add_plan", "ALTER TABLE accounts ADD COLUMN plan text;\nUPDATE accounts SET plan = 'free';",
     "ALTER TABLE accounts DROP COLUMN plan;"),
    ("bad_release", "CREATE TABLE audit (id int PRIMARY KEY, note text);\nALTER TABLE accounts ADD COLUMN score int;",
     "DROP TABLE audit;\nALTER TABLE accounts DROP COLUMN score;"),
]

SQL_TOOLS = ("golang-migrate", "dbmate", "prisma", "plain")


def write_migrations(tool: str, directory: Path, migrations=MIGRATIONS) -> list[str]:
    """Write the migrations in `tool`'s layout; returns the versions the tool will record."""
    directory.mkdir(parents=True, exist_ok=True)
    versions = []
    for number, (name, up, down) in enumerate(migrations, start=1):
        if tool in ("golang-migrate", "plain"):
            (directory / f"{number:04d}_{name}.up.sql").write_text(f"BEGIN;\n{up}\nCOMMIT;\n")
            if down is not None:
                (directory / f"{number:04d}_{name}.down.sql").write_text(f"BEGIN;\n{down}\nCOMMIT;\n")
            versions.append(str(number))
        elif tool == "dbmate":
            version = f"2026010100000{number}"
            (directory / f"{version}_{name}.sql").write_text(
                f"-- migrate:up\n{up}\n\n-- migrate:down\n{down or ''}\n")
            versions.append(version)
        elif tool == "prisma":
            version = f"2026010100000{number}_{name}"
            (directory / version).mkdir()
            (directory / version / "migration.sql").write_text(f"-- {name}\n{up}\n")
            if down is not None:
                (directory / version / "down.sql").write_text(f"{down}\n")
            versions.append(version)
    return versions


def write_alembic(directory: Path, migrations=MIGRATIONS) -> list[str]:
    """A real Alembic project (alembic.ini, env.py that uses a shared connection) with the same
    three migrations; returns the revision ids, oldest first."""
    (directory / "versions").mkdir(parents=True)
    (directory / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    (directory / "env.py").write_text(textwrap.dedent('''
        from alembic import context
        from sqlalchemy import create_engine

        config = context.config

        if context.is_offline_mode():
            context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
            with context.begin_transaction():
                context.run_migrations()
        else:
            # the cookbook's shared connection; otherwise our own engine from the ini's URL
            connection = config.attributes.get("connection")
            if connection is None:
                connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    '''))
    (directory / "script.py.mako").write_text("")
    revisions, previous = [], None
    for number, (name, up, down) in enumerate(migrations, start=1):
        revision = f"a{number}{name[:8]}"
        ups = "\n".join(f"    op.execute({s.strip()!r})" for s in up.split(";") if s.strip())
        downs = "\n".join(f"    op.execute({s.strip()!r})" for s in down.split(";") if s.strip())
        (directory / "versions" / f"{revision}_{name}.py").write_text(
            f'"""{name}"""\nfrom alembic import op\n\nrevision = {revision!r}\ndown_revision = {previous!r}\n\n\n'
            f"def upgrade():\n{ups}\n\n\ndef downgrade():\n{downs}\n")
        revisions.append(revision)
        previous = revision
    return revisions


def alembic_upgrade(directory: Path, dsn: str) -> None:
    """Apply with alembic itself, as the team would."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    with engine.connect() as connection:
        config = Config(str(directory / "alembic.ini"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
    engine.dispose()


def columns(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s "
            "ORDER BY ordinal_position", (table,))]


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'public'")}


def tracking(dsn: str, tool: str) -> list:
    """What the tool's own tracking table says, in the tool's terms."""
    query = {
        "golang-migrate": "SELECT version, dirty FROM schema_migrations",
        "dbmate": "SELECT version FROM schema_migrations ORDER BY 1",
        "prisma": "SELECT migration_name, rolled_back_at IS NOT NULL FROM _prisma_migrations ORDER BY 1",
        "plain": "SELECT version FROM rollback_schema_migrations ORDER BY 1",
        "alembic": "SELECT version_num FROM alembic_version",
    }[tool]
    with psycopg.connect(dsn) as conn:
        return [tuple(r) if len(r) > 1 else r[0] for r in conn.execute(query)]
