"""`dag.test()` of crypto_stream_supervisor on the real stack (Postgres, Kafka through the
crypto_* connections) with a real throwaway supervisord in place of the stack's, so that the
restarts it makes touch no daemon another test relies on."""
import pytest

pytestmark = pytest.mark.integration


def checks(pg, run_id):
    with pg.cursor() as cur:
        cur.execute("SELECT program, state, verdict, action, outcome, state_after FROM supervisor_checks "
                    "WHERE run_id = %s", (run_id,))
        return {r[0]: r[1:] for r in cur.fetchall()}


def test_supervisor_dag_restarts_a_stopped_program_and_succeeds(sleeping_supervisord, run_dag, pg):
    hook = sleeping_supervisord
    hook.get_conn().supervisor.stopProcess("pipeline:load", True)
    assert hook.get_program("pipeline:load").state == "STOPPED"
    out = run_dag("crypto_stream_supervisor", {"restart_stopped": True},
                  env={"SUPERVISOR_SOCKET": hook.socket_path})
    assert out["state"] == "success", out["stdout"][-4000:]
    assert out["tasks"] == {"check_and_restart": "success"}
    assert hook.get_program("pipeline:load").state == "RUNNING"
    rows = checks(pg, out["run_id"])
    assert set(rows) == {"extract-binance", "extract-kucoin", "transform", "load", "archive"}
    assert rows["load"] == ("STOPPED", "dead", "restart", "recovered", "RUNNING")
    assert rows["transform"][:4] == ("RUNNING", "healthy", "none", None)
    verdicts = out["xcom"]["check_and_restart.return_value"]
    assert {v["program"]: v["outcome"] for v in verdicts}["load"] == "recovered"


def test_supervisor_dag_fails_loudly_when_a_restart_does_not_help(throwaway_supervisord, run_dag, pg):
    out = run_dag("crypto_stream_supervisor", env={"SUPERVISOR_SOCKET": throwaway_supervisord.socket_path})
    assert out["state"] == "failed"
    assert out["tasks"] == {"check_and_restart": "failed"}
    assert "RestartFailed" in out["stdout"] and "restart did not bring back: load" in out["stdout"]
    # what it saw was recorded before it failed
    rows = checks(pg, out["run_id"])
    assert rows["load"][:4] == ("FATAL", "dead", "restart", "failed")
    assert rows["archive"][:3] == ("STOPPED", "stopped", "none")
