"""The prices server as `make status` shows it (the program itself is `api` in
streaming/supervisord.conf, group `pipeline`, started with the streaming daemons)."""
from __future__ import annotations

import urllib.request

from cryptopipe.stack.paths import API_PORT


def api_healthy(timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/metrics", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def api_status(state: str, expected: bool) -> dict:
    url = f"http://127.0.0.1:{API_PORT}"
    return {"state": state, "healthy": state == "RUNNING" and api_healthy(), "expected": expected,
            "address": url, "use": f"open {url}/ (live prices), {url}/docs (API); curl {url}/v1/prices"}
