"""Airflow glue for cryptopipe: hooks (supervisord, pipeline health), operators, DAG-task helpers.

Importable as a normal package (`plugins.hooks.supervisord`); Airflow's `plugins_folder` also
points here. Nothing in this package touches a network or a database at import time.
"""
