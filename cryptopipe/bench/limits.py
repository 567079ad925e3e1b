"""Limit lines: what this machine does with the pipeline's own data when each hop runs alone, so
the end-to-end figure reads as a fraction of it. All three run in the same `cryptopipe bench`
invocation as the end-to-end steps, on the same stack:

- simulator alone: `python -m sim.bench` with the feed of a step (the simulator pinned to one
  core, clients draining the sockets on the other): the ticks/s it can push;
- Kafka alone: the ticks.v1 records a step's transformer wrote (captured from its topics),
  produced and consumed at once by two processes with the project's client factories
  (kafka_limit.py), for `seconds`;
- Postgres alone: the same records' rows written (a) by COPY straight into `ticks`, (b) by the
  loader's own write path (`decode_lines` + `TickWriter.write`: COPY into staging, plain INSERT
  into `ticks`, candles and latest prices folded per batch, the Kafka offsets in the same
  transaction), each with the `ticks` primary key and then without it: the measured cost of the
  key that guards against a duplicate tick.

Rows are written again and again with their event times moved on by an hour per pass (so the
primary key never refuses one) into the bench's own database.
"""
from __future__ import annotations

import io
import json
import pickle
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptopipe.bench.feed import FeedPlan
from cryptopipe.bench.ours import cpu_us_per_tick
from cryptopipe.bench.procs import InfraSampler, Proc, python

HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def simulator_alone(feed: FeedPlan, seconds: float, work: Path, log=print) -> dict:
    """`python -m sim.bench` at `feed` (both exchanges' ticker streams, as our extractors read them)."""
    argv = [python(), "-m", "sim.bench", "--scenario", "both", "--symbols", str(feed.symbols),
            "--rate", f"{feed.rate:.3f}", "--seconds", f"{seconds:g}", "--trade-streams", "0", "--truth-max", "0"]
    log(f"limits: simulator alone at {feed.ticks_per_s:,.0f} ticks/s expected ({feed.symbols} symbols)")
    p = Proc("sim-bench", argv, work / "sim-bench.log").start()
    p.popen.wait(seconds + 180)
    for line in reversed(p.log_tail(20_000).splitlines()):
        if line.startswith("BENCH "):
            out = json.loads(line[len("BENCH "):])
            out["expected_ticks_per_s"] = feed.ticks_per_s
            out["command"] = " ".join(argv[1:])
            return out
    return {"error": f"sim.bench printed no result (exit {p.popen.returncode}): {p.log_tail(1500)}"}


def kafka_alone(records: Path, seconds: float, settings, work: Path, log=print) -> dict:
    """Produce + consume of the captured ticks.v1 records, each side its own process."""
    from common.kafka import create_topics, delete_topics

    topic = f"bench_kafka_limit_{uuid.uuid4().hex[:8]}"
    create_topics({topic: settings.topic_partitions})
    log(f"limits: Kafka produce + consume of the captured ticks.v1 records for {seconds:g}s")
    infra = InfraSampler()
    base = [python(), "-m", "cryptopipe.bench.kafka_limit"]
    try:
        consumer = Proc("kafka-consume", [*base, "consume", "--topic", topic], work / "kafka-consume.log").start()
        time.sleep(2.0)     # assigned and fetching before the first record
        infra.mark_start()
        consumer.mark_start()
        producer = Proc("kafka-produce", [*base, "produce", "--topic", topic, "--records", str(records),
                                          "--seconds", f"{seconds:g}"], work / "kafka-produce.log").start()
        producer.mark_start()
        while producer.alive() or consumer.alive():
            for p in (producer, consumer):
                p.sample(time.monotonic())
            infra.sample()
            time.sleep(0.5)
        producer.mark_end()
        consumer.mark_end()
        infra.mark_end()
        results = {}
        for p in (producer, consumer):
            lines = [ln for ln in p.log_tail(5000).splitlines() if ln.startswith("{")]
            if p.popen.returncode != 0 or not lines:
                return {"error": f"{p.name} exited {p.popen.returncode}: {p.log_tail(1500)}"}
            results[p.name] = json.loads(lines[-1])
    finally:
        delete_topics([topic], wait_gone=15.0)
    prod, cons = results["kafka-produce"], results["kafka-consume"]
    span = (cons["last"] or prod["last"]) - prod["first"]
    ticks_per_s = cons["ticks"] / span if span > 0 else 0.0
    cpu = {"producer": producer.cpu_percent(), "consumer": consumer.cpu_percent(),
           **{r["process"]: r["cpu_percent"] for r in infra.rows() if r["process"] == "kafka"}}
    return {"ticks_per_s": ticks_per_s, "records_per_s": cons["records"] / span if span > 0 else 0.0,
            "mb_per_s": cons["bytes"] / span / 2**20 if span > 0 else 0.0, "seconds": span,
            "ticks": cons["ticks"], "records": cons["records"], "complete": cons["complete"] and
            cons["records"] == prod["records"], "ticks_per_record": cons["ticks"] / cons["records"]
            if cons["records"] else None,
            "cpu_percent": cpu, "cpu_us_per_tick": {k: cpu_us_per_tick(v, ticks_per_s) for k, v in cpu.items()},
            "producer": prod, "consumer": cons}


# --------------------------------------------------------------------------- Postgres

def _shift(line: str, hours: int) -> str:
    """A ticks.v1 line with its event time moved on by `hours` (a new row for the primary key)."""
    f = line.split("\t")
    f[2] = str(int(f[2]) + hours * HOUR_MS)
    return "\t".join(f)


def _ticks_row(line: str) -> str:
    """A ticks.v1 line as a COPY text row of `ticks` (PG_COLUMNS order)."""
    f = line.split("\t")
    event = (EPOCH + timedelta(milliseconds=int(f[2]))).isoformat()
    received = (EPOCH + timedelta(microseconds=int(f[15]) // 1000)).isoformat()
    return "\t".join((f[0], f[1], event, *f[3:15], received))


PG_COLUMNS = ("exchange, symbol, event_time, sequence, price, bid, bid_size, ask, ask_size, last_size, open_24h, "
              "high_24h, low_24h, volume_24h, quote_volume_24h, received_at")


def _batches(records: list, batch_ticks: int) -> list[list]:
    """The captured records grouped into loader-sized batches (about `batch_ticks` ticks each)."""
    out, cur, n = [], [], 0
    for rec in records:
        cur.append(rec)
        n += int(dict(rec[3]).get("count", b"0"))
        if n >= batch_ticks:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def _variant(name: str, dsn: str, batches: list[list], seconds: float, pk: bool, log) -> dict:
    """Write batches (pass after pass, each an hour later) for `seconds` of write time."""
    from common.codec.ticks import decode_lines, event_ms_of
    from common.db import connect
    from cryptopipe.bench.database import empty_pipeline_tables
    from streaming.loader import Batch, Offsets, TickWriter

    empty_pipeline_tables(dsn)
    writer = TickWriter(dsn=dsn)
    conn = connect(dsn)
    infra = InfraSampler()
    rows = 0
    write_s = client_cpu = 0.0
    offset = 0
    infra.mark_start()
    wall0 = time.monotonic()
    try:
        hours = 0
        while write_s < seconds:
            hours += 1
            for batch in batches:
                if write_s >= seconds:
                    break
                recs = [(_exchange_of(value), "\n".join(_shift(line, hours) for line in value.decode("ascii").split("\n"))
                         .encode("ascii"), headers) for _t, _p, value, headers in batch]
                if name == "copy":
                    lines = [line for _e, value, _h in recs for line in value.decode("ascii").split("\n")]
                    body = "".join(_ticks_row(line) + "\n" for line in lines)
                    writer.ensure_partitions({event_ms_of(line) // 86_400_000 for line in lines})
                    t0, c0 = time.monotonic(), time.thread_time()
                    with conn, conn.cursor() as cur:
                        cur.copy_expert(f"COPY ticks ({PG_COLUMNS}) FROM STDIN", io.StringIO(body))
                    n = len(lines)
                else:
                    # the records as the transformer wrote them: decoding is part of the loader's path
                    t0, c0 = time.monotonic(), time.thread_time()
                    decoded = [line for exchange, value, headers in recs
                               for line in decode_lines(value, headers, exchange)]
                    b = Batch(lines=decoded, days={event_ms_of(line) // 86_400_000 for line in decoded})
                    first = {("bench_limit", 0): offset}
                    offset += len(recs)
                    result = writer.write(b, Offsets("bench-limit", first, {("bench_limit", 0): offset}))
                    n = result.ticks_inserted
                write_s += time.monotonic() - t0
                client_cpu += time.thread_time() - c0
                rows += n
    finally:
        infra.mark_end()
        writer.close()
        conn.close()
    wall = time.monotonic() - wall0
    pg = next((r for r in infra.rows() if r["process"] == "postgres"), {})
    pg_cpu_s = (pg.get("cpu_percent") or 0.0) / 100.0 * wall
    rate = rows / write_s if write_s else 0.0
    log(f"limits: Postgres {name} {'with' if pk else 'without'} the primary key: {rate:,.0f} rows/s")
    return {"path": name, "primary_key": pk, "rows": rows, "write_seconds": write_s, "rows_per_s": rate,
            "client_cpu_us_per_row": 1e6 * client_cpu / rows if rows else None,
            "postgres_cpu_us_per_row": 1e6 * pg_cpu_s / rows if rows else None}


def _exchange_of(value: bytes) -> str:
    """The exchange of a ticks.v1 record (its first field; every line of a record has the same)."""
    return value[:value.index(b"\t")].decode("ascii")


def postgres_alone(records_path: Path, dsn: str, seconds: float, batch_ticks: int, log=print) -> dict:
    """COPY and the loader's write path, with and without the `ticks` primary key."""
    from common.db import connect

    with open(records_path, "rb") as f:
        records = pickle.load(f)
    batches = _batches(records, batch_ticks)
    log(f"limits: Postgres alone, {sum(len(b) for b in batches)} records in {len(batches)} batches of "
        f"~{batch_ticks:,} ticks, {seconds:g}s per variant")
    variants = [_variant("copy", dsn, batches, seconds, True, log),
                _variant("loader", dsn, batches, seconds, True, log)]
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE ticks")
            cur.execute("ALTER TABLE ticks DROP CONSTRAINT ticks_pkey")
        try:
            variants += [_variant("loader", dsn, batches, seconds, False, log),
                         _variant("copy", dsn, batches, seconds, False, log)]
        finally:
            with conn, conn.cursor() as cur:
                cur.execute("TRUNCATE ticks")
                cur.execute("ALTER TABLE ticks ADD PRIMARY KEY (exchange, symbol, event_time, sequence)")
    finally:
        conn.close()
    by = {(v["path"], v["primary_key"]): v for v in variants}
    with_pk, without = by[("loader", True)], by[("loader", False)]

    def us(v):
        return (v["client_cpu_us_per_row"] or 0) + (v["postgres_cpu_us_per_row"] or 0)

    return {"batch_ticks": batch_ticks, "variants": variants,
            "copy_rows_per_s": by[("copy", True)]["rows_per_s"],
            "loader_rows_per_s": with_pk["rows_per_s"],
            "primary_key_cost": {
                "loader_rows_per_s_with": with_pk["rows_per_s"], "loader_rows_per_s_without": without["rows_per_s"],
                "throughput_gain_without_pct": 100.0 * (without["rows_per_s"] / with_pk["rows_per_s"] - 1)
                if with_pk["rows_per_s"] else None,
                "cpu_us_per_row_with": us(with_pk), "cpu_us_per_row_without": us(without),
                "cpu_us_per_row_cost": us(with_pk) - us(without)}}
