"""Postgres connections (psycopg2) and the versioned schema migrations."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import psycopg2

from common.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def connect(dsn: str | None = None, **kwargs):
    return psycopg2.connect(dsn or get_settings().postgres_dsn, **kwargs)


@contextmanager
def transaction(dsn: str | None = None):
    """A connection whose work commits on success and rolls back on error; always closed."""
    conn = connect(dsn)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


@contextmanager
def cursor(dsn: str | None = None):
    """A cursor inside `transaction()`: its work commits on success, rolls back on error, and
    the connection is closed either way. The one way the backfill modules talk to Postgres."""
    with transaction(dsn) as conn, conn.cursor() as cur:
        yield cur


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def migrate(dsn: str | None = None) -> list[str]:
    """Apply the migrations not applied yet, in file-name order; returns the names applied.

    Each file runs in its own transaction with its bookkeeping row, under an advisory lock so
    that two concurrent callers do not race. A changed applied file is an error, not a re-run.
    """
    applied_now: list[str] = []
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(727274)")
            cur.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                               version    text PRIMARY KEY,
                               checksum   text NOT NULL,
                               applied_at timestamptz NOT NULL DEFAULT now())""")
        try:
            for path in migration_files():
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT checksum FROM schema_migrations WHERE version = %s", (path.stem,))
                    row = cur.fetchone()
                    if row:
                        if row[0] != checksum:
                            raise RuntimeError(f"migration {path.name} changed after it was applied; "
                                               "add a new migration instead of editing an applied one")
                        continue
                    cur.execute(sql)
                    cur.execute("INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                                (path.stem, checksum))
                    applied_now.append(path.stem)
        finally:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(727274)")
    finally:
        conn.close()
    return applied_now
