"""The health hook rides out a broker that just started (coordinator still loading) instead of
failing the supervisor DAG, and still fails at once on an error that will not pass."""
import pytest
from confluent_kafka import KafkaError, KafkaException

from plugins.hooks.pipeline_health import PipelineHealthHook


def failing(times: int, code: int, result="ok"):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise KafkaException(KafkaError(code))
        return result
    return call, calls


def test_coordinator_load_in_progress_is_retried_until_it_answers(monkeypatch):
    monkeypatch.setattr("plugins.hooks.pipeline_health.time.sleep", lambda s: None)
    call, calls = failing(2, KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    assert PipelineHealthHook(kafka_timeout_s=15)._retrying("offsets", call) == "ok"
    assert len(calls) == 3


def test_a_lasting_error_is_raised_without_retry(monkeypatch):
    monkeypatch.setattr("plugins.hooks.pipeline_health.time.sleep", lambda s: None)
    call, calls = failing(5, KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        PipelineHealthHook(kafka_timeout_s=15)._retrying("offsets", call)
    assert len(calls) == 1


def test_transient_errors_give_up_after_the_timeout():
    call, calls = failing(10**6, KafkaError.NOT_COORDINATOR)
    with pytest.raises(KafkaException):
        PipelineHealthHook(kafka_timeout_s=1.0)._retrying("offsets", call)
    assert 1 < len(calls) < 10
