"""One supervisor check: observe, decide, restart, record, and fail loudly if a restart failed."""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping

from airflow.sdk import BaseOperator

from plugins.connections import KAFKA_CONN_ID, POSTGRES_CONN_ID


class StreamSupervisorOperator(BaseOperator):
    """Checks every supervisord program of the pipeline and restarts the dead and the stuck.

    Records one `supervisor_checks` row per program (what it saw, what it did, how that ended),
    returns the verdicts (XCom), and raises `RestartFailed` after recording when a restart did
    not bring a program back to RUNNING.
    """

    template_fields = ("stale_tick_s", "stall_s", "startup_grace_s", "restart_stopped", "groups")

    def __init__(self, *, stale_tick_s: Any = 600, stall_s: Any = 600, startup_grace_s: Any = 120,
                 restart_stopped: Any = False, groups: Any = None, socket_path: str | None = None,
                 postgres_conn_id: str = POSTGRES_CONN_ID, kafka_config_id: str = KAFKA_CONN_ID,
                 **kwargs):
        kwargs.setdefault("execution_timeout", timedelta(minutes=4))
        super().__init__(**kwargs)
        self.stale_tick_s = stale_tick_s
        self.stall_s = stall_s
        self.startup_grace_s = startup_grace_s
        self.restart_stopped = restart_stopped
        self.groups = groups
        self.socket_path = socket_path
        self.postgres_conn_id = postgres_conn_id
        self.kafka_config_id = kafka_config_id

    def execute(self, context) -> list[dict]:
        from plugins.hooks.pipeline_health import PipelineHealthHook
        from plugins.hooks.supervisord import SupervisorHook

        health = PipelineHealthHook(postgres_conn_id=self.postgres_conn_id, kafka_config_id=self.kafka_config_id)
        supervisor = SupervisorHook(socket_path=self.socket_path)
        run_id = context["run_id"] if context else None
        return run_check(health, supervisor, policy_from(self.stale_tick_s, self.startup_grace_s,
                                                           self.restart_stopped, self.groups, self.stall_s),
                         run_id=run_id, log=self.log)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def policy_from(stale_tick_s: Any, startup_grace_s: Any, restart_stopped: Any, groups: Any, stall_s: Any = 600):
    """A Policy from (possibly templated, hence string) operator arguments."""
    from plugins.supervision import Policy, default_watches

    if isinstance(groups, str):
        import json

        groups = json.loads(groups) if groups.strip() else None
    if groups is not None and not isinstance(groups, Mapping):
        raise ValueError(f"groups must map program to consumer group, got {type(groups).__name__}")
    return Policy(watches=default_watches(groups), stale_tick_s=float(stale_tick_s), stall_s=float(stall_s),
                  startup_grace_s=float(startup_grace_s), restart_stopped=_as_bool(restart_stopped))


def observe(health, supervisor, policy):
    """One Observation: supervisord states, tick ages, topic end offsets, group lags."""
    from plugins.supervision import Observation

    programs = tuple(p for p in supervisor.get_all_programs() if p.name in policy.watches)
    exchanges = sorted({w.exchange for w in policy.watches.values() if w.exchange})
    raw_topics = sorted({w.raw_topic for w in policy.watches.values() if w.raw_topic})
    groups = {w.group: w.topics for w in policy.watches.values() if w.group}
    return Observation(at=health.now(), programs=programs, tick_age_s=health.tick_ages(exchanges),
                       topic_end=health.topic_end_offsets(raw_topics), lags=tuple(health.group_lags(groups)))


def run_check(health, supervisor, policy, *, run_id: str | None, log) -> list[dict]:
    from plugins.supervision import raise_on_failures, supervise

    obs = observe(health, supervisor, policy)
    previous = health.previous_checks([p.name for p in obs.programs])
    verdicts = supervise(obs, policy, previous, supervisor.restart)
    health.record_checks(verdicts, run_id, obs.at)
    for v in verdicts:
        line = f"{v.program:<16} {v.state:<9} {v.verdict:<9} {v.reason}"
        if v.action == "restart":
            line += f" -> restarted: {v.outcome} ({v.state_after})"
        (log.error if v.outcome == "failed" else log.warning if v.action == "restart" else log.info)(line)
    if not obs.programs:
        log.warning("supervisord runs none of the pipeline programs %s", ", ".join(policy.watches))
    raise_on_failures(verdicts)
    return [v.as_dict() for v in verdicts]
