"""A throwaway real supervisord (its own socket in a temp dir) running `sleep` programs named like
the pipeline's, and Airflow connections taken from the stack's settings."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

# Airflow reads AIRFLOW_HOME when first imported: a throwaway one for these tests, never ~/airflow
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cp-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

SUPERVISORD = str(Path(sys.executable).parent / "supervisord")


def _program(name: str, command: str, *, autostart: bool, startsecs: int = 1, startretries: int = 0,
             autorestart: bool = False) -> str:
    return textwrap.dedent(f"""
        [program:{name}]
        command={command}
        autostart={str(autostart).lower()}
        autorestart={str(autorestart).lower()}
        startsecs={startsecs}
        startretries={startretries}
        stopwaitsecs=3
        stopasgroup=true
        killasgroup=true
        """)


@pytest.fixture
def throwaway_supervisord():
    """Programs (group `pipeline`): transform and extract-binance run `sleep`; load exits at once
    (ends FATAL, and every restart fails); archive is configured but never started (STOPPED)."""
    d = Path(tempfile.mkdtemp(prefix="cpsv"))
    sock = d / "s.sock"
    conf = d / "supervisord.conf"
    conf.write_text(textwrap.dedent(f"""
        [unix_http_server]
        file={sock}
        chmod=0700
        [supervisord]
        logfile={d / 'supervisord.log'}
        pidfile={d / 'supervisord.pid'}
        childlogdir={d}
        nodaemon=true
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [group:pipeline]
        programs=transform,extract-binance,load,archive
        """) + _program("transform", "sleep 3600", autostart=True)
        + _program("extract-binance", "sleep 3600", autostart=True)
        + _program("load", "sh -c 'exit 3'", autostart=True)
        + _program("archive", "sleep 3600", autostart=False))
    proc = subprocess.Popen([SUPERVISORD, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from plugins.hooks.supervisor import SupervisorHook

    hook = SupervisorHook(socket_path=str(sock), settle_s=0.5)
    deadline = time.monotonic() + 30
    while True:
        try:
            states = {p.name: p.state for p in hook.get_all_programs()}
            if states.get("transform") == "RUNNING" and states.get("load") == "FATAL":
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"throwaway supervisord did not come up: {(d / 'supervisord.log').read_text()}")
        time.sleep(0.2)
    yield hook
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def airflow_conns(stack, monkeypatch):
    """crypto_postgres / crypto_kafka / crypto_s3 as AIRFLOW_CONN_* variables from the stack's settings."""
    from plugins.connections import airflow_conn_env

    for key, value in airflow_conn_env(stack).items():
        monkeypatch.setenv(key, value)
    return stack
