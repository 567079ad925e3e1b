"""The health view's routes, behind Airflow's login:

    GET /cryptopipe/health/          the page (HTML; its script fetches data/ every 15 s)
    GET /cryptopipe/health/data      the snapshot as JSON (PipelineHealthHook.snapshot)
    GET /cryptopipe/health/health.js

Anonymous requests get 401, a token Airflow did not sign 403: the dependency is Airflow's own
`requires_access_view`, which reads the UI's session cookie or an `Authorization: Bearer` JWT.
"""
from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def create_health_app(snapshot=None):
    """`snapshot()` returns the view's data (default: PipelineHealthHook().snapshot)."""
    from fastapi import Depends, FastAPI
    from fastapi.responses import FileResponse, RedirectResponse

    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    if snapshot is None:
        def snapshot():
            from plugins.hooks.pipeline_health import PipelineHealthHook

            return PipelineHealthHook(kafka_timeout_s=5.0).snapshot()

    app = FastAPI(title="cryptopipe health view", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_access_view(AccessView.CLUSTER_ACTIVITY))])

    @app.get("/health")
    def health_no_slash() -> RedirectResponse:
        return RedirectResponse("health/")

    @app.get("/health/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "health.html")

    @app.get("/health/health.js")
    def script() -> FileResponse:
        return FileResponse(STATIC / "health.js", media_type="text/javascript")

    @app.get("/health/data")
    def data() -> dict:
        return snapshot()

    return app
