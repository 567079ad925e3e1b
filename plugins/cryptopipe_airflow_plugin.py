"""The cryptopipe Airflow plugin: the operators' health view (plugins/health_view/) as a FastAPI
app at /cryptopipe and an entry "Pipeline health" under Browse in the UI's navigation, shown in
the UI's frame. The app is built only when the API server asks for it (other Airflow processes
load plugins too and need none of it)."""
from __future__ import annotations

from functools import cached_property

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/cryptopipe"


class CryptopipePlugin(AirflowPlugin):
    name = "cryptopipe"
    external_views = [{
        "name": "Pipeline health",
        "href": "cryptopipe/health/",          # relative to the UI's base URL
        "url_route": "pipeline-health",         # shown inside the UI, in a frame
        "destination": "nav",
        "category": "browse",
    }]

    @cached_property
    def fastapi_apps(self):
        from plugins.health_view.app import create_health_app

        return [{"app": create_health_app(), "url_prefix": URL_PREFIX, "name": "cryptopipe health view"}]
