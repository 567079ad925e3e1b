"""Fixtures that bring up the real local stack (Kafka, Postgres, S3) once per test session.

- `stack`: ensures Kafka, Postgres and S3 are running, migrations applied, topics and bucket
  created; returns the Settings pointing at them.
- `pg`: an autocommit psycopg2 connection to the cryptopipe database.
- `clean_db`: truncates the pipeline tables before the test.
- `s3`: a boto3 client on the stack's S3 server.
- `kafka_admin`: a confluent-kafka AdminClient.
"""
import pytest


def core_up():
    """Kafka, Postgres and S3 running, migrated, topics and bucket created (`stack up --core`, with
    the stack's remembered source and settings); returns the Settings pointing at them."""
    from common.settings import get_settings
    from cryptopipe.stack import manager

    manager.up(core_only=True)
    return get_settings()


def airflow_up() -> dict:
    """Core services plus Airflow running, three scheduled DAGs paused (the tests drive detection,
    reconciliation and supervision themselves: no scheduled run may race them). Returns how to
    reach it: {"url", "user", "password", "env"} (env: the environment Airflow's processes use)."""
    from cryptopipe.stack import manager
    from cryptopipe.stack.airflow import ADMIN_USER, Airflow, airflow_env, set_dags_paused
    from cryptopipe.stack.paths import AIRFLOW_PORT

    ctx = manager.make_context()
    manager.write_stack_env(ctx)
    manager.bring_up(ctx, [*manager.CORE, Airflow()])
    set_dags_paused(ctx, True, dag_ids=("crypto_gap_detection", "crypto_stream_supervisor", "crypto_reconcile"))
    return {"url": f"http://127.0.0.1:{AIRFLOW_PORT}", "user": ADMIN_USER,
            "password": ctx.env["CRYPTOPIPE_AIRFLOW_ADMIN_PASSWORD"], "env": airflow_env(ctx)}


def stop_program(name: str) -> None:
    """Stop one supervisord program (fault tests: 'kafka', 's3proxy', 'postgres', a pipeline program)."""
    from cryptopipe.stack import manager, supervisor

    supervisor.stop_program(manager.make_context(), name)


def start_program(name: str) -> None:
    """Start one supervisord program again; for a component's program, wait until it is healthy."""
    from cryptopipe.stack import manager, supervisor
    from cryptopipe.stack.progress import wait_until

    ctx = manager.make_context()
    supervisor.start_program(ctx, name)
    comp = next((c for c in manager.ALL if name in c.programs(ctx)), None)
    if comp is not None:
        wait_until(lambda: comp.healthy(ctx), 120, name, comp.log_path(ctx))


@pytest.fixture(scope="session")
def stack():
    return core_up()


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
    return airflow_up()


@pytest.fixture(scope="session")
def stack_ctx(stack):
    """The stack manager's context (paths, generated env) for tests that stop/start components."""
    from cryptopipe.stack.manager import make_context

    return make_context()
