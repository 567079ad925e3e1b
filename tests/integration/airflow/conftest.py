"""A throwaway real supervisord (its own socket in a temp dir) running `sleep` programs named like
the pipeline's, and Airflow connections taken from the stack's settings."""
import json
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


def _start_supervisord(programs: dict[str, str], ready) -> tuple:
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
        programs={",".join(programs)}
        """) + "".join(programs.values()))
    proc = subprocess.Popen([SUPERVISORD, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from plugins.hooks.supervisord import SupervisorHook

    deadline = time.monotonic() + 30
    try:
        while True:
            hook = SupervisorHook(socket_path=str(sock), settle_s=0.5)
            try:
                if ready({p.name: p.state for p in hook.get_all_programs()}):
                    return proc, hook, d
            except ConnectionError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"throwaway supervisord did not come up: {(d / 'supervisord.log').read_text()}")
            time.sleep(0.2)
    except BaseException:
        _stop_supervisord(proc, d)      # never leave a supervisord (and its programs) behind
        raise


def _stop_supervisord(proc, d: Path) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def throwaway_supervisord():
    """Programs (group `pipeline`): transform and extract-binance run `sleep`; load exits at once
    (ends FATAL, and every restart fails); archive is configured but never started (STOPPED)."""
    programs = {"transform": _program("transform", "sleep 3600", autostart=True),
                "extract-binance": _program("extract-binance", "sleep 3600", autostart=True),
                "load": _program("load", "sh -c 'exit 3'", autostart=True),
                "archive": _program("archive", "sleep 3600", autostart=False)}
    proc, hook, d = _start_supervisord(
        programs, lambda st: st.get("transform") == "RUNNING" and st.get("load") == "FATAL")
    yield hook
    _stop_supervisord(proc, d)


@pytest.fixture
def sleeping_supervisord():
    """The five pipeline programs, each a `sleep` that supervisord keeps RUNNING."""
    names = ("extract-binance", "extract-kucoin", "transform", "load", "archive")
    programs = {n: _program(n, "sleep 3600", autostart=True, autorestart=True) for n in names}
    proc, hook, d = _start_supervisord(programs, lambda st: all(st.get(n) == "RUNNING" for n in names))
    yield hook
    _stop_supervisord(proc, d)


@pytest.fixture
def airflow_conns(stack, monkeypatch):
    """crypto_postgres / crypto_kafka / crypto_s3 as AIRFLOW_CONN_* variables from the stack's settings."""
    from plugins.connections import airflow_conn_env

    for key, value in airflow_conn_env(stack).items():
        monkeypatch.setenv(key, value)
    return stack


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A throwaway AIRFLOW_HOME with a migrated sqlite metadata database (for dag.test())."""
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, **_airflow_env(home)}
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return home


ROOT = Path(__file__).resolve().parents[3]


def _airflow_env(home: Path) -> dict:
    return {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def run_dag(airflow_home, stack):
    """run_dag(dag_id, conf=None, env=None) -> {"state", "tasks", "xcom", "run_id", "stdout"}: dag.test()
    in a fresh process, with the crypto_* connections from the stack's settings (plus `env`)."""
    from plugins.connections import airflow_conn_env

    def run(dag_id: str, conf: dict | None = None, env: dict | None = None, timeout: float = 600) -> dict:
        full = {**os.environ, **_airflow_env(airflow_home), **airflow_conn_env(stack), **(env or {})}
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("dag_runner.py")), dag_id,
                               json.dumps(conf or {})], env=full, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
        assert lines, f"dag.test of {dag_id} crashed: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        out = json.loads(lines[-1][len("RESULT"):])
        out["stdout"] = proc.stdout + proc.stderr
        return out

    return run
