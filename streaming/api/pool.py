"""A small pool of read-only Postgres connections for the request handlers (psycopg2).

psycopg2's ThreadedConnectionPool raises when it is exhausted instead of waiting: a semaphore in
front of it makes a request wait (up to `wait_s`) for a free connection, and a request that
cannot get one is answered 503. Sessions are read-only at the server (`default_transaction_read_only`)
with a statement timeout, so no handler can write or hold the database for long; a connection
that failed (Postgres restarted) is closed instead of going back into the pool.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import psycopg2
from psycopg2.pool import ThreadedConnectionPool


class PoolBusy(RuntimeError):
    """No connection became free in time."""


class ReadOnlyPool:
    def __init__(self, dsn: str, size: int, statement_timeout_ms: int = 10_000, wait_s: float = 10.0):
        options = f"-c default_transaction_read_only=on -c statement_timeout={int(statement_timeout_ms)}"
        self._pool = ThreadedConnectionPool(0, size, dsn, options=options, application_name="cryptopipe-api",
                                            connect_timeout=5)
        self._slots = threading.BoundedSemaphore(size)
        self.wait_s = wait_s

    @contextmanager
    def cursor(self):
        """A cursor in autocommit mode (each statement its own read-only transaction)."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise PoolBusy("every database connection is busy")
        conn = None
        broken = False
        try:
            conn = self._pool.getconn()
            conn.autocommit = True
            with conn.cursor() as cur:
                yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        finally:
            if conn is not None:
                self._pool.putconn(conn, close=broken or conn.closed != 0)
            self._slots.release()

    def close(self) -> None:
        self._pool.closeall()
