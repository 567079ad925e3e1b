"""A real prices server (`python -m cryptopipe serve`) on a free port, on the stack's Postgres and
Kafka, tailing this module's own transformed topics (`--topic-suffix`), so the tests can produce
ticks without touching the pipeline's topics. Small limits make them reachable in a test."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LIMITS = {"API_MAX_CONNECTIONS": "6", "API_MAX_SYMBOLS": "10", "API_CLIENT_QUEUE": "1000",
          "API_SLOW_CLIENT_SECONDS": "2", "API_HEALTH_CACHE_SECONDS": "0", "API_CANDLES_PAGE_SIZE": "100",
          "API_MAX_CANDLE_WINDOW_HOURS": "48"}


class ApiServer:
    def __init__(self, port: int, suffix: str, proc: subprocess.Popen, log: Path):
        self.port, self.suffix, self.proc, self.log = port, suffix, proc, log
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, object]:
        import json
        import urllib.error

        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                body = r.read()
                return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def metric(self, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api_topics(stack):
    from common.kafka import create_topics, delete_topics
    from common.topics import EXCHANGES, transformed_topic

    suffix = f"_apitest{uuid.uuid4().hex[:8]}"
    topics = {transformed_topic(ex) + suffix: 3 for ex in EXCHANGES}
    create_topics(topics)
    yield suffix
    delete_topics(topics)


@pytest.fixture(scope="module")
def api_server(stack, api_topics, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    env = {**os.environ, **LIMITS, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cryptopipe", "serve", "--port", str(port),
                                 "--topic-suffix", api_topics, "--log-level", "INFO"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ApiServer(port, api_topics, proc, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            status, _ = server.get("/openapi.json")
            if status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the prices server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    yield server
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
