"""The operators' health view: a FastAPI app mounted in Airflow's API server at /cryptopipe and a
page in the Airflow UI's navigation (plugins/cryptopipe_airflow_plugin.py registers both).

Every route requires a logged-in Airflow user allowed to see the cluster-activity view, through
Airflow's own auth manager (plugin routes are not protected by default)."""
