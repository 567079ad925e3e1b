"""Hooks: the code that talks to supervisord, Postgres and Kafka for the DAGs."""
