"""The search for the maximum sustained rate: step the offered tick rate up by `factor` until a
step does not keep up (lag grew on some topic, the feed fell short, or a daemon exited), then
bisect between the last step that kept up and the first that did not. Every step is a fresh run
(new simulator, daemons, topics, emptied tables) with the same window, so no step inherits
another's backlog."""
from __future__ import annotations

from collections.abc import Callable

FACTOR = 1.5
BISECTIONS = 2
FLOOR = 250.0          # ticks/s: below this there is nothing left to measure
MAX_STEPS = 12


def summary(result: dict) -> dict:
    lat = result.get("latency") or {}
    lag = result.get("lag") or {}
    worst = max(lag.items(), key=lambda kv: kv[1].get("growth_s_per_s") or 0.0, default=(None, {}))
    return {"target_ticks_per_s": result.get("target_ticks_per_s"),
            "offered_ticks_per_s": result.get("offered_ticks_per_s"),
            "stored_ticks_per_s": result.get("stored_ticks_per_s"),
            "kept_up": result.get("kept_up"), "sustained": result.get("sustained"), "verdict": result.get("verdict"),
            "p99_ms": lat.get("p99_ms"), "worst_lag": worst[0], "worst_lag_growth_s_per_s": worst[1].get("growth_s_per_s"),
            "run_id": result.get("run_id")}


def search_max(run_step: Callable[[float], dict], start: float, log, steps: list[float] | None = None,
               factor: float = FACTOR, bisections: int = BISECTIONS, max_steps: int = MAX_STEPS) -> dict:
    """{"max": the highest step that kept up (or None), "first_failed": the lowest that did not
    (or None), "steps": a summary of every step in the order run}."""
    runs: list[dict] = []
    best: dict | None = None
    fail: dict | None = None

    def run(rate: float) -> dict:
        r = run_step(rate)
        runs.append(summary(r))
        log(f"step {len(runs)}: target {rate:,.0f} ticks/s, offered {r.get('offered_ticks_per_s') or 0:,.0f}, "
            f"stored {r.get('stored_ticks_per_s') or 0:,.0f}: {r.get('verdict')}")
        return r

    def better_fail(r: dict) -> dict:
        return r if fail is None or r["target_ticks_per_s"] < fail["target_ticks_per_s"] else fail

    if steps:
        for rate in steps[:max_steps]:
            r = run(rate)
            if not r["kept_up"]:
                fail = r
                break
            best = r
    else:
        rate = start
        while len(runs) < max_steps:
            r = run(rate)
            if not r["kept_up"]:
                fail = r
                break
            best = r
            rate *= factor
        rate = start
        while best is None and rate / 2 >= FLOOR and len(runs) < max_steps:
            rate /= 2
            r = run(rate)
            if r["kept_up"]:
                best = r
            else:
                fail = better_fail(r)
    for _ in range(bisections):
        if best is None or fail is None or len(runs) >= max_steps:
            break
        lo, hi = best["target_ticks_per_s"], fail["target_ticks_per_s"]
        if hi - lo < 0.05 * lo:
            break
        r = run((lo + hi) / 2)
        if r["kept_up"]:
            best = r
        else:
            fail = r
    return {"mode": "max", "max": best, "first_failed": fail, "steps": runs}
