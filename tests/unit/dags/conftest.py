"""Airflow reads AIRFLOW_HOME when first imported: give these tests a throwaway one (never ~/airflow)."""
import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cp-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
