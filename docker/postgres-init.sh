#!/bin/bash
# Creates Airflow's metadata database next to cryptopipe's (docker-compose only).
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v pw="$AIRFLOW_DB_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
SELECT format('CREATE ROLE airflow LOGIN PASSWORD %L', :'pw') \gexec
CREATE DATABASE airflow OWNER airflow;
SQL
