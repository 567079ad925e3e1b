"""The Airflow connections the DAGs use, and how to build them from the project's settings.

The stack manager creates them in the metadata database; tests and `dag.test()` can pass them as
environment variables instead: `os.environ.update(airflow_conn_env())`.
"""
from __future__ import annotations

import json

POSTGRES_CONN_ID = "crypto_postgres"
S3_CONN_ID = "crypto_s3"
KAFKA_CONN_ID = "crypto_kafka"


def connection_specs(settings=None) -> dict[str, dict]:
    """conn_id -> Airflow connection in JSON form, from `common.settings` (env + stack.env)."""
    from psycopg2.extensions import parse_dsn

    from common.kafka import connection_config
    from common.settings import get_settings

    s = settings or get_settings()
    dsn = parse_dsn(s.postgres_dsn)
    pg = {"conn_type": "postgres", "host": dsn.get("host", "127.0.0.1"), "port": int(dsn.get("port", 5432)),
          "schema": dsn.get("dbname", "cryptopipe"), "login": dsn.get("user", ""),
          "password": dsn.get("password", "")}
    return {
        POSTGRES_CONN_ID: pg,
        S3_CONN_ID: {"conn_type": "aws", "login": s.aws_access_key_id, "password": s.aws_secret_access_key,
                     "extra": {"endpoint_url": s.s3_endpoint_url, "region_name": s.s3_region,
                               "config_kwargs": {"s3": {"addressing_style": "path"}}}},
        # librdkafka settings, credentials included: the provider's hooks pass the extra to the client
        KAFKA_CONN_ID: {"conn_type": "kafka", "extra": connection_config(s)},
    }


def airflow_conn_env(settings=None) -> dict[str, str]:
    """{"AIRFLOW_CONN_CRYPTO_POSTGRES": "<json>", ...} — contains credentials: never log it."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(spec)
            for conn_id, spec in connection_specs(settings).items()}
