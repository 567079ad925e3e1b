"""The stream supervisor's decisions, on fake observations (no supervisord, no Kafka)."""
from datetime import datetime, timedelta, timezone

import pytest

from plugins.supervision import (DEAD, FAILED, HEALTHY, RECOVERED, STOPPED, STUCK, TRANSIENT, GroupLag,
                                 Observation, Policy, Previous, ProgramStatus, RestartFailed, assess,
                                 default_watches, raise_on_failures, supervise)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
POLICY = Policy(watches=default_watches(), stale_tick_s=180, startup_grace_s=120)


def prog(name, state="RUNNING", uptime=3600.0, **kw):
    return ProgramStatus(name=name, group="pipeline", state=state, pid=100 if state == "RUNNING" else 0,
                         uptime_s=uptime if state == "RUNNING" else 0.0, **kw)


def obs(programs, tick_age=None, topic_end=None, lags=()):
    return Observation(at=T0, programs=tuple(programs),
                       tick_age_s=tick_age if tick_age is not None else {"binance": 5.0, "kucoin": 5.0},
                       topic_end=topic_end if topic_end is not None else {"binance_raw_data": 1000,
                                                                          "kucoin_raw_data": 1000},
                       lags=tuple(lags))


def by_program(verdicts):
    return {v.program: v for v in verdicts}


def test_from_rpc_reads_supervisord_fields():
    info = {"name": "load", "group": "pipeline", "statename": "RUNNING", "pid": 42, "start": 1000, "now": 1300,
            "exitstatus": 0, "spawnerr": "", "description": "pid 42, uptime 0:05:00"}
    p = ProgramStatus.from_rpc(info)
    assert (p.name, p.state, p.pid, p.uptime_s, p.fullname) == ("load", "RUNNING", 42, 300.0, "pipeline:load")
    alone = ProgramStatus.from_rpc({"name": "sleeper", "group": "sleeper", "statename": "FATAL", "start": 5,
                                    "now": 9, "spawnerr": "can't find command"})
    assert (alone.fullname, alone.uptime_s, alone.spawnerr) == ("sleeper", 0.0, "can't find command")


@pytest.mark.parametrize("state", ["FATAL", "EXITED", "BACKOFF", "UNKNOWN"])
def test_dead_programs_are_restarted(state):
    v = by_program(assess(obs([prog("transform", state, exitstatus=1)]), POLICY))["transform"]
    assert (v.verdict, v.action) == (DEAD, "restart")
    assert state in v.reason and "exit status 1" in v.reason


def test_stopped_is_left_alone_unless_policy_says_otherwise():
    v = assess(obs([prog("archive", "STOPPED")]), POLICY)[0]
    assert (v.verdict, v.action) == (STOPPED, "none")
    eager = Policy(watches=POLICY.watches, restart_stopped=True)
    v = assess(obs([prog("archive", "STOPPED")]), eager)[0]
    assert (v.verdict, v.action) == (DEAD, "restart")


def test_transient_states_and_programs_outside_the_pipeline_are_not_touched():
    verdicts = assess(obs([prog("load", "STARTING"), prog("kafka", "FATAL"), prog("postgres", "STOPPED")]),
                      POLICY)
    assert [(v.program, v.verdict, v.action) for v in verdicts] == [("load", TRANSIENT, "none")]


def test_extractor_with_fresh_ticks_is_healthy():
    v = assess(obs([prog("extract-binance")], tick_age={"binance": 30.0, "kucoin": 900.0}), POLICY)[0]
    assert (v.verdict, v.action) == (HEALTHY, "none")
    assert v.observed["tick_age_s"] == 30.0 and v.observed["raw_end"] == 1000


def test_extractor_with_stale_ticks_and_silent_raw_topic_is_stuck():
    prev = {"extract-kucoin": Previous(at=T0 - timedelta(minutes=5), observed={"raw_end": 1000})}
    v = assess(obs([prog("extract-kucoin")], tick_age={"binance": 1.0, "kucoin": 600.0}), POLICY, prev)[0]
    assert (v.verdict, v.action) == (STUCK, "restart")
    assert "kucoin tick is 600s old" in v.reason and "kucoin_raw_data got nothing new" in v.reason


def test_extractor_still_producing_is_not_blamed_for_stale_ticks():
    """Raw topic grew since the previous check: the hold-up is downstream (transform or load)."""
    prev = {"extract-kucoin": Previous(at=T0 - timedelta(minutes=5), observed={"raw_end": 400})}
    v = assess(obs([prog("extract-kucoin")], tick_age={"binance": 1.0, "kucoin": 600.0}), POLICY, prev)[0]
    assert v.verdict == HEALTHY


def test_extractor_with_no_tick_at_all_after_grace_is_stuck_but_not_within_grace():
    o = obs([prog("extract-binance", uptime=600)], tick_age={"binance": None, "kucoin": None}, topic_end={})
    v = assess(o, POLICY)[0]
    assert v.verdict == STUCK and "no tick stored yet" in v.reason
    young = obs([prog("extract-binance", uptime=30)], tick_age={"binance": None, "kucoin": None})
    assert assess(young, POLICY)[0].verdict == HEALTHY


def lags(group, committed, end):
    return [GroupLag(group, "binance_raw_data", committed, end), GroupLag(group, "kucoin_raw_data", 0, 0)]


def test_consumer_with_lag_and_frozen_offsets_is_stuck_only_after_the_stall_limit():
    # first check that sees no movement: the stall starts, nothing is restarted yet
    prev = {"transform": Previous(at=T0 - timedelta(minutes=5), observed={"committed": 500})}
    v = assess(obs([prog("transform")], lags=lags("transformer", 500, 900)), POLICY, prev)[0]
    assert (v.verdict, v.action) == (HEALTHY, "none")
    assert v.observed["stalled_since"] == (T0 - timedelta(minutes=5)).isoformat()
    # still no movement, and the stall began 11 minutes ago: stuck
    prev = {"transform": Previous(at=T0 - timedelta(minutes=5), observed={
        "committed": 500, "stalled_since": (T0 - timedelta(minutes=11)).isoformat()})}
    v = assess(obs([prog("transform")], lags=lags("transformer", 500, 900)), POLICY, prev)[0]
    assert (v.verdict, v.action) == (STUCK, "restart")
    assert "lag 400" in v.reason and "for 660s" in v.reason and v.observed["lag"] == 400


def test_consumer_making_progress_or_without_lag_or_history_is_healthy():
    prev = {"transform": Previous(at=T0 - timedelta(minutes=5), observed={"committed": 300})}
    moving = assess(obs([prog("transform")], lags=lags("transformer", 500, 900)), POLICY, prev)[0]
    caught_up = assess(obs([prog("transform")], lags=lags("transformer", 900, 900)),
                       POLICY, {"transform": Previous(T0, {"committed": 900})})[0]
    first_look = assess(obs([prog("transform")], lags=lags("transformer", 500, 900)), POLICY, {})[0]
    assert [moving.verdict, caught_up.verdict, first_look.verdict] == [HEALTHY] * 3


def test_groups_are_configurable():
    policy = Policy(watches=default_watches({"load": "loader-blue"}))
    assert policy.watches["load"].group == "loader-blue"
    assert "pipeline_events" in policy.watches["load"].topics
    assert policy.watches["transform"].group == "transformer"


def test_supervise_restarts_and_reports_recovery():
    restarted = []

    def restart(p):
        restarted.append(p.fullname)
        return ProgramStatus(p.name, p.group, "RUNNING", pid=7)

    verdicts = by_program(supervise(obs([prog("load", "FATAL"), prog("archive")]), POLICY, {}, restart))
    assert restarted == ["pipeline:load"]
    assert (verdicts["load"].outcome, verdicts["load"].state_after) == (RECOVERED, "RUNNING")
    assert verdicts["archive"].outcome is None
    raise_on_failures(verdicts.values())       # nothing failed: no exception


def test_failed_restart_is_recorded_then_raised_loudly():
    def restart(p):
        if p.name == "load":
            return ProgramStatus(p.name, p.group, "FATAL", spawnerr="Exited too quickly")
        raise ConnectionRefusedError("socket gone")

    verdicts = supervise(obs([prog("load", "BACKOFF"), prog("transform", "EXITED")]), POLICY, {}, restart)
    v = by_program(verdicts)
    assert (v["load"].outcome, v["load"].state_after) == (FAILED, "FATAL")
    assert "Exited too quickly" in v["load"].reason
    assert v["transform"].outcome == FAILED and "ConnectionRefusedError" in v["transform"].reason
    with pytest.raises(RestartFailed, match=r"load \(dead.*now FATAL\).*transform"):
        raise_on_failures(verdicts)
