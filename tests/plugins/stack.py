"""Fixtures that bring up the real local stack (Kafka, Postgres, S3) once per test session.

- `stack`: ensures Kafka, Postgres and S3 are running, migrations applied, topics and bucket
  created; returns the Settings pointing at them.
- `pg`: an autocommit psycopg2 connection to the cryptopipe database.
- `clean_db`: truncates the pipeline tables before the test.
- `s3`: a boto3 client on the stack's S3 server.
- `kafka_admin`: a confluent-kafka AdminClient.
"""
import pytest


@pytest.fixture(scope="session")
def stack():
    from cryptopipe.stack.manager import ensure_core

    return ensure_core()


@pytest.fixture
def pg(stack):
    from common.db import connect

    conn = connect()
    conn.autocommit = True
    yield conn
    conn.close()


PIPELINE_TABLES = ("ticks", "latest_prices", "candles_1m", "stream_sessions", "gaps")


def truncate_pipeline_tables(conn) -> None:
    """Empty every table of the cryptopipe database but the migrations' bookkeeping."""
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'schema_migrations' AND tablename NOT LIKE 'ticks\\_%'")
        tables = [r[0] for r in cur.fetchall()]
        if tables:
            cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def clean_db(pg):
    truncate_pipeline_tables(pg)
    return pg


@pytest.fixture(scope="session")
def s3(stack):
    from common.s3 import make_s3_client

    return make_s3_client()


@pytest.fixture(scope="session")
def kafka_admin(stack):
    from common.kafka import make_admin

    return make_admin()


@pytest.fixture(scope="session")
def airflow_stack(stack):
    """Core services plus Airflow (api-server, scheduler, dag-processor, triggerer) running.
    Returns {"url", "user", "password", "env"}."""
    from cryptopipe.stack.manager import ensure_airflow

    return ensure_airflow()


@pytest.fixture(scope="session")
def stack_ctx(stack):
    """The stack manager's context (paths, generated env) for tests that stop/start components."""
    from cryptopipe.stack.manager import make_context

    return make_context()
