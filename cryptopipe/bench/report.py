"""The benchmark's output: rich tables (stdout) and the JSON document (--json PATH)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cryptopipe.bench.measure import GROWTH_BOUND_S_PER_S, MIN_SUSTAINED_WINDOW_S


def _f(value, fmt: str = "{:,.0f}", none: str = "–") -> str:
    if value is None:
        return none
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def step_rows(result: dict) -> list[tuple[str, str]]:
    """The figures of one step, as (label, text) rows."""
    lat = result.get("latency") or {}
    rows = [
        ("settings", (result.get("settings") or {}).get("tuning") or result.get("label") or "–"),
        ("feed: target ticks/s (symbols, sim trades/s)",
         f"{_f(result.get('target_ticks_per_s'))} ({_f((result.get('feed') or {}).get('symbols'))}, "
         f"{_f((result.get('feed') or {}).get('sim_trades_per_s'))})"),
        ("offered ticks/s (received by the feed handlers)", _f(result.get("offered_ticks_per_s"))),
        ("stored ticks/s into Postgres", _f(result.get("stored_ticks_per_s"))),
        ("verdict", result.get("verdict") or "–"),
        ("window s", _f((result.get("window") or {}).get("seconds"), "{:.0f}")),
        ("receipt -> commit p50 / p95 / p99 ms",
         " / ".join(_f(lat.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")) if lat else "not measured (not kept up)"),
    ]
    for name, v in (result.get("lag") or {}).items():
        rows.append((f"lag {name}: growth s/s (bound {v.get('bound_s_per_s', GROWTH_BOUND_S_PER_S):g}), max, inflow/s",
                     f"{_f(v.get('growth_s_per_s'), '{:+.4f}')}{' GROWS' if v.get('grows') else ''}, "
                     f"{_f(v.get('max'))}, {_f(v.get('inflow_records_per_s'), '{:,.1f}')}"))
    if "archived_records_per_s" in result:
        rows.append(("archive: raw records/s to S3", _f(result["archived_records_per_s"], "{:,.1f}")))
    if "kafka_records_per_s" in result:
        rows.append(("its Kafka sink, records/s", _f(result["kafka_records_per_s"])))
    cpu = result.get("cpu_us_per_stored_tick") or {}
    rows.append(("CPU µs per stored tick: pipeline / simulator / shared / all",
                 " / ".join(_f(cpu.get(k)) for k in ("pipeline", "simulator", "shared", "all"))))
    if result.get("dlq_records"):
        rows.append(("dead-lettered records", _f(result["dlq_records"])))
    return rows


def _steps_table(title: str, block: dict) -> Table:
    t = Table(title=title)
    for col in ("target", "offered", "stored", "p99 ms", "worst lag growth s/s", "verdict"):
        t.add_column(col, justify="left" if col == "verdict" else "right")
    for s in block.get("steps", []):
        t.add_row(_f(s["target_ticks_per_s"]), _f(s["offered_ticks_per_s"]), _f(s["stored_ticks_per_s"]),
                  _f(s.get("p99_ms")), f"{_f(s.get('worst_lag_growth_s_per_s'), '{:+.4f}')} ({s.get('worst_lag') or '–'})",
                  s.get("verdict") or "–")
    return t


def _processes_table(title: str, result: dict) -> Table:
    t = Table(title=title)
    for col in ("process", "CPU %", "CPU µs per stored tick", "peak RSS MB", "RSS first/last 10% MB",
                "RSS slope MB/min: window / 2nd half"):
        t.add_column(col, justify="left" if col == "process" else "right")
    for p in result.get("processes", []):
        name = p["process"] + (" (shared)" if p.get("role") == "shared" else "") + \
            (f" (restarted {len(p['restarts'])}x)" if p.get("restarts") else "")
        t.add_row(name, _f(p.get("cpu_percent")), _f(p.get("cpu_us_per_stored_tick")), _f(p.get("peak_rss_mb")),
                  f"{_f(p.get('rss_first_mb'))} / {_f(p.get('rss_last_mb'))}",
                  f"{_f(p.get('rss_slope_mb_per_min'), '{:+.1f}')} / "
                  f"{_f(p.get('rss_slope_last_half_mb_per_min'), '{:+.1f}')}")
    return t


def render(doc: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]cryptopipe bench[/bold]  {doc['date']}")
    console.print(f"command: [cyan]{doc['command']}[/cyan]")
    env = doc.get("environment") or {}
    after = (doc.get("environment_after") or {}).get("loadavg_1_5_15")
    console.print(f"machine: {env.get('cpus')} cores, {env.get('memory_gb')} GB, Python {env.get('python')}, "
                  f"load average before {env.get('loadavg_1_5_15')} after {after}")
    console.print(f"sustained = lag of every consumer group (transform, load, archive) grows by at most "
                  f"{GROWTH_BOUND_S_PER_S:g} s of its feed per second (least-squares trend over a window of at "
                  f"least {MIN_SUSTAINED_WINDOW_S:.0f} s), the feed delivered, no daemon exited", style="dim")
    ours = doc.get("ours") or {}
    peer = doc.get("peer") if isinstance(doc.get("peer"), dict) and doc["peer"].get("mode") else None
    columns = [(f"cryptopipe, {key}", ours[key]["max"] or ours[key].get("result") or ours[key].get("first_failed"))
               for key in ("defaults", "tuned") if ours.get(key)]
    if peer:
        r = peer["max"] or peer.get("result") or peer.get("first_failed")
        columns.append(((r or {}).get("system", "peer"), r))
    columns = [(name, r) for name, r in columns if r]
    if columns:
        per = [dict(step_rows(r)) for _, r in columns]
        labels = []
        for rows in per:
            labels += [label for label in rows if label not in labels]
        t = Table(title="maximum sustained (or the fixed-rate step), simulator -> Kafka -> Postgres")
        t.add_column("figure")
        for name, _ in columns:
            t.add_column(name, justify="right")
        for label in labels:
            t.add_row(label, *[rows.get(label, "–") for rows in per])
        console.print(t)
    head = doc.get("headline") or {}
    if head.get("ratio_vs_peer") is not None:
        console.print(f"[bold]ratio[/bold] cryptopipe (shipped defaults) / cryptofeed, stored ticks/s at each one's "
                      f"maximum: [bold]{head['ratio_vs_peer']:.2f}x[/bold]")
    if isinstance(doc.get("peer"), dict) and doc["peer"].get("error"):
        console.print(f"[red]peer not run:[/red] {doc['peer']['error']}")
    for key, block in list(ours.items()) + ([("cryptofeed", peer)] if peer else []):
        if isinstance(block, dict) and block.get("mode") == "max":
            console.print(_steps_table(f"steps: {key}", block))
    for name, r in columns:
        console.print(_processes_table(f"{name}: CPU and RSS per process over the window", r))
    past = ours.get("past_capacity")
    if past:
        console.print(f"past capacity: target {_f(past.get('target_ticks_per_s'))} ticks/s, stored "
                      f"{_f(past.get('stored_ticks_per_s'))}/s: {past.get('verdict')}")
        console.print(_processes_table("past capacity: RSS while lag grows (memory must not)", past))
    limits = doc.get("limits")
    if limits:
        _render_limits(limits, head, console)
    for name, r in [*columns, ("profiled", ours.get("profiled"))]:
        for proc, prof in ((r or {}).get("profiles") or {}).items():
            if not prof or not prof.get("top"):
                continue
            pt = Table(title=f"profile ({name}): {proc}, busy {prof['busy_s']:.1f} s (waits left out: "
                             f"{prof['waiting_s']:.1f} s), top {len(prof['top'])} by self time")
            for col in ("function", "calls", "self s", "% of busy", "cumulative s"):
                pt.add_column(col, justify="left" if col == "function" else "right")
            for row in prof["top"]:
                pt.add_row(row["function"], _f(row["calls"]), _f(row["self_s"], "{:.2f}"),
                           _f(row["self_pct_of_busy"], "{:.1f}"), _f(row["cumulative_s"], "{:.2f}"))
            console.print(pt)


def _render_limits(limits: dict, head: dict, console: Console) -> None:
    t = Table(title="limit lines: each hop alone on this machine, same run, same data")
    for col in ("line", "ticks/s", "CPU µs per tick", "detail"):
        t.add_column(col, justify="left" if col in ("line", "detail") else "right")
    sim = limits.get("simulator") or {}
    if sim.get("error"):
        t.add_row("simulator alone", "–", "–", sim["error"][:200])
    elif sim:
        per_tick = 1e6 / sim["sim_ticks_per_cpu_second"] if sim.get("sim_ticks_per_cpu_second") else None
        t.add_row("simulator alone (one core)", _f(sim.get("sim_ticks_out_per_s")), _f(per_tick),
                  f"asked {_f(sim.get('expected_ticks_per_s'))}, {_f(sim.get('sim_cpu_cores'), '{:.2f}')} cores, "
                  f"{_f(sim.get('sim_overload_skips'))} overload skips")
    k = limits.get("kafka") or {}
    if k.get("error"):
        t.add_row("Kafka produce + consume", "–", "–", k["error"][:200])
    elif k:
        us = k.get("cpu_us_per_tick") or {}
        t.add_row("Kafka produce + consume (ticks.v1)", _f(k.get("ticks_per_s")), _f(sum(v or 0 for v in us.values())),
                  f"{_f(k.get('records_per_s'))} records/s, {_f(k.get('mb_per_s'), '{:.1f}')} MB/s; µs/tick "
                  + ", ".join(f"{n} {_f(v)}" for n, v in us.items()))
    pg = limits.get("postgres") or {}
    for v in pg.get("variants", []):
        us = (v.get("client_cpu_us_per_row") or 0) + (v.get("postgres_cpu_us_per_row") or 0)
        t.add_row(f"Postgres {v['path']} {'with' if v['primary_key'] else 'without'} primary key", _f(v["rows_per_s"]),
                  _f(us), f"client {_f(v.get('client_cpu_us_per_row'))} + Postgres "
                  f"{_f(v.get('postgres_cpu_us_per_row'))} µs/row, batches of {_f(pg.get('batch_ticks'))}")
    if limits.get("error"):
        t.add_row("Kafka, Postgres", "–", "–", limits["error"])
    console.print(t)
    pk = head.get("primary_key_cost")
    if pk:
        console.print(f"primary key of ticks: the loader's write path does {_f(pk['loader_rows_per_s_with'])} rows/s "
                      f"with it, {_f(pk['loader_rows_per_s_without'])} without "
                      f"({_f(pk['throughput_gain_without_pct'], '{:+.1f}')} %); CPU "
                      f"{_f(pk['cpu_us_per_row_with'], '{:.1f}')} vs {_f(pk['cpu_us_per_row_without'], '{:.1f}')} µs/row")
    frac = head.get("fraction_of_limit")
    if frac:
        console.print("end to end (shipped defaults) as a fraction of each limit line: "
                      + ", ".join(f"{k} {v:.1%}" for k, v in frac.items()))


def write_json(doc: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
