"""The benchmark's own database on the stack's Postgres server.

A run writes millions of ticks; in the stack's `cryptopipe` database they would stay behind and
feed its gap detection, candles and prices with the simulator's market. So each run creates
`cryptopipe_bench_<id>` (owned by the `cryptopipe` role, every migration applied), points its
daemons and the peer at it, empties its tables before every step (so no step inherits the
previous one's rows and indexes), and drops it at the end.
"""
from __future__ import annotations

from contextlib import contextmanager

from psycopg2.extensions import make_dsn, parse_dsn

from common.db import connect, migrate

# what the loader writes: emptied before every step
PIPELINE_TABLES = ("ticks", "candles_1m", "latest_prices", "stream_sessions", "loader_offsets", "dlq_records")


def bench_dsn(stack_dsn: str, name: str) -> str:
    return make_dsn(**{**parse_dsn(stack_dsn), "dbname": name})


@contextmanager
def bench_database(stack_dsn: str, run_id: str):
    """Yields the DSN of a new, migrated database; drops it afterwards."""
    from cryptopipe.stack.manager import make_context
    from cryptopipe.stack.postgres import Postgres

    name = f"cryptopipe_bench_{run_id}"
    owner = parse_dsn(stack_dsn).get("user", "cryptopipe")
    if not (name.replace("_", "").isalnum() and owner.replace("_", "").isalnum()):
        raise ValueError(f"unexpected database or role name {name!r} / {owner!r}")
    # the cryptopipe role may not create databases: the server's superuser does, for it
    Postgres().psql(make_context(), f"CREATE DATABASE {name} OWNER {owner}")
    dsn = bench_dsn(stack_dsn, name)
    try:
        migrate(dsn)
        yield dsn
    finally:
        conn = connect(stack_dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            conn.close()


def empty_pipeline_tables(dsn: str) -> None:
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"TRUNCATE {', '.join(PIPELINE_TABLES)}")
    finally:
        conn.close()
