"""What one `cryptopipe bench` invocation runs, in order, and the headline it makes of the results:

    --rate max: ours with the shipped defaults (search) -> ours tuned (search, from the defaults'
                maximum) -> one step past capacity -> the peer (search) -> limit lines ->
                a profiled step at half the maximum (with --profile)
    --rate R:   ours at R (profiled with --profile) -> ours tuned at R -> the peer at R -> limits
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptopipe.bench.ours import RunConfig, Tuning, run_ours
from cryptopipe.bench.ramp import search_max, summary

@dataclass
class Plan:
    rate: float | None                 # None: search for the maximum
    ramp: list[float] | None = None
    ramp_start: float = 5000.0
    tuned: Tuning | None = None
    past_capacity: bool = True
    past_capacity_factor: float = 2.0
    peer: bool = False
    peer_only: bool = False
    limits: bool = False
    limit_seconds: float = 10.0
    limit_batch_ticks: int = 10_000
    profile_dir: Path | None = None
    max_steps: int = 12


def _fixed(result: dict) -> dict:
    return {"mode": "fixed", "max": result if result.get("kept_up") else None,
            "first_failed": None if result.get("kept_up") else result, "steps": [summary(result)], "result": result}


def run_plan(plan: Plan, base: RunConfig, settings, log) -> dict:
    doc: dict = {"ours": {}, "peer": None, "limits": None}
    label = base.tuning.describe()

    def ours(rate: float, **changes) -> dict:
        return run_ours(base.at(rate, **changes), settings, log=log)

    def search(step, start: float) -> dict:
        return search_max(step, start, log, steps=plan.ramp if start == plan.ramp_start else None,
                          max_steps=plan.max_steps)

    best = None
    if not plan.peer_only:
        if plan.rate is None:
            doc["ours"]["defaults"] = search(lambda r: ours(r, label=label), plan.ramp_start)
        else:
            doc["ours"]["defaults"] = _fixed(ours(plan.rate, label=label, profile_dir=plan.profile_dir))
        best = doc["ours"]["defaults"]["max"]
        if plan.tuned is not None:
            tuned_label = "tuned: " + plan.tuned.describe()
            if plan.rate is None:
                start = best["target_ticks_per_s"] if best else plan.ramp_start
                doc["ours"]["tuned"] = search_max(lambda r: ours(r, label=tuned_label, tuning=plan.tuned,
                                                                 capture=None), start, log,
                                                    max_steps=plan.max_steps)
            else:
                doc["ours"]["tuned"] = _fixed(ours(plan.rate, label=tuned_label, tuning=plan.tuned, capture=None))
        if plan.rate is None and plan.past_capacity and best:
            rate = plan.past_capacity_factor * best["target_ticks_per_s"]
            doc["ours"]["past_capacity"] = ours(rate, label="past capacity", capture=None, drain=False)
    if plan.peer:
        from cryptopipe.bench.peer import PeerUnavailable, run_cryptofeed

        def peer(rate: float) -> dict:
            return run_cryptofeed(base.at(rate, label="cryptofeed"), settings, log=log)

        try:
            doc["peer"] = search(peer, plan.ramp_start) if plan.rate is None else _fixed(peer(plan.rate))
        except PeerUnavailable as exc:
            doc["peer"] = {"error": str(exc)}
    if plan.limits:
        doc["limits"] = _limits(plan, base, settings, best, log)
    if plan.rate is None and plan.profile_dir is not None and best:
        # cProfile about doubles the daemons' cost: at half the maximum the profiled pipeline keeps up
        doc["ours"]["profiled"] = ours(best["target_ticks_per_s"] / 2, label="profiled", profile_dir=plan.profile_dir,
                                       capture=None)
    doc["headline"] = headline(doc)
    return doc


def _limits(plan: Plan, base: RunConfig, settings, best: dict | None, log) -> dict:
    from cryptopipe.bench.feed import plan as feed_plan
    from cryptopipe.bench.limits import kafka_alone, postgres_alone, simulator_alone

    out: dict = {}
    target = best["target_ticks_per_s"] if best else (plan.rate or plan.ramp_start)
    # the simulator at twice the rate: can it feed more than the pipeline took?
    feed = feed_plan(plan.past_capacity_factor * target, base.symbols, base.seed, base.exchanges)
    out["simulator"] = simulator_alone(feed, plan.limit_seconds, base.work_dir, log)
    captured = base.capture
    if captured is None or not captured.exists():
        out["error"] = "no step kept up, so no ticks.v1 records were captured: no Kafka or Postgres line"
        return out
    out["records_from_step_at_ticks_per_s"] = target
    out["kafka"] = kafka_alone(captured, plan.limit_seconds, settings, base.work_dir, log)
    out["postgres"] = postgres_alone(captured, base.dsn, plan.limit_seconds, plan.limit_batch_ticks, log)
    return out


def headline(doc: dict) -> dict:
    """The figures the write-up quotes, each from the step it comes from."""
    def step_figures(step: dict | None) -> dict | None:
        if not step:
            return None
        lat = step.get("latency") or {}
        return {"stored_ticks_per_s": step.get("stored_ticks_per_s"), "target_ticks_per_s": step.get("target_ticks_per_s"),
                "sustained": step.get("sustained"), "verdict": step.get("verdict"),
                "window_s": (step.get("window") or {}).get("seconds"),
                "p50_ms": lat.get("p50_ms"), "p95_ms": lat.get("p95_ms"), "p99_ms": lat.get("p99_ms"),
                "cpu_us_per_stored_tick": step.get("cpu_us_per_stored_tick"),
                "settings": (step.get("settings") or {}).get("tuning")}

    ours = doc.get("ours") or {}
    out: dict = {}
    for key in ("defaults", "tuned"):
        block = ours.get(key)
        if block:
            out[key] = step_figures(block.get("max"))
    peer = doc.get("peer")
    if isinstance(peer, dict) and peer.get("mode"):
        out["peer"] = step_figures(peer.get("max"))
    d, p = out.get("defaults"), out.get("peer")
    searched = (ours.get("defaults") or {}).get("mode") == "max" and isinstance(peer, dict) and peer.get("mode") == "max"
    # a ratio of maxima: at one fixed rate the two are offered different ticks (peer.py)
    if searched and d and p and p.get("stored_ticks_per_s"):
        out["ratio_vs_peer"] = d["stored_ticks_per_s"] / p["stored_ticks_per_s"]
    past = ours.get("past_capacity")
    if past:
        out["past_capacity"] = {
            "target_ticks_per_s": past.get("target_ticks_per_s"), "stored_ticks_per_s": past.get("stored_ticks_per_s"),
            "verdict": past.get("verdict"),
            "lag_growth_s_per_s": {k: v.get("growth_s_per_s") for k, v in (past.get("lag") or {}).items()},
            "rss": {p["process"]: {"peak_mb": p.get("peak_rss_mb"), "first_mb": p.get("rss_first_mb"),
                                   "last_mb": p.get("rss_last_mb"), "slope_mb_per_min": p.get("rss_slope_mb_per_min"),
                                   "slope_last_half_mb_per_min": p.get("rss_slope_last_half_mb_per_min")}
                    for p in past.get("processes", []) if p.get("role") != "shared"}}
    limits = doc.get("limits") or {}
    lines = {}
    if (limits.get("simulator") or {}).get("sim_ticks_out_per_s"):
        lines["simulator_ticks_per_s"] = limits["simulator"]["sim_ticks_out_per_s"]
    if (limits.get("kafka") or {}).get("ticks_per_s"):
        lines["kafka_ticks_per_s"] = limits["kafka"]["ticks_per_s"]
    if limits.get("postgres"):
        lines["postgres_copy_rows_per_s"] = limits["postgres"]["copy_rows_per_s"]
        lines["postgres_loader_rows_per_s"] = limits["postgres"]["loader_rows_per_s"]
        out["primary_key_cost"] = limits["postgres"]["primary_key_cost"]
    if lines:
        out["limits"] = lines
        if d and d.get("stored_ticks_per_s"):
            out["fraction_of_limit"] = {k: d["stored_ticks_per_s"] / v for k, v in lines.items() if v}
    return out
