"""The supervisor hook and the supervision loop against a real (throwaway) supervisord."""
import logging
import os
import signal
import time
import uuid
from datetime import datetime, timezone

import pytest

from plugins.operators.stream_supervisor import policy_from, run_check
from plugins.supervision import RECOVERED, RestartFailed

log = logging.getLogger(__name__)


class FakeHealth:
    """Fresh ticks, no lag, and an in-memory record: isolates supervisord from Kafka/Postgres."""

    def __init__(self):
        self.recorded = []

    def now(self):
        return datetime.now(timezone.utc)

    def tick_ages(self, exchanges):
        return {ex: 1.0 for ex in exchanges}

    def topic_end_offsets(self, topics):
        return {t: 0 for t in topics}

    def group_lags(self, groups):
        return []

    def previous_checks(self, programs):
        return {}

    def record_checks(self, verdicts, run_id, at):
        self.recorded += [(run_id, v) for v in verdicts]
        return len(verdicts)


def wait_state(hook, fullname, states, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = hook.get_program(fullname)
        if p.state in states:
            return p
        time.sleep(0.1)
    raise AssertionError(f"{fullname} never reached {states}; last {p.state}")


def test_hook_reads_real_program_states(throwaway_supervisord):
    programs = {p.name: p for p in throwaway_supervisord.get_all_programs()}
    assert {n: p.state for n, p in programs.items()} == {
        "transform": "RUNNING", "extract-binance": "RUNNING", "load": "FATAL", "archive": "STOPPED"}
    assert programs["transform"].pid > 0 and programs["transform"].fullname == "pipeline:transform"
    assert programs["load"].pid == 0


def test_killed_program_is_restarted_and_comes_back(throwaway_supervisord):
    hook = throwaway_supervisord
    before = hook.get_program("pipeline:transform")
    os.kill(before.pid, signal.SIGKILL)
    wait_state(hook, "pipeline:transform", {"EXITED"})
    # load stays FATAL whatever we do: keep it out of this test with a policy watching transform only
    policy = policy_from(180, 120, False, None)
    policy = type(policy)(watches={"transform": policy.watches["transform"]})
    health = FakeHealth()
    verdicts = run_check(health, hook, policy, run_id="t-restart", log=log)
    assert [(v["program"], v["verdict"], v["outcome"], v["state_after"]) for v in verdicts] == [
        ("transform", "dead", RECOVERED, "RUNNING")]
    after = hook.get_program("pipeline:transform")
    assert after.state == "RUNNING" and after.pid not in (0, before.pid)
    assert [v.program for _, v in health.recorded] == ["transform"]


def test_restart_that_does_not_help_is_recorded_then_fails_loudly(throwaway_supervisord):
    health = FakeHealth()
    with pytest.raises(RestartFailed, match=r"load \(dead: supervisord reports FATAL"):
        run_check(health, throwaway_supervisord, policy_from(180, 120, False, None), run_id="t-fail", log=log)
    recorded = {v.program: v for _, v in health.recorded}
    # every watched program supervisord runs was recorded before the task failed
    assert set(recorded) == {"transform", "extract-binance", "load", "archive"}
    assert (recorded["load"].action, recorded["load"].outcome) == ("restart", "failed")
    assert recorded["load"].state_after in ("FATAL", "BACKOFF", "EXITED")   # anything but RUNNING
    assert (recorded["archive"].verdict, recorded["archive"].action) == ("stopped", "none")
    assert recorded["transform"].verdict == "healthy"


@pytest.mark.integration
def test_check_on_real_stack_records_what_it_saw(throwaway_supervisord, airflow_conns, pg):
    """Real supervisord, real Postgres and Kafka via the Airflow connections."""
    from plugins.hooks.pipeline_health import PipelineHealthHook

    run_id = f"test-{uuid.uuid4().hex}"
    groups = {p: f"test-sup-{p}-{uuid.uuid4().hex[:8]}" for p in ("transform", "load", "archive")}
    with pytest.raises(RestartFailed):
        run_check(PipelineHealthHook(), throwaway_supervisord, policy_from(180, 120, False, groups),
                  run_id=run_id, log=log)
    with pg.cursor() as cur:
        cur.execute("SELECT program, state, verdict, action, outcome, observed FROM supervisor_checks "
                    "WHERE run_id = %s", (run_id,))
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    assert set(rows) == {"transform", "extract-binance", "load", "archive"}
    assert rows["load"][:4] == ("FATAL", "dead", "restart", "failed")
    assert rows["archive"][:3] == ("STOPPED", "stopped", "none")
    observed = rows["transform"][4]
    assert observed["group"] == groups["transform"]
    assert set(observed["topics"]) == {"binance_raw_data", "kucoin_raw_data"}
    assert "tick_age_s" in rows["extract-binance"][4] and "raw_end" in rows["extract-binance"][4]


@pytest.mark.integration
def test_the_stack_airflow_kafka_identity_reads_what_the_supervisor_needs(stack, stack_ctx, monkeypatch):
    """crypto_kafka as the stack writes it into Airflow (the `airflow` identity, not admin): the
    supervisor's Kafka reads work, and that identity can write nothing."""
    import json

    from confluent_kafka import KafkaError

    from common.topics import RAW_TOPICS
    from cryptopipe.stack.airflow import kafka_connection_extra
    from plugins.hooks.pipeline_health import PipelineHealthHook
    from plugins.supervision import default_watches

    extra = kafka_connection_extra(stack_ctx)
    assert extra["sasl.username"] == "airflow"
    monkeypatch.setenv("AIRFLOW_CONN_CRYPTO_KAFKA", json.dumps({"conn_type": "kafka", "extra": extra}))
    health = PipelineHealthHook()
    assert set(health.topic_end_offsets(RAW_TOPICS)) == set(RAW_TOPICS)
    groups = {w.group: w.topics for w in default_watches().values() if w.group}
    lags = health.group_lags(groups)
    assert {(lag.group, lag.topic) for lag in lags} == {(g, t) for g, ts in groups.items() for t in ts}

    from confluent_kafka import Producer

    errors = []
    producer = Producer({**extra, "log_level": 0, "message.timeout.ms": 10_000})
    producer.produce("binance_raw_data", value=b"from airflow", on_delivery=lambda err, _m: errors.append(err))
    producer.flush(20)
    assert errors and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
