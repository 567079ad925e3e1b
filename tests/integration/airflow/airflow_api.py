"""A small client of Airflow's REST API (JWT from /auth/token), as the UI uses it."""
import json
import time
import urllib.error
import urllib.parse
import urllib.request


from cryptopipe.stack.airflow import AirflowRest


class AirflowApi(AirflowRest):
    """The stack's REST client plus what the tests need (trigger, wait, logs)."""

    def trigger(self, dag_id: str, conf: dict) -> tuple[int, dict]:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, run = self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
            assert status == 200, run
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                return run
            time.sleep(2)

    def ready(self, dag_id: str, timeout: float = 120) -> bool:
        """Wait until the dag-processor has parsed `dag_id`, and unpause it; returns whether it
        was paused (to restore with `set_paused`)."""
        deadline = time.monotonic() + timeout
        while True:
            status, dag = self.call("GET", f"/dags/{dag_id}")
            if status == 200:
                break
            assert time.monotonic() < deadline, f"{dag_id} never appeared in Airflow"
            time.sleep(2)
        self.set_paused(dag_id, False)
        return bool(dag["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        status, dag = self.call("PATCH", f"/dags/{dag_id}", {"is_paused": paused})
        assert status == 200, dag

    def wait_idle(self, dag_id: str, timeout: float = 600) -> None:
        """Wait until no run of `dag_id` is queued or running."""
        deadline = time.monotonic() + timeout
        while True:
            busy = 0
            for state in ("queued", "running"):
                status, runs = self.call("GET", f"/dags/{dag_id}/dagRuns?state={state}&limit=1")
                assert status == 200, runs
                busy += runs["total_entries"]
            if not busy:
                return
            assert time.monotonic() < deadline, f"{dag_id} still has {busy} active runs"
            time.sleep(3)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        q = urllib.parse.quote(run_id, safe="")
        status, body = self.call("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{task_id}/logs/{try_number}"
                                        "?full_content=true")
        assert status == 200, body
        return json.dumps(body.get("content"))
