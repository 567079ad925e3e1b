"""The benchmark's output: rich tables (stdout) and the JSON document (--json PATH)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _f(value, fmt: str = "{:,.0f}", none: str = "–") -> str:
    if value is None:
        return none
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def cpu_us_per_tick(cpu_percent, ticks_per_s) -> float | None:
    """CPU microseconds a process spent per tick stored (the figure that bounds a 2-core machine)."""
    if cpu_percent is None or not ticks_per_s:
        return None
    return cpu_percent / 100.0 * 1e6 / ticks_per_s


def headline_rows(result: dict) -> list[tuple[str, str]]:
    lat = result.get("latency") or {}
    lag = result.get("lag") or {}
    rows = [
        ("offered ticks/s (received by the feed handlers)", _f(result.get("offered_ticks_per_s"))),
        ("sustained ticks/s into Postgres", _f(result.get("sustained_ticks_per_s"))),
        ("rows received in the window, in Postgres", _f(result.get("rows_in_window_postgres"))),
        ("receipt -> commit p50 / p95 / p99 ms",
         " / ".join(_f(lat.get(k), "{:,.0f}") for k in ("p50_ms", "p95_ms", "p99_ms"))),
        ("  (transaction start, lower bound) p50 / p95 / p99 ms",
         " / ".join(_f(lat.get(k), "{:,.0f}") for k in ("txn_start_p50_ms", "txn_start_p95_ms", "txn_start_p99_ms"))),
        ("  commit clock resolution ms", _f(lat.get("clock_resolution_ms"), "{:.1f}")),
    ]
    for name, values in lag.items():
        rows.append((f"lag {name}: max / last / slope per s",
                     f"{_f(values.get('max'))} / {_f(values.get('last'))} / {_f(values.get('slope_per_s'), '{:+,.1f}')}"))
    if "lag_bounded" in result:
        rows.append(("lag bounded", "yes" if result["lag_bounded"] else "NO"))
    if "archived_records_per_s" in result:
        rows.append(("archive rate, raw frames/s to S3", _f(result["archived_records_per_s"], "{:,.1f}")))
    if "kafka_records_per_s" in result:
        rows.append(("Kafka records/s (its topic)", _f(result["kafka_records_per_s"], "{:,.0f}")))
        rows.append(("sustained by both sinks (min of Postgres, Kafka) /s",
                     _f(result.get("sustained_both_sinks_ticks_per_s"))))
    if result.get("dlq_records"):
        rows.append(("dead-lettered records", _f(result["dlq_records"])))
    return rows


def render(doc: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]cryptopipe bench[/bold]  {doc['date']}")
    console.print(f"command: [cyan]{doc['command']}[/cyan]")
    env = doc.get("environment") or {}
    after = (doc.get("environment_after") or {}).get("loadavg_1_5_15")
    console.print(f"machine: {env.get('cpus')} cores, {env.get('memory_gb')} GB, Python {env.get('python')}, "
                  f"load average before {env.get('loadavg_1_5_15')} after {after}")
    runs = [r for r in (doc.get("ours"), doc.get("peer")) if r]
    table = Table(title="end to end: simulator -> Kafka -> Postgres (same machine, same feed)")
    table.add_column("figure")
    for r in runs:
        table.add_column(r.get("system", "?"), justify="right")
    labels = [label for label, _ in headline_rows(runs[0])] if runs else []
    per_run = [dict(headline_rows(r)) for r in runs]
    for r in per_run[1:]:
        labels += [label for label in r if label not in labels]
    for label in labels:
        table.add_row(label, *[r.get(label, "–") for r in per_run])
    console.print(table)
    if doc.get("ratio") is not None:
        console.print(f"[bold]ratio[/bold] cryptopipe / {doc['peer']['system']} sustained ticks/s: "
                      f"[bold]{doc['ratio']:.2f}x[/bold]")
    if doc.get("peer_error"):
        console.print(f"[red]peer not run:[/red] {doc['peer_error']}")
    for r in runs:
        procs = Table(title=f"{r.get('system')}: CPU (% of one core) and RSS per process over the window")
        for col in ("process", "CPU %", "CPU µs per stored tick", "peak RSS MB", "RSS first/last 10% MB"):
            procs.add_column(col, justify="right" if col != "process" else "left")
        rate = r.get("sustained_ticks_per_s") or 0.0
        total_us = 0.0
        for p in r.get("processes", []):
            us = cpu_us_per_tick(p.get("cpu_percent"), rate)
            total_us += us or 0.0
            name = p["process"] + (f" (restarted {len(p['restarts'])}x)" if p.get("restarts") else "")
            procs.add_row(name, _f(p.get("cpu_percent"), "{:.0f}"), _f(us, "{:.0f}"),
                          _f(p.get("peak_rss_mb"), "{:.0f}"),
                          f"{_f(p.get('rss_first_mb'), '{:.0f}')} / {_f(p.get('rss_last_mb'), '{:.0f}')}")
        procs.add_row("all of the above", "", _f(total_us or None, "{:.0f}"), "", "")
        console.print(procs)
        for name, rows in (r.get("profiles") or {}).items():
            if not rows:
                continue
            pt = Table(title=f"profile: {name} (self time, top {len(rows)})")
            for col in ("function", "calls", "self s", "self %", "cumulative s"):
                pt.add_column(col, justify="left" if col == "function" else "right")
            for row in rows:
                pt.add_row(row["function"], _f(row["calls"]), _f(row["self_s"], "{:.2f}"),
                           _f(row["self_pct"], "{:.1f}"), _f(row["cumulative_s"], "{:.2f}"))
            console.print(pt)


def write_json(doc: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
