"""What the stream supervisor decides, as pure functions of what it observed.

No Airflow, no sockets, no database here: the hooks observe (`hooks.supervisord`,
`hooks.pipeline_health`), `supervise()` decides and acts through the callables it is given, and
the operator records the outcome and fails the task when a restart did not bring a program back.

A program is
- dead: supervisord says FATAL, EXITED, BACKOFF or UNKNOWN (STOPPED only with
  `restart_stopped`: a stopped program is normally an operator's decision);
- stuck: RUNNING for longer than the start-up grace, and
  * an extractor: the newest stored tick of its exchange is older than `stale_tick_s` and its raw
    topic received nothing since the previous check (if it did, the hold-up is downstream);
  * a consumer (transform, load, archive): its group has lag and its committed offsets did not
    move since the previous check.
Dead and stuck programs are restarted; a restart that does not end in RUNNING is a failure.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable, Iterable, Mapping

from common.consumer_lag import DEFAULT_GROUPS, GroupLag  # noqa: F401 - GroupLag is part of this API
from common.supervisor_rpc import numbered_program

DEAD_STATES = frozenset({"FATAL", "EXITED", "BACKOFF", "UNKNOWN"})
TRANSIENT_STATES = frozenset({"STARTING", "STOPPING"})

# verdicts
HEALTHY, DEAD, STUCK, STOPPED, TRANSIENT = "healthy", "dead", "stuck", "stopped", "transient"
# outcomes of a restart
RECOVERED, FAILED = "recovered", "failed"


class RestartFailed(RuntimeError):
    """A restart did not bring one or more programs back to RUNNING."""


@dataclass(frozen=True)
class ProgramStatus:
    """One supervisord program as `getAllProcessInfo` reports it."""
    name: str
    group: str
    state: str                    # supervisord statename: RUNNING, FATAL, ...
    pid: int = 0
    uptime_s: float = 0.0         # seconds since start when RUNNING, else 0
    exitstatus: int = 0
    spawnerr: str = ""
    description: str = ""

    @property
    def fullname(self) -> str:
        """The name supervisord's start/stop calls take: `group:name`."""
        return f"{self.group}:{self.name}" if self.group and self.group != self.name else self.name

    @classmethod
    def from_rpc(cls, info: Mapping) -> "ProgramStatus":
        state = str(info.get("statename", "UNKNOWN"))
        uptime = 0.0
        if state == "RUNNING" and info.get("start"):
            uptime = max(0.0, float(info.get("now", 0)) - float(info["start"]))
        return cls(name=str(info["name"]), group=str(info.get("group") or info["name"]), state=state,
                   pid=int(info.get("pid") or 0), uptime_s=uptime, exitstatus=int(info.get("exitstatus") or 0),
                   spawnerr=str(info.get("spawnerr") or ""), description=str(info.get("description") or ""))


@dataclass(frozen=True)
class Watch:
    """How one program's progress is judged: by its exchange's ticks or by its group's offsets."""
    exchange: str | None = None           # extractors
    raw_topic: str | None = None          # extractors: the topic they produce to
    group: str | None = None              # consumers
    topics: tuple[str, ...] = ()          # consumers: the topics their group reads


@dataclass(frozen=True)
class Policy:
    watches: Mapping[str, Watch]
    stale_tick_s: float = 600.0
    stall_s: float = 600.0            # a consumer with lag whose offsets stood still this long is stuck
    startup_grace_s: float = 120.0
    restart_stopped: bool = False


@dataclass(frozen=True)
class Observation:
    """Everything one check saw."""
    at: datetime
    programs: tuple[ProgramStatus, ...]
    tick_age_s: Mapping[str, float | None]           # exchange -> seconds since newest stored tick
    topic_end: Mapping[str, int]                     # topic -> sum of end offsets
    lags: tuple[GroupLag, ...] = ()


@dataclass(frozen=True)
class Previous:
    """What the previous check recorded for one program (from `supervisor_checks`)."""
    at: datetime
    observed: Mapping


@dataclass
class Verdict:
    program: str
    state: str
    verdict: str
    reason: str
    observed: dict = field(default_factory=dict)
    action: str = "none"          # none | restart
    outcome: str | None = None    # recovered | failed (after a restart)
    state_after: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _group_lags(lags: Iterable[GroupLag], group: str, topics: Iterable[str]) -> dict[str, dict]:
    wanted = set(topics)
    return {gl.topic: {"committed": gl.committed, "end": gl.end, "lag": gl.lag}
            for gl in lags if gl.group == group and gl.topic in wanted}


def observed_for(program: str, obs: Observation, policy: Policy) -> dict:
    """The facts about `program` worth recording (and comparing with at the next check)."""
    watch = policy.watches.get(program)
    if watch is None:
        return {}
    if watch.exchange:
        return {"exchange": watch.exchange, "tick_age_s": obs.tick_age_s.get(watch.exchange),
                "raw_topic": watch.raw_topic, "raw_end": obs.topic_end.get(watch.raw_topic)}
    topics = _group_lags(obs.lags, watch.group, watch.topics)
    return {"group": watch.group, "topics": topics,
            "committed": sum(t["committed"] for t in topics.values()),
            "lag": sum(t["lag"] for t in topics.values())}


def _stuck_reason(program: ProgramStatus, watch: Watch, seen: dict, prev: Previous | None,
                  policy: Policy, at: datetime) -> str | None:
    if watch.exchange:
        age = seen.get("tick_age_s")
        if age is not None and age <= policy.stale_tick_s:
            return None
        raw_end, prev_end = seen.get("raw_end"), (prev.observed.get("raw_end") if prev else None)
        if raw_end is not None and prev_end is not None and raw_end > prev_end:
            return None               # still producing: whatever is stale is downstream of it
        what = "no tick stored yet" if age is None else f"newest {watch.exchange} tick is {age:.0f}s old"
        return f"{what} (limit {policy.stale_tick_s:.0f}s) and {watch.raw_topic} got nothing new"
    if not seen.get("topics") or seen.get("lag", 0) <= 0 or prev is None:
        return None
    prev_committed = prev.observed.get("committed")
    if prev_committed is None or seen["committed"] != prev_committed:
        return None
    # a few minutes without a commit is often a sink outage the daemon rides out itself (a
    # restart would not help); only a stall longer than `stall_s` calls for one
    since = prev.observed.get("stalled_since") or prev.at.isoformat()
    seen["stalled_since"] = since
    stalled = (at - datetime.fromisoformat(since)).total_seconds()
    if stalled < policy.stall_s:
        return None
    return (f"group {watch.group} has lag {seen['lag']} and its committed offsets have not moved for "
            f"{stalled:.0f}s (since {since}; limit {policy.stall_s:.0f}s)")


def watched_program(name: str, watches: Mapping[str, Watch]) -> str | None:
    """The watched program a supervisord process belongs to: itself, or `load` for `load_01`
    (a program run with numprocs>1, TRANSFORM/LOAD/ARCHIVE_WORKERS); None when not watched. Each
    process is judged on its own, by its program's group progress."""
    if name in watches:
        return name
    base = numbered_program(name)
    return base if base in watches else None


def assess(obs: Observation, policy: Policy, previous: Mapping[str, Previous] | None = None) -> list[Verdict]:
    """One verdict per watched program (the same supervisord also runs Postgres, Kafka, Airflow:
    those are not this supervisor's business); `action='restart'` for the dead and the stuck."""
    previous = previous or {}
    verdicts = []
    for prog in obs.programs:
        watched = watched_program(prog.name, policy.watches)
        if watched is None:
            continue
        seen = observed_for(watched, obs, policy)
        seen.update({"pid": prog.pid, "uptime_s": round(prog.uptime_s, 3)})
        if prog.state in DEAD_STATES or (prog.state == "STOPPED" and policy.restart_stopped):
            detail = f"; {prog.spawnerr}" if prog.spawnerr else ""
            v = Verdict(prog.name, prog.state, DEAD, f"supervisord reports {prog.state} "
                        f"(exit status {prog.exitstatus}){detail}", seen, action="restart")
        elif prog.state == "STOPPED":
            v = Verdict(prog.name, prog.state, STOPPED, "stopped on purpose; left alone", seen)
        elif prog.state in TRANSIENT_STATES:
            v = Verdict(prog.name, prog.state, TRANSIENT, f"{prog.state}; looked at again next check", seen)
        elif prog.uptime_s < policy.startup_grace_s:
            v = Verdict(prog.name, prog.state, HEALTHY,
                        f"running for {prog.uptime_s:.0f}s, within the start-up grace", seen)
        else:
            reason = _stuck_reason(prog, policy.watches[watched], seen, previous.get(prog.name), policy,
                                   obs.at)
            if reason:
                v = Verdict(prog.name, prog.state, STUCK, reason, seen, action="restart")
            else:
                v = Verdict(prog.name, prog.state, HEALTHY, "running and making progress", seen)
        verdicts.append(v)
    return verdicts


def supervise(obs: Observation, policy: Policy, previous: Mapping[str, Previous] | None,
              restart: Callable[[ProgramStatus], ProgramStatus]) -> list[Verdict]:
    """Assess, restart what needs it, and set each restart's outcome. Never raises for a failed
    restart (the caller records first); see `failures()` / `raise_on_failures()`."""
    by_name = {p.name: p for p in obs.programs}
    verdicts = assess(obs, policy, previous)
    for v in verdicts:
        if v.action != "restart":
            continue
        try:
            after = restart(by_name[v.program])
        except Exception as exc:  # a refused start is an outcome to record, not a crash
            v.outcome, v.state_after = FAILED, "UNKNOWN"
            v.reason += f"; restart raised {type(exc).__name__}: {exc}"
            continue
        v.state_after = after.state
        if after.state == "RUNNING":
            v.outcome = RECOVERED
        else:
            v.outcome = FAILED
            v.reason += f"; after restart supervisord reports {after.state}" + (
                f" ({after.spawnerr})" if after.spawnerr else "")
    return verdicts


def failures(verdicts: Iterable[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.outcome == FAILED]


def raise_on_failures(verdicts: Iterable[Verdict]) -> None:
    failed = failures(verdicts)
    if failed:
        raise RestartFailed("restart did not bring back: " + "; ".join(
            f"{v.program} ({v.verdict}: {v.reason}; now {v.state_after})" for v in failed))


# DEFAULT_GROUPS (common.consumer_lag): the streaming daemons' consumer groups, overridable per
# run (the supervisor DAG's Params) so that renaming a group in streaming/ is a configuration change.


def default_watches(groups: Mapping[str, str] | None = None) -> dict[str, Watch]:
    """The DESIGN.md programs and how each one's progress is measured."""
    from common.topics import EXCHANGES, PIPELINE_EVENTS, RAW_TOPICS, TRANSFORMED_TOPICS, raw_topic

    g = {**DEFAULT_GROUPS, **(groups or {})}
    watches = {f"extract-{ex}": Watch(exchange=ex, raw_topic=raw_topic(ex)) for ex in EXCHANGES}
    watches["transform"] = Watch(group=g["transform"], topics=RAW_TOPICS)
    watches["load"] = Watch(group=g["load"], topics=TRANSFORMED_TOPICS + (PIPELINE_EVENTS,))
    watches["archive"] = Watch(group=g["archive"], topics=RAW_TOPICS)
    return watches
