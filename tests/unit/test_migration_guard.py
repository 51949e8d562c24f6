"""The data-loss guard's reading of down scripts, and the row-count verdict after a rollback."""

from __future__ import annotations

from activities.migrations import destructive_statements
from workflows.models import DataLoss
from workflows.policy import row_count_problems


def test_finds_every_destructive_statement_and_nothing_else():
    script = """-- migrate:down
    BEGIN;
    ALTER TABLE orders DROP COLUMN note, DROP CONSTRAINT orders_fk, ADD COLUMN z int;
    alter table "Users" drop   email;
    ALTER TABLE x ALTER COLUMN y DROP NOT NULL;  -- not a column drop
    DELETE FROM events WHERE kind = 'a; DROP TABLE users; b';
    delete from logs;
    DELETE FROM t AS x WHERE x.a > 1;
    TRUNCATE TABLE a, b RESTART IDENTITY CASCADE;
    /* DROP TABLE commented_out; */
    DROP TABLE IF EXISTS public.widgets CASCADE;
    CREATE FUNCTION f() RETURNS int AS $$ DELETE FROM inside_function; SELECT 1; $$ LANGUAGE sql;
    COMMIT;"""
    assert destructive_statements(script) == [
        {"statement": "drop_column", "table": "orders", "column": "note"},
        {"statement": "drop_column", "table": '"Users"', "column": "email"},
        {"statement": "delete", "table": "events", "alias": None, "where": "kind = 'a; DROP TABLE users; b'"},
        {"statement": "delete", "table": "logs", "alias": None, "where": None},
        {"statement": "delete", "table": "t", "alias": "x", "where": "x.a > 1"},
        {"statement": "truncate", "table": "a"},
        {"statement": "truncate", "table": "b"},
        {"statement": "drop_table", "table": "public.widgets"},
    ]


def test_row_counts_may_only_change_where_the_guard_said():
    before = {"public.accounts": 10, "public.audit": 3, "public.events": 8, "public.schema_migrations": 3}
    losses = [DataLoss(version="3", statement="drop_table", table="audit", rows=3),
              DataLoss(version="2", statement="delete", table="events", rows=5),
              DataLoss(version="2", statement="drop_column", table="accounts", column="plan", rows=10)]
    after = {"public.accounts": 10, "public.events": 3, "public.schema_migrations": 1}
    assert row_count_problems(before, after, losses, ["accounts"], ["schema_migrations"]) == []
    after_bad = {"public.accounts": 9, "public.events": 3, "public.schema_migrations": 1}
    assert row_count_problems(before, after_bad, losses, ["accounts", "ledger"], ["schema_migrations"]) == [
        "table public.accounts has 9 rows, expected 10", "critical table ledger does not exist"]

